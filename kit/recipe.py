"""Load a recipe as a module, for notebooks: `recipe("code").main(...)`.

The recipes are the package kit.recipes (the top-level recipes/ folder in a checkout, installed
inside kit/ by a wheel), so `recipes/code.py` never meets the standard library's `code` module.
"""

from kit.cli import recipe

__all__ = ["recipe"]
