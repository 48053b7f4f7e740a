"""Thin recipes around Unsloth's FastLanguageModel.

Modules by pipeline stage: config, data, models, train, evaluate, export, report.
Every module that uses transformers, trl or peft imports `unsloth` first, so Unsloth can
patch them; `kit.verify` deliberately does not (it checks exports the way a user would).
"""

import logging
import warnings

# Import-time notices from the stack that say nothing a user can act on: torch's pytree
# deprecations, torchao's GPU-only extensions failing to load on CPU, bitsandbytes' optional
# CPU kernels package.
for _name in ("torch.utils._pytree", "torchao", "bitsandbytes"):
    logging.getLogger(_name).setLevel(logging.ERROR)

# Unsloth sets HF_HUB_ENABLE_HF_TRANSFER for downloads; huggingface_hub 1.x warns that it is
# deprecated on every start, which no user of the kit can act on.
warnings.filterwarnings("ignore", message=".*HF_HUB_ENABLE_HF_TRANSFER.*", category=FutureWarning)
