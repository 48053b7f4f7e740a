"""Thin recipes around Unsloth's FastLanguageModel.

Modules by pipeline stage: config, data, models, train, evaluate, export, report; kit.cli (the
command line: `python -m kit RECIPE key=value ...`) sits above them and kit.recipes holds the
recipes. Every module that uses transformers, trl or peft imports `unsloth` first, so Unsloth can
patch them; `kit.verify` deliberately does not (it checks exports the way a user would).
"""

import logging
import sys as _sys
import warnings
from importlib import util as _util
from pathlib import Path as _Path

# Import-time notices from the stack that say nothing a user can act on: torch's pytree
# deprecations, torchao's GPU-only extensions failing to load on CPU, bitsandbytes' optional
# CPU kernels package.
for _name in ("torch.utils._pytree", "torchao", "bitsandbytes"):
    logging.getLogger(_name).setLevel(logging.ERROR)

# Unsloth sets HF_HUB_ENABLE_HF_TRANSFER for downloads; huggingface_hub 1.x warns that it is
# deprecated on every start, which no user of the kit can act on.
warnings.filterwarnings("ignore", message=".*HF_HUB_ENABLE_HF_TRANSFER.*", category=FutureWarning)

def _bind_checkout_recipes() -> None:
    """A wheel installs the recipes as kit/recipes/. A checkout keeps them in the top-level
    recipes/ folder beside kit/ (to read, and to run as `python recipes/chat.py`): bind
    kit.recipes to that folder, the one beside this very kit, so that another checkout on the
    path or an editable install made from elsewhere never lends its recipes instead."""
    here = _Path(__file__).resolve().parent
    init = here.parent / "recipes" / "__init__.py"
    if (here / "recipes").is_dir() or not init.is_file():
        return
    spec = _util.spec_from_file_location(f"{__name__}.recipes", init,
                                         submodule_search_locations=[str(init.parent)])
    module = _util.module_from_spec(spec)
    _sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    globals()["recipes"] = module


_bind_checkout_recipes()
