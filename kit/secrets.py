"""The Hugging Face token: found where users keep it, never printed, logged or saved.

Order: the HF_TOKEN environment variable, Colab's secrets (`userdata`), Kaggle's secrets,
then the Hugging Face login cache (`hf auth login`).
"""

from __future__ import annotations

import os


def hub_token() -> str | None:
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        return token
    try:  # Colab
        from google.colab import userdata  # type: ignore[import-not-found]

        token = userdata.get("HF_TOKEN")
        if token:
            return token
    except Exception:  # not on Colab, or the secret is not shared with this notebook
        pass
    try:  # Kaggle
        from kaggle_secrets import UserSecretsClient  # type: ignore[import-not-found]

        token = UserSecretsClient().get_secret("HF_TOKEN")
        if token:
            return token
    except Exception:  # not on Kaggle, or no such secret
        pass
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:
        return None


def redact(text: str, token: str | None = None) -> str:
    """`text` with the token (if any) replaced, for anything that will be shown or written."""
    token = token if token is not None else hub_token()
    return text.replace(token, "hf_***") if token else text
