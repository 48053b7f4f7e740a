"""One kind of error for bad input, and the entry point that turns it into one clear line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn


class KitError(Exception):
    """Bad input or an unusable setting: printed as one line, exit code 2, no traceback."""


class CheckFailed(KitError):
    """The run finished but a result failed its check (an export that does not load or does
    not stop): one line, exit code 1."""

    exit_code = 1


def fail(message: str) -> NoReturn:
    raise KitError(message)


def run_cli(fn: Callable[[list[str]], object], argv: list[str] | None = None) -> int:
    """Run a recipe's command line; a KitError becomes `error: ...` on stderr and exit 2."""
    try:
        fn(sys.argv[1:] if argv is None else argv)
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0
