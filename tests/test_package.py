"""The kit as a user installs it: a wheel built from the checkout, installed into a fresh folder
and run from outside the checkout, carries the recipes and the one entry point, `python -m kit`
(and the `kit` console script). The recipes' end-to-end runs in test_recipes.py go through this
installed copy too."""

from __future__ import annotations

import subprocess
import sys
import zipfile

RECIPES = ("chat", "classification", "code", "fim")


def test_wheel_carries_the_kit_the_recipes_and_their_data(installed_kit):
    names = set(zipfile.ZipFile(installed_kit.wheel).namelist())
    for recipe in RECIPES:
        assert f"kit/recipes/{recipe}.py" in names
    assert {"kit/recipes/__init__.py", "kit/__main__.py", "kit/cli.py", "kit/sandbox_jail.py",
            "kit/builtin/persona_train.jsonl", "kit/builtin/tickets_test.jsonl"} <= names
    assert not any(n.startswith(("recipes/", "code.py", "chat.py", "tests/")) for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "kit = kit.cli:main" in zipfile.ZipFile(installed_kit.wheel).read(entry_points).decode()


def test_installed_copy_is_the_one_imported(installed_kit, tmp_path):
    code = ("import code, importlib.util, kit; print(kit.__file__); "
            "print(importlib.util.find_spec('kit.recipes.code').origin); print(code.__file__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env=installed_kit.env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    kit_file, recipe_file, stdlib_code = proc.stdout.split()
    assert kit_file == str(installed_kit.site / "kit" / "__init__.py")
    assert recipe_file == str(installed_kit.site / "kit" / "recipes" / "code.py")
    assert not stdlib_code.startswith(str(installed_kit.site))  # `import code` is still the stdlib's


def test_python_m_kit_lists_the_recipes(installed_kit, tmp_path):
    proc = installed_kit.kit(cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    listed = [line.split()[0] for line in proc.stdout.split("recipes:")[1].splitlines()
              if line.startswith("  ")]
    assert listed == list(RECIPES)
    bad = installed_kit.kit("nope", cwd=tmp_path, timeout=120)
    assert bad.returncode == 2 and "error: no recipe 'nope'; have: chat, classification, code" in bad.stderr
    script = installed_kit.site / "bin" / "kit"  # the console script pip wrote
    assert script.is_file()
    proc = subprocess.run([str(script)], capture_output=True, text=True, cwd=tmp_path,
                          env=installed_kit.env(), timeout=120)
    assert proc.returncode == 0 and proc.stdout.split("recipes:")[1].split()[:1] == ["chat"], proc.stderr


def test_python_m_kit_recipe_help(installed_kit, tmp_path):
    """`python -m kit RECIPE --help` for each recipe (all at once: each loads the stack)."""
    procs = {r: subprocess.Popen([sys.executable, "-m", "kit", r, "--help"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=installed_kit.env())
             for r in RECIPES}
    for recipe, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        title = {"chat": "ChatConfig", "classification": "ClassificationConfig", "code": "CodeConfig",
                 "fim": "FimConfig"}[recipe]
        assert f"{title}: key=value overrides" in out and "max_steps" in out and "lora.r" in out
