"""`lenvm-rl demo --quick` end to end: report, metrics and plots exist and hold numbers for every method."""

import json
import re

from lenvm_rl.cli import main
from lenvm_rl.scripts.demo import METHODS


def test_quick_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--seed", "1", "--device", "cpu"]) == 0
    report = (out / "report.md").read_text()
    assert "lenvm-rl demo --seed 1 --quick" in report
    for label, _ in METHODS.values():
        row = next(line for line in report.splitlines() if line.startswith(f"| {label} |"))
        numbers = re.findall(r"\d+\.\d+", row)
        assert len(numbers) >= 3 + 5, row  # accuracy, mean tokens, ratio, one length per difficulty
    metrics = json.loads((out / "metrics.json").read_text())
    assert {run["method"] for run in metrics["runs"]} == set(METHODS)
    for run in metrics["runs"]:
        assert 0.0 <= run["accuracy"] <= 1.0 and run["mean_tokens"] > 0
    assert 0 <= metrics["critic"]["prompt_mre"] and 0 <= metrics["critic"]["constant_mre"]
    for plot in ("accuracy_vs_length.png", "critic_calibration.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "report, metrics.json and plots written" in capsys.readouterr().out


def test_bad_device_is_refused(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--device", "tpu"]) == 2
    assert "device must be auto, cpu or cuda" in capsys.readouterr().err
