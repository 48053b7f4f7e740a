"""Load a recipe script as a module, for notebooks: `recipe("code").main(...)`.

Recipes are scripts in `recipes/`, not a package, and `recipes/code.py` would clash with the
standard library's `code` module on a plain import; this loads them by path instead.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def recipe(name: str) -> ModuleType:
    path = RECIPES / f"{name}.py"
    if not path.is_file():
        have = ", ".join(sorted(p.stem for p in RECIPES.glob("*.py")))
        raise FileNotFoundError(f"no recipe {name!r} in {RECIPES}; have: {have}")
    module_name = f"kit_recipe_{name}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module
