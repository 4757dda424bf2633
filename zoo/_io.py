"""Atomic file writes: the one way the zoo replaces a file (checkpoints, exports, metrics, reports, caches).

:func:`atomic_write` writes into a temporary file in the target's directory, flushes and fsyncs it, renames it
onto the target with ``os.replace`` and fsyncs the directory. A reader, or a process that starts after a crash,
sees either the previous content of the target or the new content, never a mix or a truncated file.

Only the standard library is imported here, so that ``zoo.data`` and ``zoo.training`` can both use this module
without importing each other (or torch, or timm).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write"]


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where a directory cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, content: bytes | str | Callable[[BinaryIO], object]) -> Path:
    """Replace the file ``path`` with ``content`` atomically; return ``path`` as a Path.

    Args:
        path: the file to write; missing parent directories are created.
        content: the bytes to write, a str (written as UTF-8), or a function that writes into the binary file
            object it is given (``lambda f: torch.save(state, f)``, ``lambda f: fig.savefig(f, format="png")``).

    The content goes to a temporary file ``.<name>.tmp-<pid>-<random>`` beside the target (the same file system,
    so the rename is atomic), created with the permissions a plain ``open`` would give (0o666 less the umask); it
    is flushed, fsynced, renamed onto ``path`` with ``os.replace`` and the directory is fsynced. When writing or
    renaming fails (any exception, ``KeyboardInterrupt`` included) the temporary file is removed and the error
    propagates: ``path`` keeps its previous content, or still does not exist. A process killed outright (SIGKILL,
    power loss) may leave the temporary file behind, never a partial ``path``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "xb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    _fsync_dir(target.parent)
    return target
