"""Write the Colab and Kaggle notebooks in notebooks/ from the recipe scripts in recipes/.

    python scripts/make_notebooks.py            # (re)write notebooks/{colab,kaggle}/<recipe>.ipynb
    python scripts/make_notebooks.py --check    # exit 1, listing the notebooks that are stale

The recipes are the one source of truth; a notebook is a recipe laid out as cells. Each recipe
is read as source text and `ast` (never imported):

- the module docstring becomes the title cell;
- an install cell with one setting, KIT_SOURCE (the repository's URL, a wheel, or a version on
  PyPI; empty: pyproject.toml's `[project.urls] Repository`, else this version on PyPI), that
  installs the kit as a regular package and the tested stack (read from requirements/ and
  scripts/setup_venv.sh) into the running kernel; it does nothing where both are importable;
- the imports `main()` and the config class use, and every other module-level definition
  except `main`, `cli` and the `if __name__ == "__main__":` block;
- a `parameters` cell (papermill's tag) creating the config with the platform's output_dir;
- the lines of `main()` before its first stage comment (`# 1. ...`) as a setup cell, then one
  markdown heading and one code cell per numbered stage, dedented to top level, comments
  kept; the final `return finish(...)` becomes `metrics = finish(...)`.

The output is deterministic (stable cell ids and metadata, no outputs, sorted keys), so
`--check` can tell whether a recipe changed without its notebooks being regenerated.

Why not jupytext: it turns a percent-format script (`# %%` cells of top-level code) into a
notebook. A recipe here is a function, `main(cfg)`, because `python -m kit`, `kit.recipe`, the
tests and the multi-GPU launcher call it with a config and get its metrics back; a script of
top-level cells could not be called that way, and keeping both a function and a cell script
per recipe would put every line in two places. So the cells are cut from main() itself, by its
numbered stage comments, and this file only lays them out (nbformat writes the notebook).
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import re
import shlex
import sys
import textwrap
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbformat import v4

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
NOTEBOOKS = ROOT / "notebooks"
STACK = ROOT / "requirements" / "stack.txt"
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
SETUP = ROOT / "scripts" / "setup_venv.sh"
PYPROJECT = ROOT / "pyproject.toml"

# `# 1. Data ...`, `# 5-7. Evaluate, train, ...`: a stage of main(), at main's own indentation.
STAGE = re.compile(r"^(?P<indent>[ \t]*)#\s*(?P<num>\d+(?:\s*[-–]\s*\d+)?)\.\s+(?P<text>\S.*)$")


@dataclass(frozen=True)
class Platform:
    name: str
    title: str
    workdir: str  # where outputs go
    wheel_place: str  # where a user puts a wheel of the kit, in words
    wheel_dir: str  # and that folder, for the example
    metadata: dict
    env: dict = field(default_factory=dict)  # set before torch is imported
    howto: str = ""
    parameters_note: str = ""


PLATFORMS = {
    "colab": Platform(
        name="colab",
        title="Google Colab",
        workdir="/content",
        wheel_place="to the runtime or on Drive",
        wheel_dir="/content/drive/MyDrive",
        metadata={"accelerator": "GPU", "colab": {"gpuType": "T4", "provenance": []}},
        howto=(
            "**On Colab:** *Runtime → Change runtime type → T4 GPU* (or better), then *Runtime → "
            "Run all*. The first cell installs the kit and the tested stack (a few minutes; Colab's "
            "own CUDA torch is kept when it fits the pins); its `KIT_SOURCE` says where the kit comes "
            "from. Outputs go to `/content/outputs/{recipe}`: "
            "download them from the Files panel before the runtime is recycled, or mount Google "
            "Drive and set `checkpoint_mirror` in the parameters cell so checkpoints survive a "
            "disconnect (`resume=\"auto\"` continues from the newest one)."
        ),
        parameters_note=(
            "# Optional: mirror checkpoints to Google Drive, so a disconnected runtime can resume:\n"
            "#   from google.colab import drive; drive.mount(\"/content/drive\")\n"
            "# then add  checkpoint_mirror=\"/content/drive/MyDrive/unsloth-recipe-kit/{recipe}\"  below.\n"
        ),
    ),
    "kaggle": Platform(
        name="kaggle",
        title="Kaggle",
        workdir="/kaggle/working",
        wheel_place="as a dataset",
        wheel_dir="/kaggle/input/DATASET",
        metadata={"kaggle": {"accelerator": "nvidiaTeslaT4", "dataSources": [], "isGpuEnabled": True,
                             "isInternetEnabled": True, "language": "python", "sourceType": "notebook"}},
        env={"CUDA_VISIBLE_DEVICES": "0"},
        howto=(
            "**On Kaggle:** *Settings → Accelerator → GPU T4 x2* and *Settings → Internet → on*, "
            "then *Run All*. The notebook's own cells train on one T4 (the first cell sets "
            "`CUDA_VISIBLE_DEVICES=0` before torch is imported); its last cell runs the recipe on "
            "both T4s as two processes. The first cell installs the kit and the tested stack (a few "
            "minutes; Kaggle's own CUDA torch is kept when it fits the pins); its `KIT_SOURCE` says "
            "where the kit comes from. "
            "Outputs go to `/kaggle/working/outputs/{recipe}` and are kept with *Save Version*. "
            "`/kaggle/working` holds 20 GB: a merged 16-bit export takes about 2 bytes per model "
            "parameter, so for large models choose `export=\"adapter\"` (the run checks the free "
            "disk before it starts)."
        ),
    ),
}

BOTH_GPUS = """\
BOTH_T4S = False
if BOTH_T4S:
    import dataclasses
    import os
    import subprocess
    import sys

    from kit import launch

    both = dataclasses.replace(cfg, nproc=2, output_dir=cfg.output_dir + "-2gpu")
    subprocess.run([sys.executable, "-m", "kit", "{recipe}", *launch.as_args(both)],
                   env={{**os.environ, "CUDA_VISIBLE_DEVICES": "0,1"}}, check=True)
"""

KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


# ---------------------------------------------------------------- the pins


# In requirements/stack.txt, what follows this line is for the checkout's tests and lint only;
# a notebook does not install it.
DEV_TOOLS = "# test and lint tools"


def requirement_lines(path: Path, until: str | None = None) -> list[str]:
    """A requirements file's requirements, comments and blank lines dropped, order kept; with
    `until`, only those above the line `until`."""
    out = []
    for line in path.read_text().splitlines():
        if until is not None and line.strip() == until:
            break
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def setup_installs(path: Path = SETUP) -> dict:
    """What scripts/setup_venv.sh installs besides the requirements files: the torch spec it
    uses on a GPU machine, and each `--no-deps` install (its shell variables expanded)."""
    text = path.read_text()
    variables = dict(re.findall(r"^([A-Z_][A-Z0-9_]*)=([^\s$`]+)\s*$", text, re.M))
    gpu_torch, no_deps = None, []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#") or "pip install" not in line:
            continue
        line = re.sub(r"\$\{?([A-Z_][A-Z0-9_]*)\}?", lambda m: variables.get(m[1], m[0]), line)
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        commands: list[list[str]] = [[]]
        for word in lex:  # split at ||, &&, ;, | and redirections
            if set(word) <= set(";&|<>()"):
                commands.append([])
            else:
                commands[-1].append(word)
        for words in commands:
            if words[:2] != ["pip", "install"]:
                continue
            specs = [w for w in words[2:] if re.fullmatch(r"[A-Za-z][A-Za-z0-9_.\-]*(\[[^\]]*\])?"
                                                        r"\s*(([<>=!~]=?|===)[^\s]+)?", w)]
            if "--no-deps" in words and specs:
                no_deps.append(specs)
            elif specs and specs[0].startswith("torch") and ">=" in specs[0] and gpu_torch is None:
                gpu_torch = specs[0]
    if not no_deps:
        raise SystemExit(f"{path}: found no `pip install --no-deps ...` lines")
    return {"torch": gpu_torch, "no_deps": no_deps}


def _project(path: Path = PYPROJECT) -> dict:
    """pyproject.toml's [project] table (tomllib; on Python 3.10 without tomli, the few keys
    this file needs, read plainly)."""
    text = path.read_text()
    try:
        import tomllib
    except ImportError:
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            def key(table: str, name: str) -> str:
                body = re.search(rf"^\[{re.escape(table)}\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
                value = body and re.search(rf'^\s*"?{name}"?\s*=\s*"([^"]*)"', body[1], re.M)
                return value[1] if value else ""
            return {"name": key("project", "name"), "version": key("project", "version"),
                    "urls": {"Repository": key("project.urls", "Repository")}}
    return tomllib.loads(text).get("project", {})


def repository_url(path: Path = PYPROJECT) -> str:
    """pyproject.toml's `[project.urls] Repository`, or "" where there is none."""
    return str(_project(path).get("urls", {}).get("Repository", ""))


def default_source(path: Path = PYPROJECT) -> tuple[str, str]:
    """What an empty KIT_SOURCE installs, and where that comes from: the repository named in
    pyproject.toml (pip clones it), else this version on PyPI (once it is published)."""
    url = repository_url(path)
    if url:
        return url, "pyproject.toml's [project.urls] Repository"
    project = _project(path)
    return f"{project['name']}=={project['version']}", "this version on PyPI, once it is published"


def _pylist(name: str, items: list[str], width: int = 96) -> str:
    body = textwrap.fill(", ".join(json.dumps(i) for i in items), width=width,
                         initial_indent="    ", subsequent_indent="    ", break_long_words=False,
                         break_on_hyphens=False)
    return f"{name} = [\n{body},\n]\n"


# The install cell's code below its settings. Everything a user may change is KIT_SOURCE, above
# it; the lists it reads (TORCH, NO_DEPS, CONSTRAINTS, STACK) come from requirements/ and
# scripts/setup_venv.sh. The kit is installed as a regular package (not editable, not a clone
# named `kit` in the working folder): a running kernel sees a package pip adds to site-packages,
# but not an editable install's finder (loaded at interpreter start only), and a folder named
# `kit` in its working folder would shadow the package.
INSTALL_CODE = '''

class Stop(Exception):
    """A one-line message instead of a traceback; "Run all" stops at this cell."""

    def _render_traceback_(self):
        return [f"error: {self}"]


def pip(what, *args):
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-color",
                           "--disable-pip-version-check", *args], capture_output=True, text=True)
    if proc.returncode:
        lines = [s for s in proc.stderr.splitlines() if s.startswith("ERROR:")] or proc.stderr.splitlines()
        last = lines[-1].removeprefix("ERROR:").strip() if lines else f"exit status {proc.returncode}"
        raise Stop(f"pip could not install {what}: {last}")


def importable(name):
    spec = importlib.util.find_spec(name)
    return spec is not None and spec.origin is not None  # a folder named `kit` here is not the kit


def kit_requirement(source):
    """KIT_SOURCE as pip takes it."""
    source = source.strip()
    if re.match(r"https?://", source) and not source.endswith((".whl", ".tar.gz", ".zip")):
        return "git+" + source  # a repository: pip clones it and builds the package
    if source.endswith(".whl") and "://" not in source and not os.path.isfile(source):
        raise Stop(f"KIT_SOURCE: no such file: {source}")
    return source  # a wheel, a git+ URL, a folder, or a version on PyPI


if importable("kit") and importable("unsloth"):
    print("the kit and its stack are installed already")
else:
    kit = kit_requirement(KIT_SOURCE or KIT_DEFAULT)
    print(f"installing the kit from {kit}")
    try:
        pip("the kit", "--no-deps", kit)
    except Stop as e:
        if KIT_SOURCE:
            raise
        raise Stop(f"{e}. Set KIT_SOURCE at the top of this cell to this repository's URL, a .whl "
                   "file, or a version on PyPI") from None
    torch_version = ""
    if importlib.util.find_spec("torch") is not None:
        torch_version = importlib.metadata.version("torch")
    fits = [c for c in CONSTRAINTS if Requirement(c).name == "torch"]
    if torch_version and all(Requirement(c).specifier.contains(torch_version, prereleases=True)
                             for c in fits):
        print(f"keeping the installed torch {torch_version}")
        CONSTRAINTS.append(f"torch=={torch_version}")  # nothing below may replace it
    else:
        print(f"installing {TORCH}")
        pip(TORCH, TORCH)
    print("installing the tested stack (a few minutes)")
    pip("unsloth", "--no-deps", *NO_DEPS)
    with tempfile.NamedTemporaryFile("w", suffix="-constraints.txt", delete=False) as f:
        f.write("\\n".join(CONSTRAINTS) + "\\n")
    pip("the stack", "-c", f.name, *STACK)
    importlib.invalidate_caches()  # so this kernel finds what pip added to site-packages
    if not importable("kit"):
        raise Stop("the kit is installed but this kernel does not see it: restart the runtime and "
                   "run all again")
    print("done")
'''


def install_cell(platform: Platform) -> str:
    setup = setup_installs()
    constraints = requirement_lines(CONSTRAINTS)
    torch_pin = next((c for c in constraints if re.match(r"torch\s*[<>=!~]", c)), "torch")
    torch_spec = setup["torch"] or torch_pin
    project = _project()
    default, why = default_source()
    wheel = f"{project['name'].replace('-', '_')}-{project['version']}-py3-none-any.whl"
    lines = [
        f"# Where the kit comes from. Empty: {default} ({why}).",
        "# Or this repository's URL (\"https://github.com/OWNER/REPO\", \"...@v1.0\" for a tag or branch),",
        f"# a wheel uploaded {platform.wheel_place} (\"{platform.wheel_dir}/{wheel}\"),",
        f"# or a version on PyPI (\"{project['name']}=={project['version']}\").",
        'KIT_SOURCE = ""',
        "",
        "# Nothing to change below. The kit, then the tested stack (the platform's CUDA torch is kept",
        "# where it fits the pins); nothing is installed where both are importable already (a",
        "# checkout's .venv, or this cell run a second time).",
        "import importlib",
        "import importlib.metadata",
        "import importlib.util",
        "import os",
        "import re",
        "import subprocess",
        "import sys",
        "import tempfile",
        "",
        "from packaging.requirements import Requirement",
        "",
    ]
    for key, value in platform.env.items():
        lines += ["# Unsloth trains on one GPU; this must be set before torch is imported.",
                  f"os.environ[{json.dumps(key)}] = {json.dumps(value)}", ""]
    lines += [
        f"KIT_DEFAULT = {json.dumps(default)}",
        f"TORCH = {json.dumps(torch_spec)}  # only where the installed torch does not fit {torch_pin}",
    ]
    text = "\n".join(lines) + "\n"
    text += "# Installed with --no-deps, as scripts/setup_venv.sh does: their own dependencies would\n"
    text += "# replace the CUDA torch with another build.\n"
    text += _pylist("NO_DEPS", [s for group in setup["no_deps"] for s in group])
    text += "# requirements/constraints.txt, then requirements/stack.txt (less its test and lint tools):\n"
    text += _pylist("CONSTRAINTS", constraints)
    stack = requirement_lines(STACK, until=DEV_TOOLS)
    if stack == requirement_lines(STACK):
        raise SystemExit(f"{STACK}: no line {DEV_TOOLS!r} above the checkout's own tools")
    text += _pylist("STACK", stack)
    text += INSTALL_CODE
    return text.rstrip() + "\n"


# ---------------------------------------------------------------- reading a recipe


@dataclass
class Stage:
    num: str
    text: str  # the stage comment (and its continuation lines), without `#`
    code: str


@dataclass
class Recipe:
    name: str
    path: Path
    docstring: str
    definitions: str  # imports, the config class, other module-level definitions
    config_class: str
    setup: str
    stages: list[Stage]


class RecipeError(Exception):
    pass


def _names_used(nodes: list[ast.AST]) -> set[str]:
    names = set()
    for node in nodes:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name):
                names.add(sub.id)
            elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                # string annotations (`from __future__ import annotations` style): "Literal[...]"
                try:
                    names |= {n.id for n in ast.walk(ast.parse(sub.value, mode="eval"))
                              if isinstance(n, ast.Name)}
                except SyntaxError:
                    pass
    return names


def _is_main_guard(node: ast.stmt) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def _string_inner_lines(source: str) -> set[int]:
    """1-based numbers of the lines that lie inside a multi-line string (after its first line):
    dedenting them would change the string."""
    inner: set[int] = set()
    fstrings = []  # Python 3.12+ tokenizes f-strings in parts: where each open one starts
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == getattr(tokenize, "FSTRING_START", None):
            fstrings.append(tok.start[0])
            continue
        start = fstrings.pop() if tok.type == getattr(tokenize, "FSTRING_END", None) else tok.start[0]
        if (tok.type == tokenize.STRING or tok.type == getattr(tokenize, "FSTRING_END", None)) \
                and tok.end[0] > start:
            inner |= set(range(start + 1, tok.end[0] + 1))
    return inner


def _dedent(lines: list[str], numbers: list[int], indent: str, inner: set[int]) -> str:
    out = []
    for line, n in zip(lines, numbers):
        if n in inner:
            out.append(line)
        elif line.startswith(indent):
            out.append(line[len(indent):])
        elif line.strip():
            raise RecipeError(f"line {n} is indented less than main()'s body: {line!r}")
        else:
            out.append("")
    return "\n".join(out).strip("\n")


def _comment_start(lines: list[str], lineno: int) -> int:
    """The first of the comment lines directly above line `lineno` (1-based), or lineno."""
    while lineno > 1 and lines[lineno - 2].lstrip().startswith("#"):
        lineno -= 1
    return lineno


def _lines(lines: list[str], start: int, end: int) -> str:
    """Source lines start..end, 1-based and inclusive, each ending in a newline."""
    return "".join(line + "\n" for line in lines[start - 1:end])


def read_recipe(path: Path) -> Recipe:
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    where = f"{path.name}"

    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    main = funcs.get("main")
    if main is None:
        raise RecipeError(f"{where}: no `def main(cfg)`")
    if not main.args.args or main.args.args[0].annotation is None:
        raise RecipeError(f"{where}: main's first argument needs its config class as annotation")
    ann = main.args.args[0].annotation
    config_class = ann.value if isinstance(ann, ast.Constant) else ast.unparse(ann)
    if not any(isinstance(n, ast.ClassDef) and n.name == config_class for n in tree.body):
        raise RecipeError(f"{where}: main(cfg: {config_class}) but no class {config_class} here")

    # Module level: the docstring, imports, definitions (the config class and any helpers).
    body = list(tree.body)
    docstring = ast.get_docstring(tree) or path.stem
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]
    kept = [n for n in body if not isinstance(n, ast.Import | ast.ImportFrom) and not _is_main_guard(n)
            and not (isinstance(n, ast.FunctionDef) and n.name in ("main", "cli"))]
    used = _names_used(kept + [main])
    parts: list[tuple[int, int, str, bool]] = []  # (first line, last line, text, is a definition)
    for node in body:
        decorators = [d.lineno for d in getattr(node, "decorator_list", [])]
        start = _comment_start(lines, min([node.lineno, *decorators]))
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            parts.append((start, node.end_lineno, _lines(lines, start, node.end_lineno), False))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [a for a in node.names if (a.asname or a.name).split(".")[0] in used]
            if len(names) == len(node.names):
                text = _lines(lines, start, node.end_lineno)
            elif names:  # drop what only cli() needs
                new = ast.ImportFrom(node.module, names, node.level) if isinstance(node, ast.ImportFrom) \
                    else ast.Import(names)
                text = _lines(lines, start, node.lineno - 1) + ast.unparse(new)
            else:
                continue
            parts.append((start, node.end_lineno, text, False))
        elif node in kept:
            parts.append((start, node.end_lineno, _lines(lines, start, node.end_lineno), True))
    definitions = ""
    for i, (start, _, text, is_def) in enumerate(parts):
        if i:
            prev_end, prev_def = parts[i - 1][1], parts[i - 1][3]
            gap = any(not line.strip() for line in lines[prev_end:start - 1])
            definitions += "\n\n\n" if is_def or prev_def else "\n\n" if gap else "\n"
        definitions += text.rstrip("\n")
    definitions += "\n"

    # main(): the setup lines, then one stage per numbered comment at the body's indentation.
    stmts = main.body
    if ast.get_docstring(main) is not None:
        stmts = stmts[1:]  # main's own docstring
    if not stmts:
        raise RecipeError(f"{where}: main() is empty")
    indent = lines[stmts[0].lineno - 1][: stmts[0].col_offset]
    first, last = stmts[0].lineno, main.end_lineno
    for deco in getattr(stmts[0], "decorator_list", []):
        first = min(first, deco.lineno)
    _check_returns(main, stmts, where)

    inner = _string_inner_lines(source)
    marks = []
    for n in range(first, last + 1):
        m = STAGE.match(lines[n - 1])
        if m and m["indent"] == indent and n not in inner:
            if any(s.lineno < n <= s.end_lineno for s in stmts):
                raise RecipeError(f"{where}:{n}: stage comment inside a statement")
            marks.append(n)
    if not marks:
        raise RecipeError(f"{where}: main() has no numbered stage comments (`# 1. Data ...`)")
    # Comment lines above the first statement that belong to no stage stay in the setup cell.
    setup_start = min(first, marks[0])
    while setup_start > main.body[0].lineno and lines[setup_start - 2].strip().startswith("#"):
        setup_start -= 1

    ret = stmts[-1]
    replace = {}
    if isinstance(ret, ast.Return):
        line = lines[ret.lineno - 1]
        col = ret.col_offset
        if ret.value is None or (isinstance(ret.value, ast.Name) and ret.value.id == "metrics"):
            replace.update({n: None for n in range(ret.lineno, ret.end_lineno + 1)})  # nothing to do
        else:
            replace[ret.lineno] = line[:col] + "metrics = " + line[ret.value.col_offset:]
            shift = " " * (len("metrics = ") - (ret.value.col_offset - col))
            for n in range(ret.lineno + 1, ret.end_lineno + 1):  # keep continuation lines aligned
                if n not in inner and lines[n - 1].strip():
                    replace[n] = shift + lines[n - 1]
    for stmt in stmts:  # the launch of several processes, and the comment above it
        if _starts_ranks(stmt):
            top = stmt.lineno
            while lines[top - 2].strip().startswith("#"):
                top -= 1
            replace.update({n: None for n in range(top, stmt.end_lineno + 1)})
    text_lines = [replace.get(n, lines[n - 1]) for n in range(1, len(lines) + 1)]

    def block(a: int, b: int) -> str:  # lines a..b-1, 1-based, without the dropped ones
        numbers = [n for n in range(a, b) if text_lines[n - 1] is not None]
        return _dedent([text_lines[n - 1] for n in numbers], numbers, indent, inner)

    setup = block(setup_start, marks[0]) if setup_start < marks[0] else ""
    stages = []
    bounds = marks + [last + 1]
    for a, b in zip(bounds, bounds[1:]):
        m = STAGE.match(lines[a - 1])
        words = [m["text"].strip()]
        n = a + 1
        while n < b and lines[n - 1].startswith(indent + "#") and not STAGE.match(lines[n - 1]):
            words.append(lines[n - 1].strip().lstrip("#").strip())  # the comment continues
            n += 1
        code = block(n, b)
        if not code.strip():
            raise RecipeError(f"{where}:{a}: stage {m['num']} has no code")
        stages.append(Stage(re.sub(r"\s*[-–]\s*", "-", m["num"]), " ".join(words), code))
    return Recipe(path.stem, path, docstring, definitions, config_class, setup, stages)


def _starts_ranks(stmt: ast.stmt) -> bool:
    """`if (n := launch.processes(cfg, say)) > 1: return launch.run_ranks(...)`: starting one
    process per GPU is for the script and main(); a notebook's cells run in its kernel, one
    process (the Kaggle notebook's last cell runs the recipe on both T4s)."""
    return (isinstance(stmt, ast.If) and len(stmt.body) == 1 and not stmt.orelse
            and isinstance(stmt.body[0], ast.Return) and "run_ranks" in ast.unparse(stmt.body[0]))


def _check_returns(main: ast.FunctionDef, stmts: list[ast.stmt], where: str) -> None:
    """Only a final top-level `return` can become `metrics = ...` in a notebook."""
    def visit(node: ast.AST):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
                continue
            if _starts_ranks(child):
                continue
            if isinstance(child, ast.Return) and child is not stmts[-1]:
                raise RecipeError(f"{where}:{child.lineno}: main() returns early; a notebook cannot")
            if isinstance(child, ast.Yield | ast.YieldFrom | ast.Await):
                raise RecipeError(f"{where}:{child.lineno}: main() must be a plain function")
            visit(child)
    visit(main)


# ---------------------------------------------------------------- markdown


def _docstring_markdown(doc: str) -> str:
    """Paragraphs stay; indented blocks (commands, code) become fenced code blocks."""
    lines = doc.strip().splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        if lines[i].startswith("    ") and lines[i].strip():
            block = []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                block.append(lines[i][4:])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            shell = all(re.match(r"(make|python|pip|git|\$)\s", b) for b in block if b.strip())
            if out and out[-1].strip():
                out.append("")
            out += ["```" + ("bash" if shell else "python"), *block, "```", ""]
        else:
            out.append(lines[i])
            i += 1
    return "\n".join(out).strip()


def _title(recipe: Recipe) -> tuple[str, str]:
    first, _, rest = recipe.docstring.strip().partition("\n")
    head, sep, tail = first.partition(": ")
    if sep and len(head.split()) <= 8:
        tail = tail[:1].upper() + tail[1:]
        return head.rstrip("."), (tail + "\n" + rest).strip()
    return first.rstrip("."), rest.strip()


def _stage_heading(stage: Stage) -> str:
    """`## 2. Model` and the rest of the comment below it, where the comment starts with a short
    sentence or a short label (`Model: ...`); else the whole comment as the heading."""
    text = stage.text
    first, sep, rest = text.partition(". ")
    if sep and len(first.split()) <= 6:
        return f"## {stage.num}. {first}\n\n{rest}"
    for mark in (": ", "; "):
        head, sep, rest = text.partition(mark)
        if sep and len(head.split()) <= 4 and not re.search(r"[.,;:()]", head):
            return f"## {stage.num}. {head}\n\n{rest[:1].upper() + rest[1:]}"
    return f"## {stage.num}. {text}"


# ---------------------------------------------------------------- the notebook


def build(recipe: Recipe, platform: Platform) -> nbformat.NotebookNode:
    rel = recipe.path.relative_to(ROOT) if recipe.path.is_relative_to(ROOT) else recipe.path.name
    title, intro = _title(recipe)
    output_dir = f"{platform.workdir}/outputs/{recipe.name}"
    cells = []

    def md(cid: str, text: str):
        cells.append(v4.new_markdown_cell(text.strip(), id=f"{cid}"))

    def code(cid: str, text: str, tags: list[str] | None = None):
        cell = v4.new_code_cell(text.strip("\n"), id=f"{cid}")
        if tags:
            cell.metadata["tags"] = tags
        cells.append(cell)

    md("title", f"# {title} ({platform.title})\n\n{_docstring_markdown(intro)}\n\n"
       f"*This notebook is generated from [`{rel}`](../../{rel}) by `scripts/make_notebooks.py`: "
       "change the recipe, then run `python scripts/make_notebooks.py`.*")
    md("platform", platform.howto.format(recipe=recipe.name))
    code("install", install_cell(platform))
    md("definitions-md", f"## Imports and settings\n\n`{recipe.config_class}` lists this recipe's "
       "settings, each with its meaning; the ones every recipe shares (`model`, `max_steps`, "
       "`export`, `lora`, ...) are in `kit.config.RecipeConfig`.")
    code("definitions", recipe.definitions)
    md("parameters-md", "Choose the settings here: any field of the class above, e.g. "
       f"`{recipe.config_class}(max_steps=100)`. (This is papermill's `parameters` cell.)")
    code("parameters", platform.parameters_note.format(recipe=recipe.name)
         + f"cfg = {recipe.config_class}(output_dir={json.dumps(output_dir)})\n", tags=["parameters"])
    if recipe.setup:
        md("setup-md", "## Start\n\nThe settings are checked, and `output_dir` claimed for this run, "
           "before anything slow starts.")
        code("setup", recipe.setup)
    for stage in recipe.stages:
        md(f"stage-{stage.num}-md", _stage_heading(stage))
        code(f"stage-{stage.num}", stage.code)
    md("end", f"The run's files are in `{output_dir}`: `metrics.json` (before/after, the training "
       "curve, each export's check) and the exported `adapter/` or `merged/` folders.")
    if platform.name == "kaggle":
        md("both-gpus-md", "## Both T4s\n\nThe cells above train in this notebook's process, on "
           "one T4. This cell runs the same recipe, with the settings of the parameters cell, as "
           "two processes, one per T4 (data-parallel through torch's launcher; `batch_size` stays "
           "the effective batch): set `BOTH_T4S = True` and run it.")
        code("both-gpus", BOTH_GPUS.format(recipe=recipe.name))

    nb = v4.new_notebook(cells=cells)
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"},
                   **json.loads(json.dumps(platform.metadata))}
    nbformat.validate(nb)
    return nb


def render(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def recipes() -> list[Path]:
    return sorted(p for p in RECIPES.glob("*.py") if not p.name.startswith("_"))  # not __init__.py


def expected() -> dict[Path, str]:
    """Every notebook path and the text it should have."""
    out = {}
    for path in recipes():
        recipe = read_recipe(path)
        for platform in PLATFORMS.values():
            out[NOTEBOOKS / platform.name / f"{recipe.name}.ipynb"] = render(build(recipe, platform))
    return out


def stale() -> list[Path]:
    """Notebooks missing, different from what the recipes give now, or left from a removed recipe."""
    want = expected()
    bad = [p for p, text in want.items() if not p.is_file() or p.read_text() != text]
    extra = [p for p in NOTEBOOKS.glob("*/*.ipynb") if p not in want]
    return sorted(bad + extra)


def _show(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a notebook is stale; write nothing")
    args = ap.parse_args(argv)
    try:
        if args.check:
            bad = stale()
            for p in bad:
                print(f"stale: {_show(p)}")
            if bad:
                print("run `python scripts/make_notebooks.py` to regenerate", file=sys.stderr)
            return 1 if bad else 0
        want = expected()
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, text in want.items():
        if not path.is_file() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {_show(path)}")
    for path in NOTEBOOKS.glob("*/*.ipynb"):
        if path not in want:
            path.unlink()
            print(f"removed {_show(path)} (no such recipe)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
