"""Claims that let several ``lenvm-rl study`` processes share one output directory: start the same command twice
(or on two machines over a shared disk) and each process takes the next run nobody holds, while the shared stages
(warm-up, critic, starting policy) run once and the others wait for them.

A claim is a file put in place with a hard link (atomic, and failing when the file exists, on a local or NFS disk)
that holds the owner's host, pid and start time. A claim whose owner is a dead process on this host is stale and
taken over; a claim from another host cannot be checked and counts as held until its file is removed.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["claim", "release", "holder", "acquire", "held"]

# seconds between looks at a claim another process holds on the shared stages
POLL_SECONDS = 30.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def holder(path: Path) -> dict | None:
    """The live owner of the claim at ``path`` (``{"host", "pid", "since"}``), or ``None`` when nobody holds it: no
    file, an unreadable one, or a dead owner on this host."""
    try:
        owner = json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if owner.get("host") == socket.gethostname() and not _alive(int(owner.get("pid", -1))):
        return None
    return owner


def claim(path: Path) -> bool:
    """Take the claim at ``path`` for this process; ``False`` when a live process holds it. A stale claim (its
    owner is a dead process on this host) is removed and taken."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
    # written whole to a private file, then linked into place: the link fails if the claim exists, and a claim
    # file is never seen half-written
    draft = path.with_name(f".{path.name}.{me['host']}.{me['pid']}")
    draft.write_text(json.dumps(me))
    try:
        for _ in range(2):  # a second try after clearing a stale claim
            try:
                os.link(draft, path)
            except FileExistsError:
                owner = holder(path)
                if owner is not None:  # held: by another live process, or already by this one
                    return (owner.get("host"), owner.get("pid")) == (me["host"], me["pid"])
                logger.info("taking over the stale claim %s", path)
                path.unlink(missing_ok=True)
                continue
            return True
        return False
    finally:
        draft.unlink(missing_ok=True)


def release(path: Path) -> None:
    """Drop this process's claim at ``path`` (another owner's claim is left alone)."""
    path = Path(path)
    try:
        owner = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return
    if owner.get("host") == socket.gethostname() and owner.get("pid") == os.getpid():
        path.unlink(missing_ok=True)


def acquire(path: Path, what: str, notify: Callable[[str], None] = logger.warning) -> None:
    """Take the claim at ``path``, waiting while a live process holds it (``notify`` says so once)."""
    waited = False
    while not claim(path):
        if not waited:
            owner = holder(path) or {}
            notify(f"{what}: process {owner.get('pid')} on {owner.get('host')} holds {path}; waiting for it "
                   "(delete that file if the process is gone)")
            waited = True
        time.sleep(POLL_SECONDS)


@contextmanager
def held(path: Path, what: str, notify: Callable[[str], None] = logger.warning) -> Iterator[None]:
    """Hold the claim at ``path`` for the ``with`` block (:func:`acquire`); released on the way out, error or not."""
    acquire(path, what, notify)
    try:
        yield
    finally:
        release(path)
