"""One kind of error for bad input, and the entry point that turns it into one clear line."""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
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


class Terminated(KeyboardInterrupt):
    """SIGTERM, what Colab, Kaggle and job schedulers send to stop a run: unwound like Ctrl-C."""


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the goodbye short
    raise Terminated


def _resume_hint() -> str:
    """Where the run can pick up again: the newest complete checkpoint of the output_dir this
    process holds (kit.runlock), if it got that far."""
    runlock, checkpoints = sys.modules.get("kit.runlock"), sys.modules.get("kit.checkpoints")
    folders = runlock.held() if runlock else []
    if not folders:
        return ""
    best = checkpoints.latest(folders[0])[0] if checkpoints else None
    if best is None:
        return f"; no checkpoint was complete yet in {folders[0]}"
    return f"; the last complete checkpoint is {best}; run the same command again to resume"


def run_cli(fn: Callable[[list[str]], object], argv: list[str] | None = None) -> int:
    """Run a recipe's command line; a KitError becomes `error: ...` on stderr and exit 2.
    Ctrl-C (exit 130) and SIGTERM (exit 143) say where the run can resume from.

    One of several ranks (kit.launch, torchrun) ends its process here, skipping the
    interpreter's teardown: torch 2.13's gloo process group, freed while one of its worker
    threads still releases a tensor Python owns, joins that thread while holding the lock the
    thread waits for, and the rank never exits (seen at the end of two-rank runs, one in a
    few). The ranks have met at kit.ranks.leave() or stopped on an error; the loggers' runs are
    ended (finish_loggers) and output is flushed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _run_cli(fn, argv)
    try:
        code = _run_cli(fn, argv)
    except BaseException:
        traceback.print_exc()
        code = 1
    finish_loggers(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def finish_loggers(code: int) -> None:
    """End the loggers' runs that only an interpreter exit hook would end, before a rank's
    os._exit skips it: wandb's (transformers' WandbCallback never calls wandb.finish(); a run
    left so has no exit record, and what wandb had not yet written is lost). The other
    `report_to=` loggers close at the end of training, in their callbacks (TensorBoard's
    writer, trackio)."""
    wandb = sys.modules.get("wandb")
    if wandb is None or getattr(wandb, "run", None) is None:
        return
    try:
        wandb.finish(exit_code=code)
    except Exception as exc:  # a logger must not keep the rank from exiting
        print(f"warning: wandb.finish() failed: {exc}", file=sys.stderr)


def _run_cli(fn: Callable[[list[str]], object], argv: list[str] | None) -> int:
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        fn(sys.argv[1:] if argv is None else argv)
    except KitError as exc:
        if not getattr(exc, "quiet", False):  # quiet: said already, by rank 0 or a rank
            print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except RuntimeError as exc:
        ranks = sys.modules.get("kit.ranks")
        if ranks is None or not ranks.peer_lost(exc):
            raise
        print(f"error: rank {ranks.rank()} stopped: another training process is gone "
              f"({str(exc).splitlines()[0][:120]})", file=sys.stderr)
        return ranks.PEER_GONE
    except Terminated:
        print(f"error: stopped by SIGTERM{_resume_hint()}", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"error: interrupted{_resume_hint()}", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        runlock = sys.modules.get("kit.runlock")
        if runlock:  # bad input leaves no folder behind; the next run may use this one
            runlock.release()
    return 0
