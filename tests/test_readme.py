"""The Python snippets of README.md and of every docs/*.md page run as written (after the quick-start command made
runs/tiny-policy)."""

import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from lenvm_rl import LengthValueModel
from lenvm_rl.tiny import save_tiny_causal_lm

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# (page relative to the repository root, index of the snippet in that page) -> snippet source
SNIPPETS = {
    (page.relative_to(ROOT).as_posix(), index): code
    for page in PAGES
    for index, code in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S))
}


def test_readme_has_snippets():
    assert len(SNIPPETS) >= 2


@pytest.mark.parametrize(("path", "index"), list(SNIPPETS), ids=[f"{path}-{index}" for path, index in SNIPPETS])
def test_readme_snippet_runs(path, index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    policy = save_tiny_causal_lm(tmp_path / "runs" / "tiny-policy")
    critic = LengthValueModel.from_backbone(policy, gamma=0.95)
    critic.save_pretrained(tmp_path / "runs" / "tiny-critic")
    AutoTokenizer.from_pretrained(policy).save_pretrained(tmp_path / "runs" / "tiny-critic")
    namespace: dict = {}
    exec(compile(SNIPPETS[path, index], f"{path} snippet {index}", "exec"), namespace)
    # an exception fails the test; beyond that, every snippet must leave the objects it promises the reader
    assert any(not name.startswith("__") for name in namespace), "the snippet defined nothing"
