"""The kit as a user installs it: a wheel built from the checkout, installed into a fresh folder
and run from outside the checkout, carries the recipes and the one entry point, `python -m kit`
(and the `kit` console script). The recipes' end-to-end runs in test_recipes.py go through this
installed copy too."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from conftest import ROOT, packaged_copy

RECIPES = ("chat", "classification", "code", "dpo", "fim", "grpo")
VERSION = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M)[1]


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
    recipes, commands = proc.stdout.split("recipes:")[1].split("commands:")
    listed = [line.split()[0] for line in recipes.splitlines() if line.startswith("  ")]
    assert listed == list(RECIPES)
    assert [line.split()[0] for line in commands.splitlines() if line.startswith("  ")] == ["serve"]
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
                 "dpo": "DpoConfig", "fim": "FimConfig", "grpo": "GrpoRecipeConfig"}[recipe]
        assert f"{title}: key=value overrides" in out and "max_steps" in out and "lora.r" in out


# ---------------------------------------------------------------- ready to publish


def test_sdist_and_wheel_build_and_pass_twine_check(tmp_path):
    """What the release workflow runs: `python -m build` (the sdist, then the wheel built from
    the sdist, so a file the sdist forgets breaks the wheel) and `twine check --strict`."""
    import email

    src = packaged_copy(tmp_path / "src")
    dist = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    version = VERSION
    sdist = dist / f"unsloth_recipe_kit-{version}.tar.gz"
    wheel = dist / f"unsloth_recipe_kit-{version}-py3-none-any.whl"
    assert set(dist.iterdir()) == {sdist, wheel}
    proc = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 0 and proc.stdout.count("PASSED") == 2, proc.stdout + proc.stderr

    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"LICENSE", "README.md", "pyproject.toml", "recipes/chat.py",
            "kit/builtin/tickets_test.jsonl"} <= names
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        meta = email.message_from_bytes(whl.read(f"unsloth_recipe_kit-{version}.dist-info/METADATA"))
    assert {f"kit/recipes/{r}.py" for r in RECIPES} <= names
    assert f"unsloth_recipe_kit-{version}.dist-info/licenses/LICENSE" in names
    assert meta["License-Expression"] == "Apache-2.0" and meta["Version"] == version
    assert meta["Description-Content-Type"] == "text/markdown"
    assert "Programming Language :: Python :: 3" in meta.get_all("Classifier")
    assert meta.get_payload().startswith("# unsloth-recipe-kit")  # the README is the PyPI page


def test_release_check_gates_the_tag_and_the_repository(tmp_path):
    """The release workflow's first step: a tag that is not `v<version>`, or a pyproject.toml
    without its repository URL, stops the release with one line each."""
    version = VERSION
    workflow = (ROOT / ".github" / "workflows" / "release.yml").read_text()
    assert 'python scripts/release_check.py "$GITHUB_REF_NAME"' in workflow
    assert "pypa/gh-action-pypi-publish@release/v1" in workflow and "id-token: write" in workflow

    def check(tag: str, pyproject: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "release_check.py"), tag,
                               str(pyproject)], capture_output=True, text=True, timeout=60)

    bare = tmp_path / "bare.toml"
    text = (ROOT / "pyproject.toml").read_text()
    bare.write_text(re.sub(r"(?ms)^\[project\.urls\].*?(?=^\[|\Z)", "", text))
    named = tmp_path / "named.toml"
    named.write_text(bare.read_text().replace("\n[project.scripts]",
                                              '\n[project.urls]\nRepository = "https://github.com/o/r"\n'
                                              "\n[project.scripts]"))
    assert check(f"v{version}", named).returncode == 0
    wrong = check("v9.9.9", named)
    assert wrong.returncode == 2 and wrong.stderr.splitlines() == [
        f"error: the tag 'v9.9.9' is not 'v{version}' (pyproject.toml's version)"]
    nameless = check(f"v{version}", bare)
    assert nameless.returncode == 2 and nameless.stderr.splitlines() == [
        'error: pyproject.toml has no [project.urls] Repository = "https://..." (docs/release.md)']
