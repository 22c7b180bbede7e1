"""The README's Python snippets run as written (after the quick-start command made runs/tiny-policy)."""

import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from lenvm_rl import LengthValueModel
from lenvm_rl.tiny import save_tiny_causal_lm

README = Path(__file__).resolve().parent.parent / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_snippets():
    assert len(SNIPPETS) >= 2


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_snippet_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    policy = save_tiny_causal_lm(tmp_path / "runs" / "tiny-policy")
    critic = LengthValueModel.from_backbone(policy, gamma=0.95)
    critic.save_pretrained(tmp_path / "runs" / "tiny-critic")
    AutoTokenizer.from_pretrained(policy).save_pretrained(tmp_path / "runs" / "tiny-critic")
    namespace: dict = {}
    exec(compile(SNIPPETS[index], f"README.md snippet {index}", "exec"), namespace)
    # an exception fails the test; beyond that, every snippet must leave the objects it promises the reader
    assert any(not name.startswith("__") for name in namespace), "the snippet defined nothing"
