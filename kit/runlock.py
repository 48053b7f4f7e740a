"""One run per output folder: a lock file in output_dir that the operating system releases
when the process ends, however it ends (a crash, SIGKILL, a closed notebook).

Two runs in one folder would train from each other's half-written checkpoints and both
"succeed"; the second one now stops at once and says which folder is taken. The lock is
taken after the config is checked; a run that then stops on bad input removes its lock file
and any folder it created for it, so bad input leaves nothing behind. The lock file is opened
without following a symbolic link (O_NOFOLLOW): a link planted at its name (a repository can
ship one) is refused, and whatever it points to is left as it was. The checkpoint mirror is
locked the same way, so two runs cannot share one.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from kit.errors import fail

LOCK_FILE = ".kit-run.lock"


@dataclass
class _Held:
    fd: int
    lock: Path
    created: list[Path] = field(default_factory=list)  # folders made for this run, deepest first


_HELD: dict[Path, _Held] = {}


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def acquire(output_dir: str | Path, key: str = "output_dir") -> None:
    """Lock `output_dir` for this process (creating it), or fail naming the run that has it.
    `key`: the config key the folder came from, for the messages (`checkpoint_mirror`)."""
    folder = Path(output_dir).expanduser().absolute()
    held = _HELD.get(folder)
    if held is not None:
        if _same_file(held.fd, held.lock):
            return  # this process (a notebook running the recipe again) holds it already
        _forget(folder)
    if folder.exists() and not folder.is_dir():
        fail(f"{key} {output_dir} is a file, not a folder; choose another {key}")
    created = []
    parent = folder
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    lock = folder / LOCK_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # retried only when the file was replaced while we waited
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             0o644)
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
                _remove_empty(created)
                fail(f"{key} {output_dir} holds {LOCK_FILE} as a symbolic link, which this kit never "
                     "makes; remove that link (its target is left untouched) or choose another "
                     f"{key}")
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                _remove_empty(created)
                fail(f"{key} {output_dir} holds {LOCK_FILE} that is not a regular file; remove it "
                     f"or choose another {key}")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                fail(f"{key} {output_dir} is in use by another run"
                     + (f" (process {owner})" if owner.isdigit() else "")
                     + f"; wait for it to finish, or choose another {key}")
            if _same_file(fd, lock):  # a run that just ended removes its file before unlocking
                break
            os.close(fd)
        else:
            raise OSError(f"{lock} keeps being replaced")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as exc:
        _remove_empty(created)
        fail(f"{key} {output_dir} cannot be written ({exc.strerror or exc}); "
             f"choose a writable {key}")
    _HELD[folder] = _Held(fd, lock, created)


def _forget(folder: Path) -> None:
    held = _HELD.pop(folder)
    try:
        os.close(held.fd)
    except OSError:
        pass


def release(output_dir: str | Path | None = None) -> None:
    """Unlock `output_dir` (every folder this process holds if None): its lock file goes, and
    so do the folders made for the run if nothing else was written in them."""
    folders = list(_HELD) if output_dir is None else [Path(output_dir).expanduser().absolute()]
    for folder in folders:
        held = _HELD.get(folder)
        if held is None:
            continue
        if _same_file(held.fd, held.lock):
            held.lock.unlink(missing_ok=True)  # before unlocking, so no one locks a doomed file
        _forget(folder)
        _remove_empty(held.created)


def _remove_empty(folders: list[Path]) -> None:
    for path in folders:  # deepest first; stop at the first that is not empty
        try:
            path.rmdir()
        except OSError:
            break


def held() -> list[Path]:
    """Folders this process holds."""
    return list(_HELD)


atexit.register(release)
