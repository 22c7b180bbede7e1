"""`lenvm-rl demo --quick` end to end: a smoke test of the study's every stage, whose report says so."""

import json

from lenvm_rl.cli import main
from lenvm_rl.scripts.demo import DEMO_METHODS


def test_quick_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--seed", "1", "--device", "cpu", "--threads", "1"]) == 0
    report = (out / "report.md").read_text()
    assert report.startswith("> **SMOKE TEST.**")  # the banner comes before any number
    assert "numbers mean nothing" in report.splitlines()[0]
    assert report.splitlines()[2].startswith("Headline: `lenvm/batch`")
    assert f"lenvm-rl demo --seed 1 --out {out} --quick" in report
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {row["variant"] for row in rows} == set(DEMO_METHODS)
    for row in rows:
        assert 0.0 <= row["accuracy"] <= 1.0 and row["mean_tokens"] > 0 and row["seed"] == 1
    assert (out / "accuracy_vs_tokens.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "stage wall times:" in printed and "warm-up" in printed


def test_bad_device_is_refused(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--device", "tpu"]) == 2
    assert "device must be auto, cpu or cuda" in capsys.readouterr().err
