"""docs/custom_loop.py — the README's "Using the critic in your own loop" — runs as written, on the quick start's
policy and critic, and does what it says: right masks, a finite loss, an updated policy. Also the two helpers it
uses, on hand-made tensors."""

import math
import runpy
import shutil

import pytest
import torch
from _tiny_quickstart import ROOT, run_tiny_quickstart
from transformers import AutoModelForCausalLM

from lenvm_rl.signals import completion_mask_from_ids, gate_by_success

SNIPPET = ROOT / "docs" / "custom_loop.py"


def test_completion_mask_from_raw_generate_output():
    eos, pad = 1, 0
    completion_ids = torch.tensor([
        [5, 6, eos, pad, pad],   # ended at position 2; generate padded the rest
        [5, 6, 7, 8, 9],         # no EOS: truncated at the limit, every token counts
        [eos, eos, eos, eos, eos],  # pad == EOS: only the first one belongs to the completion
        [5, 2, 6, 7, 2],         # a second EOS id
    ])
    mask, terminated = completion_mask_from_ids(completion_ids, [eos, 2])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]]
    assert terminated.tolist() == [True, False, True, True]
    mask, terminated = completion_mask_from_ids(completion_ids, eos)
    assert mask[3].tolist() == [1, 1, 1, 1, 1] and not terminated[3]
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        completion_mask_from_ids(completion_ids[0], [eos])
    with pytest.raises(ValueError, match="at least one EOS"):
        completion_mask_from_ids(completion_ids, [])


def test_gate_by_success_keeps_only_passing_rows():
    advantages = torch.arange(6.0).view(3, 2) - 2
    gated = gate_by_success(advantages, torch.tensor([1.0, 0.0, 0.99]), threshold=1.0)
    assert gated.tolist() == [[-2.0, -1.0], [0.0, 0.0], [0.0, 0.0]]
    assert gate_by_success(advantages, torch.tensor([0.5, 0.0, 0.7]), threshold=0.5)[0].tolist() == [-2.0, -1.0]
    with pytest.raises(ValueError, match=r"\(B,\)"):
        gate_by_success(advantages, torch.ones(2))
    with pytest.raises(ValueError, match="NaN"):
        gate_by_success(advantages, torch.tensor([1.0, float("nan"), 0.0]))


def test_custom_loop_snippet_runs_and_trains(tmp_path, monkeypatch):
    quickstart = run_tiny_quickstart()
    for name in ("tiny-policy", "tiny-critic"):
        shutil.copytree(quickstart / "runs" / name, tmp_path / "runs" / name)
    monkeypatch.chdir(tmp_path)
    before = {name: p.detach().clone()
              for name, p in AutoModelForCausalLM.from_pretrained("runs/tiny-policy").named_parameters()}

    namespace = runpy.run_path(str(SNIPPET), run_name="__main__")

    completion_ids, mask = namespace["completion_ids"], namespace["completion_mask"]
    eos = namespace["tokenizer"].eos_token_id
    for row, row_mask, ended in zip(completion_ids.tolist(), mask.tolist(), namespace["terminated"].tolist(),
                                    strict=True):
        length = row.index(eos) + 1 if eos in row else len(row)
        assert row_mask == [1] * length + [0] * (len(row) - length)
        assert ended == (eos in row)
    assert math.isfinite(namespace["loss"].item())
    # the policy moved: some step had non-zero advantages (the quick-start policy answers some prompts right; with a
    # random policy every reward is 0 and, with weight decay off, nothing would change)
    after = dict(namespace["policy"].named_parameters())
    assert any(not torch.equal(before[name], after[name]) for name in before)
    # the gate: rows whose answer was wrong got no length credit
    wrong = namespace["rewards"] < 1
    assert torch.all(namespace["length_advantages"][wrong] == 0)
