"""Atomic writes: a crash mid-save never leaves a half-written file where a reader expects a whole one."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["files_replaced_atomically", "directory_replaced_atomically", "write_text_atomically"]


@contextlib.contextmanager
def files_replaced_atomically(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a scratch directory next to ``target``; on success move each file written there into ``target``.

    Each file lands with ``os.replace`` (atomic on POSIX), so a crash leaves every file of ``target`` either old or
    new and never truncated; files of ``target`` not written this time (logs, a tokenizer, optimizer state) are kept.
    On an exception the scratch directory is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield scratch
        target.mkdir(parents=True, exist_ok=True)
        for source in sorted(scratch.rglob("*")):
            if source.is_dir():
                continue
            destination = target / source.relative_to(scratch)
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, destination)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def directory_replaced_atomically(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a scratch directory; on success it replaces ``target`` as a whole (for directories we own entirely,
    such as a saved dataset). The old directory is renamed aside first and deleted only after the new one is in
    place. On an exception ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield scratch
        if target.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, aside / target.name)
            os.replace(scratch, target)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
