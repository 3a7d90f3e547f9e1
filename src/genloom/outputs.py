"""Where commands write: the guards that keep every output from replacing what genloom did not write.

Every command that writes an output directory or file goes through these checks, so a mistyped `--out` can
never destroy a run, a checkpoint or a folder of someone's files:

- a directory output may be new, empty, or this command's own earlier output (each writer says what that is:
  a checkpoint, a Hugging Face export, a folder of generated images, a run); anything else is refused;
- a path that names a file where a directory belongs (or the reverse) is refused by name;
- a file output that exists is replaced only when the user says so (`--overwrite`).

Files are written with the permissions the umask gives any other file; `tempfile.mkdtemp` alone would make
every checkpoint directory 0700, unreadable to the group that shares a machine. The renames that publish an
output hold Ctrl-C and SIGTERM until they are done (`interruptions_deferred`).
"""

from __future__ import annotations

import os
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from genloom.errors import GenloomError

IsOwn = Callable[[Path], bool]
_INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def interruptions_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them to the handlers they would have reached.

    For the few renames that replace an output: stopped between them, a run would be left with its earlier
    checkpoint moved aside and the new one not yet in place. Only the main thread receives Python's signals, so
    elsewhere this does nothing; a handler installed outside Python is left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {s: signal.getsignal(s) for s in _INTERRUPTS}
    swapped = [s for s, handler in previous.items() if handler is not None]
    for s in swapped:
        signal.signal(s, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for s in swapped:
            signal.signal(s, previous[s])
        for signum in dict.fromkeys(held):
            signal.raise_signal(signum)  # the restored handler runs now: KeyboardInterrupt, genloom's Terminated, ...


def check_output_dir(path: Path, is_own: IsOwn, what: str) -> None:
    """Refuse `path` as an output directory unless it is new, empty, or `is_own(path)` (the writer's own earlier
    output, which it may replace); `what` names that output in the message ("a genloom checkpoint")."""
    if path.exists() and not path.is_dir():
        raise GenloomError(f"{path} is a file, not a directory; choose another output directory")
    if path.is_dir() and any(path.iterdir()) and not is_own(path):
        raise GenloomError(f"{path} is not empty and is not {what}; it is left as it is: choose a new or empty "
                           "directory")


def check_output_file(path: Path, overwrite: bool) -> None:
    """Refuse `path` as an output file when it is a directory, or exists and `overwrite` is not set."""
    if path.is_dir():
        raise GenloomError(f"{path} is a directory; give a file name")
    if path.exists() and not overwrite:
        raise GenloomError(f"{path} exists; pass --overwrite to replace it, or choose another file")


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(directory: Path) -> None:
    """Give `directory` and everything in it the modes a plain mkdir / open would have (0777 / 0666 & ~umask)."""
    mask = current_umask()
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            os.chmod(Path(root) / name, 0o777 & ~mask)
        for name in files:
            path = Path(root) / name
            executable = os.stat(path).st_mode & stat.S_IXUSR
            os.chmod(path, (0o777 if executable else 0o666) & ~mask)
    os.chmod(directory, 0o777 & ~mask)


def write_text_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary sibling, so a crash leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
