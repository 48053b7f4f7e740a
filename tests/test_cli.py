"""The command line: `python -m kit` and a recipe file run as a script, from a shell or pasted
whole into a notebook cell, where sys.argv is the Jupyter kernel's own (`-f connection.json`)."""

from __future__ import annotations

import runpy
import sys
import types

import pytest
from conftest import ROOT

import kit.cli
from kit import cli
from kit.errors import KitError

RECIPES = ("chat", "classification", "code", "dpo", "fim", "grpo")
KERNEL_ARGV = ["/usr/lib/python3/site-packages/ipykernel_launcher.py", "-f",
               "/root/.local/share/jupyter/runtime/kernel-1.json"]


@pytest.fixture()
def spy(monkeypatch):
    """Record what each recipe's cli() hands to kit.cli.parse_cli and what that returns; then
    return None, so no run starts (parse_cli's own None after --help or --plan)."""
    calls = []
    real = kit.cli.parse_cli

    def parse(default, argv):
        calls.append((list(argv), real(default, argv)))
        return None

    monkeypatch.setattr(kit.cli, "parse_cli", parse)
    return calls


def run_file(recipe: str, argv: list[str], monkeypatch, kernel: bool):
    """Execute recipes/<recipe>.py as `__main__`, as a shell or a notebook cell does."""
    monkeypatch.setattr(sys, "argv", argv)
    if kernel:
        monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    else:
        monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    return runpy.run_path(str(ROOT / "recipes" / f"{recipe}.py"), run_name="__main__")


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_pasted_into_a_notebook_runs_its_defaults(recipe, spy, monkeypatch):
    """In a kernel the recipe neither parses the kernel's argv (`error: expected key=value, got
    '-f'`) nor raises SystemExit once the run succeeds."""
    namespace = run_file(recipe, KERNEL_ARGV, monkeypatch, kernel=True)  # no SystemExit
    [(argv, cfg)] = spy
    assert argv == []
    config_class = type(cfg)
    assert config_class.__name__ in namespace and cfg == namespace[config_class.__name__]()
    assert cfg.output_dir == f"outputs/{recipe}"


def test_a_failed_run_in_a_notebook_still_says_so(monkeypatch, capsys):
    """A run that fails in a notebook cell (here: its config) prints its one `error:` line and
    ends the cell with the exit status, as SystemExit."""
    def broken(default, argv):
        raise KitError("bad default")

    monkeypatch.setattr(kit.cli, "parse_cli", broken)
    with pytest.raises(SystemExit) as exc:
        run_file("chat", KERNEL_ARGV, monkeypatch, kernel=True)
    assert exc.value.code == 2 and "error: bad default" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_from_a_shell_parses_its_words_and_exits(recipe, spy, monkeypatch):
    with pytest.raises(SystemExit) as exc:
        run_file(recipe, [f"recipes/{recipe}.py", "max_steps=7"], monkeypatch, kernel=False)
    assert exc.value.code == 0
    [(argv, cfg)] = spy
    assert argv == ["max_steps=7"] and cfg.max_steps == 7


def test_run_in_a_notebook_keeps_its_words(spy, monkeypatch):
    """`%run recipes/chat.py max_steps=7` in a notebook: ipykernel is loaded, but sys.argv is the
    user's words; they are parsed as in a shell."""
    with pytest.raises(SystemExit) as exc:
        run_file("chat", ["recipes/chat.py", "max_steps=7"], monkeypatch, kernel=True)
    assert exc.value.code == 0 and spy[0][0] == ["max_steps=7"]


@pytest.mark.parametrize("argv, kernel, expected", [
    (KERNEL_ARGV, True, True),
    (["/usr/local/lib/python3.12/dist-packages/colab_kernel_launcher.py", "-f", "/tmp/k.json"], True, True),
    (["/opt/venv/lib/python3.11/site-packages/ipykernel/__main__.py", "-f", "/tmp/k.json"], True, True),
    (["/home/me/.vscode/launcher.py", "--f=/tmp/k.json"], True, True),
    (KERNEL_ARGV, False, False),  # no kernel loaded: whatever the words, they are the user's
    (["recipes/chat.py", "max_steps=7"], True, False),  # %run in a notebook
    (["recipes/chat.py"], False, False),
])
def test_in_notebook(argv, kernel, expected, monkeypatch):
    if kernel:
        monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    else:
        monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    assert cli.in_notebook(argv) is expected


def test_main_lists_recipes_and_dispatches(capsys):
    """kit.cli.main is `python -m kit` (and a notebook's way to it): it returns the status."""
    assert cli.names() == list(RECIPES)
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in RECIPES:
        assert f"  {name} " in out
    assert cli.main(["--help"]) == 0 and "recipes:" in capsys.readouterr().out
    assert cli.main(["nope"]) == 2
    assert "error: no recipe 'nope'; have: chat, classification, code, dpo, fim" in capsys.readouterr().err
    assert cli.main(["code", "--help"]) == 0
    out = capsys.readouterr().out
    assert "CodeConfig: key=value overrides" in out and "exec_timeout" in out
    assert cli.main(["chat", "max_steps=ten"]) == 2
    assert "max_steps='ten': expected a whole number" in capsys.readouterr().err


def test_recipe_lookup_is_the_package():
    from kit.recipe import recipe

    module = recipe("code")
    assert module.__name__ == "kit.recipes.code" and module.__file__ == str(ROOT / "recipes" / "code.py")
    import code

    assert code.__file__ != module.__file__ and hasattr(code, "InteractiveConsole")  # the stdlib's
    with pytest.raises(FileNotFoundError, match="no recipe 'nope'; have: chat, classification, code"):
        recipe("nope")


def test_main_shows_a_plan(tmp_path, capsys):
    """`python -m kit chat --plan ...`: the memory plan from a config.json alone, no weights."""
    import json

    from kit import plan

    folder = tmp_path / "llama-8b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**plan.LLAMA_8B, "model_type": "llama"}))
    assert cli.main(["chat", "--plan", f"model={folder}", "gpu_memory_gib=14.6", "max_seq_length=2048"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "7.38B parameters" in out and "offloaded checkpointing, micro-batch 4 × 1 accumulation" in out


@pytest.mark.slow
def test_recipe_pasted_into_a_real_kernel_cell(tmp_path, kernel_name):
    """The same in a real Jupyter kernel (its own `-f connection.json` argv): the recipe's text
    as one cell, with parse_cli recording its words and starting no run."""
    import nbformat
    from nbclient import NotebookClient

    spy = ("import sys, kit.cli\n"
           f"assert sys.prefix == {sys.prefix!r}, sys.prefix\n"
           "calls, real = [], kit.cli.parse_cli\n"
           "def record(default, argv):\n"
           "    calls.append((list(argv), real(default, argv)))\n"
           "kit.cli.parse_cli = record\n")
    check = ("assert '-f' in sys.argv and calls and calls[0][0] == [], (sys.argv, calls)\n"
             "assert calls[0][1] == ChatConfig(), calls\n")
    recipe = (ROOT / "recipes" / "chat.py").read_text()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in (spy, recipe, check)])
    NotebookClient(nb, kernel_name=kernel_name, timeout=300, startup_timeout=120,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
