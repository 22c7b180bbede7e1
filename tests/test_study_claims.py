"""Claims that let several study processes share one output directory (lenvm_rl.study.claims): a live owner keeps
its claim, a dead one on this host loses it, another host's is never taken, and waiting ends when the owner goes."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from lenvm_rl.study import claims


def _sleeper():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _write_claim(path, pid, host=None):
    machine = claims._machine() if host is None else {"host": host, "boot": None, "pidns": None}
    path.write_text(json.dumps({**machine, "pid": pid, "since": 0.0}))


def test_a_claim_is_taken_once_and_released_by_its_owner(tmp_path):
    path = tmp_path / "run" / ".claim"
    assert claims.claim(path) and claims.claim(path)  # taking one's own claim again is a no-op
    assert claims.holder(path)["pid"] == os.getpid()
    assert [p.name for p in path.parent.iterdir()] == [".claim"]  # no draft or lock left beside it
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
    assert "another machine: not checked from here" in claims.describe(claims.holder(path))
    claims.release(path)  # not ours
    assert path.exists()


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


def test_a_claim_from_an_earlier_boot_of_this_host_is_stale(tmp_path):
    path = tmp_path / ".claim"
    machine = claims._machine()
    if machine["boot"] is None:
        pytest.skip("no boot id on this system")
    path.write_text(json.dumps({**machine, "boot": "an-earlier-boot", "pid": os.getpid(), "since": 0.0}))
    assert claims.holder(path) is None and claims.claim(path)


def test_a_zombie_or_a_reused_pid_does_not_hold_a_claim(tmp_path):
    path = tmp_path / ".claim"
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])

    def state():
        return (claims._read(f"/proc/{zombie.pid}/stat") or ") Z").rsplit(")", 1)[1].split()[0]

    while state() != "Z":  # exited, not yet reaped
        time.sleep(0.01)
    try:
        _write_claim(path, zombie.pid)
        assert claims.holder(path) is None
    finally:
        zombie.wait()
    # this very process, but recorded with another start time: the pid was reused
    path.write_text(json.dumps({**claims._machine(), "pid": os.getpid(), "started": "1", "since": 0.0}))
    assert claims.holder(path) is None
    path.write_text(json.dumps({**claims._machine(), "pid": None}))  # no pid at all
    assert claims.holder(path) is None


def test_held_releases_on_error(tmp_path):
    path = tmp_path / ".claim"
    with pytest.raises(RuntimeError), claims.held(path, "x"):
        raise RuntimeError("boom")
    assert not path.exists()


def test_processes_racing_for_a_stale_claim_get_it_once(tmp_path):
    path = tmp_path / ".claim"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_claim(path, dead.pid)
    go, done = tmp_path / "go", tmp_path / "done"
    # each racer imports, says it is ready, waits for the start, claims, and stays alive until every racer has
    # answered (a live winner's claim is not stale)
    script = ("import sys, time, pathlib\n"
              "from lenvm_rl.study.claims import claim\n"
              "claim_path, go, done = (pathlib.Path(arg) for arg in sys.argv[1:4])\n"
              "print('ready', flush=True)\n"
              "while not go.exists(): time.sleep(0.001)\n"
              "print(claim(claim_path), flush=True)\n"
              "while not done.exists(): time.sleep(0.01)\n")
    racers = [subprocess.Popen([sys.executable, "-c", script, str(path), str(go), str(done)], stdout=subprocess.PIPE,
                               text=True) for _ in range(4)]
    try:
        assert [racer.stdout.readline().strip() for racer in racers] == ["ready"] * 4
        go.touch()
        results = [racer.stdout.readline().strip() for racer in racers]
    finally:
        done.touch()
        for racer in racers:
            racer.wait(timeout=60)
    assert sorted(results) == ["False", "False", "False", "True"]
