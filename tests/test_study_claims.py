"""Claims that let several study processes share one output directory (lenvm_rl.study.claims): a live owner keeps
its claim, a dead one on this host loses it, another host's is never taken, and waiting ends when the owner goes."""

import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from lenvm_rl.study import claims


def _sleeper():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _write_claim(path, pid, host=None):
    path.write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid, "since": 0.0}))


def test_a_claim_is_taken_once_and_released_by_its_owner(tmp_path):
    path = tmp_path / "run" / ".claim"
    assert claims.claim(path) and claims.claim(path)  # taking one's own claim again is a no-op
    assert claims.holder(path)["pid"] == os.getpid()
    assert [p.name for p in path.parent.iterdir()] == [".claim"]  # no draft left behind
    claims.release(path)
    assert not path.exists() and claims.holder(path) is None


def test_a_live_owner_keeps_its_claim_and_a_dead_one_loses_it(tmp_path):
    path = tmp_path / ".claim"
    other = _sleeper()
    try:
        _write_claim(path, other.pid)
        assert not claims.claim(path)
        claims.release(path)  # not ours: left alone
        assert claims.holder(path)["pid"] == other.pid
    finally:
        other.kill()
        other.wait()
    assert claims.holder(path) is None  # its owner is gone: stale
    assert claims.claim(path) and claims.holder(path)["pid"] == os.getpid()


def test_another_hosts_claim_is_never_taken(tmp_path):
    path = tmp_path / ".claim"
    _write_claim(path, 1, host="some-other-machine")
    assert not claims.claim(path) and claims.holder(path)["host"] == "some-other-machine"


def test_acquire_waits_until_the_owner_is_gone(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "POLL_SECONDS", 0.05)
    path = tmp_path / ".setup.claim"
    other = _sleeper()
    _write_claim(path, other.pid)
    said = []
    timer = threading.Timer(0.5, lambda: (other.kill(), other.wait()))  # reaped: a zombie still answers kill 0
    timer.start()
    try:
        with claims.held(path, "shared stages", said.append):
            assert claims.holder(path)["pid"] == os.getpid()
            assert other.poll() is not None  # only after the owner died
    finally:
        timer.cancel()
        other.kill()
        other.wait()
    assert len(said) == 1 and f"process {other.pid}" in said[0] and "shared stages" in said[0]
    assert not path.exists()


def test_held_releases_on_error(tmp_path):
    path = tmp_path / ".claim"
    with pytest.raises(RuntimeError), claims.held(path, "x"):
        raise RuntimeError("boom")
    assert not path.exists()
