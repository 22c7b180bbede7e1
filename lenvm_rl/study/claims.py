"""Claims that let several ``lenvm-rl study`` processes share one output directory: start the same command twice
(or on two machines over a shared disk) and each process takes the next run nobody holds, while the shared stages
(warm-up, critic, starting policy) run once; the others meanwhile run the runs that need none of them, then wait.

A claim is a file put in place with a hard link (atomic, and failing when the file exists, on a local or NFS disk)
that names its owner: the machine (host name, boot and pid namespace, so two containers on one host are two
machines), the pid with the process's start time (so a reused pid is not its owner) and when it was taken. A claim
whose owner is a dead or zombie process on this machine, or any process of an earlier boot of this host, is stale
and taken over, under a lock local to the machine (only this machine can take over its own stale claims); a claim
from another machine cannot be checked and counts as held until its file is removed.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["claim", "release", "holder", "acquire", "held", "describe"]

# seconds between looks at a claim another process holds on the shared stages
POLL_SECONDS = 30.0


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _machine() -> dict[str, str | None]:
    """What tells this machine apart: the host name, and on Linux the boot id and the pid namespace."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = None
    return {"host": socket.gethostname(), "boot": _read("/proc/sys/kernel/random/boot_id"), "pidns": namespace}


def _stat(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name (state first, start time at index 19), or None off Linux."""
    stat = _read(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[1].split() if stat else None


def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22), or None off Linux."""
    fields = _stat(pid)
    return fields[19] if fields else None


def _alive(pid: int, started: str | None) -> bool:
    """Whether ``pid`` is a running (not zombie) process that started at ``started`` (when recorded)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    fields = _stat(pid)
    if fields is not None:
        if fields[0] in ("Z", "X") or (started is not None and fields[19] != started):
            return False  # a zombie nobody reaped, or another process that got the pid
    return True


def _mine(owner: dict) -> bool:
    return {key: owner.get(key) for key in ("host", "boot", "pidns")} == _machine()


def holder(path: Path) -> dict | None:
    """The owner of the claim at ``path`` as written (``host``, ``pid``, ``since``...), or ``None`` when nobody holds
    it: no file, an unreadable one, or a dead owner on this machine. Another machine's claim is returned as held."""
    try:
        owner = json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    machine = _machine()
    if owner.get("host") == machine["host"] and None not in (owner.get("boot"), machine["boot"]) and (
            owner.get("boot") != machine["boot"]):
        return None  # this host rebooted since: every process of the boot that took it is gone
    if _mine(owner) and not _alive(int(owner.get("pid") or -1), owner.get("started")):
        return None
    return owner


def describe(owner: dict | None) -> str:
    """``owner`` in words, for messages: which process, where, and whether that can be checked from here."""
    if not owner:
        return "another process"
    where = "this machine" if _mine(owner) else f"{owner.get('host')} (another machine: not checked from here)"
    return f"process {owner.get('pid')} on {where}"


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """A lock (``flock``) local to this machine around the check-and-take of the claim at ``path``: taking over a
    stale claim is remove-then-link, and two processes must not both remove and both link. Only this machine takes
    over its own stale claims, so a local lock suffices (and needs no lock support from a shared disk); the kernel
    drops it when its process dies."""
    folder = Path(tempfile.gettempdir()) / "lenvm-rl-claims"
    folder.mkdir(exist_ok=True)
    key = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:32]
    fd = os.open(folder / f"{key}.lock", os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def claim(path: Path) -> bool:
    """Take the claim at ``path`` for this process; ``False`` when a live process holds it. A stale claim (its
    owner is a dead process on this machine) is removed and taken."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {**_machine(), "pid": os.getpid(), "started": _process_start(os.getpid()), "since": time.time()}
    # written whole to a private file, then linked into place: the link fails if the claim exists, and a claim
    # file is never seen half-written
    draft = path.with_name(f".{path.name}.{me['host']}.{me['pid']}")
    draft.write_text(json.dumps(me))
    try:
        with _exclusive(path):
            if path.exists():
                owner = holder(path)
                if owner is not None:  # held: by another live process, or already by this one
                    return _mine(owner) and owner.get("pid") == me["pid"]
                logger.info("taking over the stale claim %s", path)
                path.unlink(missing_ok=True)
            try:
                os.link(draft, path)
            except FileExistsError:  # another machine's process took it meanwhile
                return False
            except OSError as error:
                if error.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise OSError(error.errno, f"cannot claim {path}: its file system has no hard links, which "
                                               "several processes sharing an output directory need") from error
                raise
            return True
    finally:
        draft.unlink(missing_ok=True)


def release(path: Path) -> None:
    """Drop this process's claim at ``path`` (another owner's claim is left alone)."""
    path = Path(path)
    try:
        owner = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return
    if _mine(owner) and owner.get("pid") == os.getpid():
        path.unlink(missing_ok=True)


def acquire(path: Path, what: str, notify: Callable[[str], None] = logger.warning) -> None:
    """Take the claim at ``path``, waiting while a live process holds it (``notify`` says so once)."""
    waited = False
    while not claim(path):
        if not waited:
            notify(f"{what}: {describe(holder(path))} holds {path}; waiting for it (delete that file if the "
                   "process is gone)")
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
