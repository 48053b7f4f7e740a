"""The recipes, one module each: chat, classification, code.

In a checkout they are this top-level folder, to read and to run as scripts
(`python recipes/chat.py key=value ...`); a wheel installs them as the package `kit.recipes`.
Either way `python -m kit RECIPE key=value ...` runs them, and `kit.recipe.recipe(name)` loads
one in a notebook.
"""
