"""The command line, above every stage: the recipes by name, each recipe's `key=value` words
with `--help` and `--plan`, and a recipe run as a script or pasted whole into a notebook cell.

    python -m kit                                  # the recipes (or the `kit` console script)
    python -m kit chat --help                      # every key, its default and meaning
    python -m kit chat max_steps=100 lora.r=32     # a run
    python -m kit chat --plan gpu_memory_gib=15    # the memory plan only; no weights load
    python -m kit serve pip=outputs/chat port=8000 # adapters behind an OpenAI-compatible API

In a notebook, `kit.cli.main(["chat", "max_steps=100"])` does the same and returns the exit
status instead of exiting. Importing this module loads no stage: torch and Unsloth come with
the recipe that runs.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from kit.config import apply_overrides, describe
from kit.errors import run_cli

USAGE = "usage: python -m kit RECIPE [key=value ...] [--help | --plan]"
# Commands beside the recipes: name → (module, one line); the module's `cli(words)` runs it.
COMMANDS = {"serve": ("kit.serve", "several LoRA adapters on one base behind an OpenAI-compatible API")}
# The programs that start a Jupyter kernel: Jupyter, VS Code and Kaggle use ipykernel's, Colab
# its own. A kernel's sys.argv is theirs (`-f connection.json`), not words for a recipe.
KERNEL_LAUNCHERS = ("ipykernel_launcher", "colab_kernel_launcher")


def parse_cli(default: Any, argv: list[str]) -> Any | None:
    """Config from command-line `key=value` words; None after printing help for -h/--help,
    or the memory plan for --plan (nothing is trained)."""
    if "--plan" in argv:
        from kit.showplan import show_plan

        show_plan(apply_overrides(default, [a for a in argv if a != "--plan"]))
        return None
    if any(a in ("-h", "--help", "help") for a in argv):
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{type(default).__name__}: key=value overrides")
        for col in ("key", "default", "meaning"):
            table.add_column(col)
        for key, value, doc in describe(default):
            table.add_row(key, repr(value), doc)
        Console().print(table)
        return None
    return apply_overrides(default, argv)


# ---------------------------------------------------------------- the recipes by name


def names() -> list[str]:
    """The recipes: the modules of kit.recipes (the top-level recipes/ folder in a checkout)."""
    import kit.recipes

    return sorted(m.name for m in pkgutil.iter_modules(kit.recipes.__path__) if not m.name.startswith("_"))


def recipe(name: str) -> ModuleType:
    """A recipe as a module, for notebooks: `r = recipe("code"); r.main(r.CodeConfig(...))`."""
    have = names()
    if name not in have:
        raise FileNotFoundError(f"no recipe {name!r}; have: {', '.join(have)}")
    return importlib.import_module(f"kit.recipes.{name}")


def summary(name: str) -> str:
    """The first line of a recipe's docstring, read from its source (nothing is imported)."""
    spec = importlib.util.find_spec(f"kit.recipes.{name}")
    doc = ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8"))) or ""
    return doc.strip().split("\n")[0]


def listing() -> str:
    have = names()
    width = max(map(len, have), default=0)
    lines = [USAGE, "", "recipes:"]
    lines += [f"  {name:<{width}}  {summary(name)}" for name in have]
    lines += ["", "commands:"] + [f"  {name:<{width}}  {line}" for name, (_, line) in COMMANDS.items()]
    lines += ["", "`python -m kit RECIPE --help` lists a recipe's keys, their defaults and meanings;",
              "`python -m kit serve --help` the server's words."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m kit RECIPE key=value ...` and the `kit` console script: the run's exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(listing())
        return 0
    name, words = argv[0], argv[1:]
    if name in COMMANDS:
        return run_cli(importlib.import_module(COMMANDS[name][0]).cli, words)
    if name not in names():
        print(f"error: no recipe {name!r}; have: {', '.join(names())}\n{USAGE}", file=sys.stderr)
        return 2
    return run_cli(recipe(name).cli, words)


# ---------------------------------------------------------------- a recipe as a script


def in_notebook(argv: list[str] | None = None) -> bool:
    """Whether this process is a Jupyter kernel started with its own argv (Jupyter, VS Code,
    Colab, Kaggle). `%run recipes/chat.py key=value` sets sys.argv to its words: not this."""
    if "ipykernel" not in sys.modules:
        return False
    argv = sys.argv if argv is None else argv
    if not argv:
        return False
    program = Path(argv[0])
    return (program.stem in KERNEL_LAUNCHERS or "ipykernel" in program.parts
            or any(a == "-f" or a.startswith("--f=") for a in argv[1:]))


def run_script(cli: Callable[[list[str]], object]) -> None:
    """A recipe's `if __name__ == "__main__":` block. From a shell: the command line's words,
    then exit with the run's status (0, 1 for a failed check, 2 for bad input). Pasted whole
    into a notebook cell: the recipe's defaults (the kernel's argv is not the user's), and no
    SystemExit when the run succeeds."""
    if not in_notebook():
        sys.exit(run_cli(cli))
    status = run_cli(cli, [])
    if status:
        raise SystemExit(status)
