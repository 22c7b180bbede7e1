"""LenVM-GRPO across processes (torchrun, CPU DDP) and under DeepSpeed ZeRO-3 (single process on CPU)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from lenvm_rl import LengthValueModel

WORKER = Path(__file__).parent / "scripts" / "grpo_worker.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def workdir(tmp_path, tiny_model_dir):
    (tmp_path / "policy").symlink_to(tiny_model_dir)
    torch.manual_seed(0)
    LengthValueModel.from_backbone(tiny_model_dir, gamma=0.95).save_pretrained(tmp_path / "critic")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "critic")
    return tmp_path


def run(command, env_extra, workdir):
    env = {**os.environ, **env_extra, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, env=env, cwd=workdir, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return [json.loads(path.read_text()) for path in sorted(workdir.glob("rank*.json"))]


def test_two_processes_with_whitening_from_both(workdir):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(WORKER), str(workdir), "--whiten"]
    ranks = run(command, {"ACCELERATE_USE_CPU": "true"}, workdir)
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert all(r["global_step"] == 2 for r in ranks)
    for batch in range(len(ranks[0]["records"])):
        local = [torch.tensor(r["records"][batch]["whitened"]) for r in ranks]
        joint = torch.cat(local)
        # statistics come from both processes: jointly standardized, not per process
        assert abs(float(joint.mean())) < 1e-4 and abs(float(joint.std(unbiased=False)) - 1) < 1e-3
        raw = [torch.tensor(r["records"][batch]["raw"]) for r in ranks]
        joint_raw = torch.cat(raw)
        expected = (raw[0] - joint_raw.mean()) / joint_raw.std(unbiased=False)
        torch.testing.assert_close(local[0], expected, atol=1e-4, rtol=1e-4)
    assert "length/advantage/mean" in ranks[0]["logged_keys"]


def test_two_processes_gate_and_relative_units_use_joint_group_statistics(workdir):
    """Groups of 8 completions split 4 + 4 across the processes; the gate's pass flags and the group and batch
    statistics of the relative length term must be computed on the joint batch, and each process keep its slice."""
    from lenvm_rl import relative_length_advantages

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(WORKER), str(workdir), "--relative-gated"]
    ranks = run(command, {"ACCELERATE_USE_CPU": "true"}, workdir)
    assert all(r["global_step"] == 2 for r in ranks)
    batches = len(ranks[0]["records"])
    assert batches >= 1 and batches == len(ranks[1]["records"])
    mixed = False
    for batch in range(batches):
        records = [r["records"][batch] for r in ranks]
        width = max(len(rec["completion_mask"][0]) for rec in records)

        def padded(key, fill_width, records=records):
            rows = [row + [0.0] * (fill_width - len(row)) for rec in records for row in rec[key]]
            return torch.tensor(rows, dtype=torch.float64)

        values, mask = padded("values", width + 1), padded("completion_mask", width).long()
        terminated = torch.tensor([t for rec in records for t in rec["terminated"]])
        passed = torch.tensor([p for rec in records for p in rec["passed"]])
        mixed |= bool(passed.any() and not passed.all())
        expected = relative_length_advantages(values, mask, 0.95, group_size=8, lam=0.5, terminated=terminated,
                                              passed=passed)
        got = padded("advantages", width)
        torch.testing.assert_close(got.float(), expected.float(), atol=1e-4, rtol=1e-4)
    assert mixed, "the gate should pass some completions and fail others"
    assert "length/gate_pass_fraction" in ranks[0]["logged_keys"]


def test_deepspeed_zero3_single_process_shards_the_critic(workdir):
    pytest.importorskip("deepspeed")
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "LOCAL_RANK": "0",
           "WORLD_SIZE": "1", "DS_ACCELERATOR": "cpu"}
    (rank,) = run([sys.executable, str(WORKER), str(workdir), "--deepspeed-zero3"], env, workdir)
    assert rank["global_step"] == 2
    assert rank["critic_type"] == "DeepSpeedEngine" and rank["critic_partitioned"]
    assert "critic/predicted_length" in rank["logged_keys"]
