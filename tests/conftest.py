"""Shared fixtures. Nothing here may reach a hub: offline mode is forced before transformers is imported, so an
accidental download fails loudly instead of hanging."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
# DeepSpeed's CPU backend JIT-builds its shared-memory all-reduce op under a file lock in the torch extensions
# directory; a build killed mid-way (a timeout, Ctrl-C) leaves the lock behind and every later DeepSpeed process
# waits on it forever. A directory of this session's own costs one build (about a minute) and cannot inherit a lock.
if "TORCH_EXTENSIONS_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["TORCH_EXTENSIONS_DIR"] = tempfile.mkdtemp(prefix="lenvm-rl-test-torch-extensions-")
    atexit.register(shutil.rmtree, os.environ["TORCH_EXTENSIONS_DIR"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

from lenvm_rl.tiny import build_tiny_tokenizer, save_tiny_causal_lm  # noqa: E402

# honour OMP_NUM_THREADS (the README's advice for busy machines); 2 threads otherwise
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 2))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    """One saved tiny causal LM (with tokenizer) per architecture, keyed by architecture name."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: save_tiny_causal_lm(root / arch, arch, seed=0) for arch in ("llama", "qwen2", "gpt2")}


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model_dirs):
    return tiny_model_dirs["llama"]


def make_synthetic_rollouts(output_dir, tokenizer, num_prompts=40, samples=4, seed=0, eval_fraction=0.25,
                            truncated_every=0):
    """A prompt family whose completion length is a known function of the prompt: the prompt ends with a digit d
    and every completion has 3·d + U{0..2} tokens (EOS counted). Saved with the real rollout writer."""
    import random

    from datasets import Dataset

    from lenvm_rl.rollout import save_rollouts

    rng = random.Random(seed)
    rows = []
    for prompt_index in range(num_prompts):
        digit = rng.randint(1, 9)
        noise = "".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 6)))
        text = tokenizer.apply_chat_template([{"role": "user", "content": f"{noise}#{digit}"}],
                                             add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for sample_index in range(samples):
            length = 3 * digit + rng.randint(0, 2)
            body = tokenizer("".join(rng.choice("xyz ") for _ in range(length - 1)), add_special_tokens=False)
            completion = body["input_ids"] + [tokenizer.eos_token_id]
            terminated = True
            if truncated_every and (len(rows) % truncated_every == truncated_every - 1):
                completion, terminated = completion[:-1], False
            rows.append({"prompt_index": prompt_index, "sample_index": sample_index, "prompt_ids": prompt_ids,
                         "completion_ids": completion, "terminated": terminated,
                         "completion_length": len(completion)})
    settings = {"synthetic": "3*digit+U{0..2}", "seed": seed}
    return save_rollouts(Dataset.from_list(rows), output_dir, tokenizer, settings, eval_fraction, seed)


@pytest.fixture()
def synthetic_rollouts():
    return make_synthetic_rollouts


@pytest.fixture()
def make_constant_critic(tiny_model_dir):
    """A factory of hand-built critics whose every value is `value` (γ = 0.9): zero head weights, and the head bias
    set to the logit of -value, so V = -sigmoid(z) = value at every position."""
    import math

    from lenvm_rl import LengthValueModel

    def build(value):
        critic = LengthValueModel.from_backbone(tiny_model_dir, gamma=0.9)
        with torch.no_grad():
            critic.head.summary.weight.zero_()
            critic.head.summary.bias.fill_(math.log(-value / (1 + value)))
        return critic

    return build


@pytest.fixture(autouse=True)
def _run_in_an_empty_directory(tmp_path_factory, monkeypatch):
    """Every test starts in an empty directory of its own: no test may depend on (or write into) the checkout's
    working directory, e.g. a `runs/` left by the README's quick start."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


def ppo_batch_by_hand(trainer, critic, output, reward):
    """What a critic-PPO batch's advantages are made from, recomputed outside the trainer from its output: the
    completion mask, which rows terminated, the task critic's values (head logits), the frozen LenVM critic's values
    (the shaping potential) and the reward on each terminated row's last token (a cut row is paid nothing)."""
    ids, mask = output["completion_ids"], output["completion_mask"]
    terminated = ((ids == trainer.processing_class.eos_token_id) & mask.bool()).any(dim=1)
    with torch.no_grad():
        task_values = trainer.task_critic.values_for_completions(output["prompt_ids"], output["prompt_mask"], ids,
                                                                 mask, read="logits")
        potential = critic.values_for_completions(output["prompt_ids"], output["prompt_mask"], ids, mask)
    texts = trainer.processing_class.batch_decode([i[m.bool()] for i, m in zip(ids, mask, strict=True)],
                                                  skip_special_tokens=True)
    lengths = mask.sum(dim=1)
    rewards = torch.zeros(mask.shape)
    rewards[torch.arange(len(ids)), lengths - 1] = torch.tensor(reward(texts))
    return mask, terminated, task_values, potential, rewards * terminated[:, None]
