"""Value-guided decoding, hard length targets, cached candidate scoring and prompt-boundary length prediction."""

import json

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, LogitsProcessor, TopKLogitsWarper, TopPLogitsWarper

from lenvm_rl import LengthValueModel, LengthValueOutput, length_to_value
from lenvm_rl.cli import main
from lenvm_rl.decoding import (
    CachedCandidateScorer,
    LengthGuidedLogitsProcessor,
    LengthTarget,
    check_vocabulary,
    generated_lengths,
    guided_generate,
    parse_constraints,
    predict_length,
    score_candidates_uncached,
    tokenize_prompts,
)
from lenvm_rl.tiny import tiny_decoder_config

EOS, PAD = 1, 0


def _critic(model_dir, gamma=0.9, seed=0):
    """A tiny critic whose head is re-initialized wide enough that candidate values differ visibly."""
    critic = LengthValueModel.from_backbone(model_dir, gamma=gamma).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (critic.head.fc, critic.head.summary):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator))
    return critic


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


@pytest.fixture(scope="module")
def critics(tiny_model_dirs):
    return {arch: _critic(tiny_model_dirs[arch]) for arch in ("llama", "qwen2", "gpt2")}


def _left_padded_prompts(batch=3, width=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 100, (batch, width), generator=generator)
    mask = torch.ones_like(ids)
    for row in range(batch):
        mask[row, : row * 2] = 0  # row 0 unpadded, the others left-padded by 2, 4, ...
    return ids.masked_fill(mask == 0, PAD), mask


class OracleCritic(nn.Module):
    """Exact remaining lengths from a known plan: after token ``x``, ``plan[x]`` tokens remain (EOS counted).

    It wraps a real LengthValueModel and runs it, so the guided decoder's real code path — KV cache, 4-D candidate
    mask, cache cropping — is exercised; only the values it reports are replaced by the exact ones.
    """

    def __init__(self, critic: LengthValueModel, plan: torch.Tensor):
        super().__init__()
        self.inner = critic
        self.register_buffer("plan", plan.float())
        self.gamma = critic.gamma

    @property
    def backbone(self):
        return self.inner.backbone

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, input_ids, **kwargs):
        output = self.inner(input_ids=input_ids, **kwargs)
        values = length_to_value(self.plan[input_ids], self.gamma).float()
        return LengthValueOutput(value=values, logits=None, cache=output.cache)


def _countdown_plan(vocab_size, horizon=12):
    """Token ``10 + j`` promises ``1 + j % horizon`` more tokens; tokens 2..9 promise a long way (50)."""
    plan = torch.full((vocab_size,), 50.0)
    plan[EOS] = 0.0
    ids = torch.arange(10, vocab_size)
    plan[ids] = 1.0 + ((ids - 10) % horizon).float()
    return plan


# ---------------------------------------------------------------------------------------------------- tilting


def test_alpha_zero_is_the_base_candidate_distribution(critics, policy):
    ids, mask = _left_padded_prompts()
    scores = policy(input_ids=ids, attention_mask=mask).logits[:, -1, :].detach()
    for top_k, top_p in [(8, 1.0), (8, 0.5), (30, 0.9)]:
        processor = LengthGuidedLogitsProcessor(
            critics["llama"], alpha=0.0, top_k=top_k, top_p=top_p, eos_token_id=EOS, prompt_attention_mask=mask
        )
        tilted = torch.softmax(processor(ids, scores.clone()), dim=-1)
        # transformers' own warpers give the base distribution truncated to the same candidate set
        base = TopPLogitsWarper(top_p)(ids, TopKLogitsWarper(top_k)(ids, scores.clone()))
        torch.testing.assert_close(tilted, torch.softmax(base, dim=-1), atol=1e-6, rtol=1e-5)


def test_tilt_follows_p_times_exp_alpha_v(critics, policy):
    ids, mask = _left_padded_prompts()
    scores = policy(input_ids=ids, attention_mask=mask).logits[:, -1, :].detach()
    alpha = 3.0
    processor = LengthGuidedLogitsProcessor(
        critics["llama"], alpha=alpha, top_k=6, eos_token_id=EOS, prompt_attention_mask=mask
    )
    tilted = torch.softmax(processor(ids, scores.clone()), dim=-1)
    candidates = processor.last_candidates
    values = score_candidates_uncached(critics["llama"], ids, mask, candidates)
    values = values.masked_fill(candidates == EOS, 0.0)
    p = torch.softmax(scores, dim=-1).gather(1, candidates)
    expected = p * torch.exp(alpha * values)
    expected = expected / expected.sum(dim=-1, keepdim=True)
    torch.testing.assert_close(tilted.gather(1, candidates), expected, atol=1e-5, rtol=1e-4)
    assert torch.allclose(tilted.sum(dim=-1), torch.ones(3))


def test_large_alpha_picks_the_shortest_horizon_candidate(critics, policy):
    ids, mask = _left_padded_prompts()
    scores = policy(input_ids=ids, attention_mask=mask).logits[:, -1, :].detach()
    for alpha, pick in [(1e4, torch.argmax), (-1e4, torch.argmin)]:
        processor = LengthGuidedLogitsProcessor(
            critics["llama"], alpha=alpha, top_k=8, eos_token_id=EOS, prompt_attention_mask=mask
        )
        chosen = processor(ids, scores.clone()).argmax(dim=-1)
        values = score_candidates_uncached(critics["llama"], ids, mask, processor.last_candidates)
        assert values.max() - values.min() > 1e-3  # the candidates really differ
        expected = processor.last_candidates.gather(1, pick(values, dim=-1, keepdim=True)).squeeze(1)
        assert torch.equal(chosen, expected)


def test_eos_candidate_has_terminal_value_zero(critics, policy):
    ids, mask = _left_padded_prompts()
    scores = policy(input_ids=ids, attention_mask=mask).logits[:, -1, :].detach()
    scores[:, EOS] = scores.max() + 5.0  # EOS is the likeliest token: surely a candidate
    processor = LengthGuidedLogitsProcessor(critics["llama"], top_k=4, eos_token_id=EOS, prompt_attention_mask=mask)
    processor(ids, scores)
    is_eos = processor.last_candidates == EOS
    assert bool(is_eos.any(dim=1).all())
    assert bool((processor.last_candidate_values[is_eos] == 0).all())
    assert bool((processor.last_candidate_values[~is_eos] < 0).all())


# ---------------------------------------------------------------------------------------------------- hard targets


def test_oracle_equal_to_hits_the_target_exactly_and_follows_the_plan(critics, policy):
    vocab = policy.config.vocab_size
    plan = _countdown_plan(vocab)
    oracle = OracleCritic(critics["llama"], plan)
    ids, mask = _left_padded_prompts(batch=4)
    targets = [1, 2, 7, 13]
    out = guided_generate(
        policy, oracle, ids, mask, target=LengthTarget("equal_to", targets), top_k=vocab, eos_token_id=EOS,
        pad_token_id=PAD, max_new_tokens=20,
    )
    completions = out[:, ids.shape[1] :]
    lengths, terminated = generated_lengths(completions, EOS)
    assert lengths.tolist() == targets and bool(terminated.all())
    for row, target in enumerate(targets):
        # each chosen token promises exactly the tokens still owed after it: T - t - 1 (EOS counted)
        promised = plan[completions[row, : target - 1]].tolist()
        assert promised == [float(target - t - 1) for t in range(target - 1)]
        assert completions[row, target - 1] == EOS


def test_oracle_equal_to_with_a_small_candidate_set_still_lands_on_t(critics, policy):
    plan = _countdown_plan(policy.config.vocab_size, horizon=4)
    oracle = OracleCritic(critics["llama"], plan)
    ids, mask = _left_padded_prompts(batch=3)
    torch.manual_seed(0)
    out = guided_generate(policy, oracle, ids, mask, target=LengthTarget("equal_to", 9), top_k=8, eos_token_id=EOS)
    lengths, terminated = generated_lengths(out[:, ids.shape[1] :], EOS)
    assert lengths.tolist() == [9, 9, 9] and bool(terminated.all())


class PlanFollowingPolicy(LogitsProcessor):
    """Makes the tiny policy live in the oracle's world: the first token may be any planned token (horizon 1..H);
    after a token promising ``h`` more tokens only tokens promising ``h - 1`` are possible (EOS after ``h = 1``).
    Every completion then has length ``1 + h(x_0)``, so the oracle's values are the exact remaining lengths."""

    def __init__(self, plan, prompt_length, horizon):
        self.plan, self.prompt_length, self.horizon = plan, prompt_length, horizon

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] == self.prompt_length:
            allowed = (self.plan >= 1) & (self.plan <= self.horizon)
            allowed = allowed[None].expand_as(scores)
        else:
            last = self.plan[input_ids[:, -1]]
            allowed = self.plan[None, :] == (last[:, None] - 1)
            allowed[(last == 0) | (last > self.horizon)] = True  # finished rows (EOS/pad): generate pads them
        return scores.masked_fill(~allowed, -float("inf"))


def _plan_world(critics, policy, batch, horizon=12):
    plan = _countdown_plan(policy.config.vocab_size, horizon)
    plan[EOS], plan[PAD] = 0.0, 99.0
    ids, mask = _left_padded_prompts(batch=1)
    ids, mask = ids.repeat(batch, 1), mask.repeat(batch, 1)
    follow = PlanFollowingPolicy(plan, ids.shape[1], horizon)
    return OracleCritic(critics["llama"], plan), ids, mask, follow


def test_plan_world_is_consistent(critics, policy):
    oracle, ids, mask, follow = _plan_world(critics, policy, batch=16)
    torch.manual_seed(0)
    out = guided_generate(policy, oracle, ids, mask, top_k=16, eos_token_id=EOS, logits_processor=[follow],
                          max_new_tokens=20)
    completions = out[:, ids.shape[1] :]
    lengths, terminated = generated_lengths(completions, EOS)
    assert bool(terminated.all())
    assert lengths.tolist() == (1 + follow.plan[completions[:, 0]]).long().tolist()  # the oracle is exact
    assert int(lengths.max()) > 8  # unconstrained, many completions run past the targets used below


def test_oracle_at_most_respects_t_without_always_taking_the_shortest(critics, policy):
    oracle, ids, mask, follow = _plan_world(critics, policy, batch=16)
    torch.manual_seed(0)
    out = guided_generate(policy, oracle, ids, mask, target=LengthTarget("at_most", 8), top_k=16, eos_token_id=EOS,
                          logits_processor=[follow])
    lengths, terminated = generated_lengths(out[:, ids.shape[1] :], EOS)
    assert bool(terminated.all()) and int(lengths.max()) <= 8
    # lengths spread over the feasible range: sampled from p on the feasible set, not always the shortest (2)
    assert len(set(lengths.tolist())) >= 3 and float(lengths.float().mean()) > 3
    # α > 0 inside the feasible set shortens further
    torch.manual_seed(0)
    out = guided_generate(policy, oracle, ids, mask, target=LengthTarget("at_most", 8), alpha=30.0, top_k=16,
                          eos_token_id=EOS, logits_processor=[follow])
    shorter = generated_lengths(out[:, ids.shape[1] :], EOS)[0]
    assert int(shorter.max()) <= 8 and float(shorter.float().mean()) < float(lengths.float().mean())


def test_oracle_at_least_never_stops_early(critics, policy):
    oracle, ids, mask, follow = _plan_world(critics, policy, batch=16)
    torch.manual_seed(0)
    out = guided_generate(policy, oracle, ids, mask, target=LengthTarget("at_least", 8), top_k=16, eos_token_id=EOS,
                          logits_processor=[follow], max_new_tokens=20)
    lengths, terminated = generated_lengths(out[:, ids.shape[1] :], EOS)
    assert bool(terminated.all()) and int(lengths.min()) >= 8 and len(set(lengths.tolist())) >= 2


def test_oracle_equal_to_in_the_plan_world_needs_no_forcing(critics, policy):
    oracle, ids, mask, follow = _plan_world(critics, policy, batch=4)
    out = guided_generate(policy, oracle, ids, mask, target=LengthTarget("equal_to", [2, 5, 9, 13]), top_k=100,
                          eos_token_id=EOS, logits_processor=[follow], max_new_tokens=20)
    lengths, terminated = generated_lengths(out[:, ids.shape[1] :], EOS)
    assert lengths.tolist() == [2, 5, 9, 13] and bool(terminated.all())


def test_real_critic_targets_hold_with_batched_left_padding(critics, policy):
    ids, mask = _left_padded_prompts(batch=3)
    torch.manual_seed(0)
    for constraint, check in [
        ("equal_to", lambda n: n == 6),
        ("at_most", lambda n: n <= 6),
        ("at_least", lambda n: n >= 6),
    ]:
        out = guided_generate(
            policy, critics["llama"], ids, mask, target=LengthTarget(constraint, 6), eos_token_id=EOS, max_new_tokens=12
        )
        lengths, _ = generated_lengths(out[:, ids.shape[1] :], EOS)
        assert all(check(n) for n in lengths.tolist()), (constraint, lengths)


# ---------------------------------------------------------------------------------------------------- cached scoring


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_cached_scoring_equals_uncached(critics, arch):
    critic = critics[arch]
    ids, mask = _left_padded_prompts(batch=3)
    generator = torch.Generator().manual_seed(1)
    scorer = CachedCandidateScorer(critic)
    prefix_ids, prefix_mask = ids, mask
    new_ids, new_valid = ids, mask.bool()
    for step in range(5):
        candidates = torch.randint(2, 100, (3, 6), generator=generator)
        state_values, cached = scorer.score(new_ids, new_valid, candidates)
        with torch.no_grad():
            uncached = score_candidates_uncached(critic, prefix_ids, prefix_mask, candidates)
            full = critic(input_ids=prefix_ids, attention_mask=prefix_mask).value
        torch.testing.assert_close(cached, uncached, atol=2e-5, rtol=1e-4)
        live = prefix_mask[:, -1] == 1  # V(s_t) of a finished row is read at a padding token: meaningless
        torch.testing.assert_close(state_values[live, -1], full[live, -1], atol=2e-5, rtol=1e-4)
        assert cached.std() > 1e-3  # values are not all alike
        # next step: each row appends one of its candidates; row 2 "finished" after step 1 (its tokens are padding)
        new_ids = candidates[:, step : step + 1]
        new_valid = torch.ones(3, 1, dtype=torch.bool)
        if step >= 1:
            new_valid[2] = False
        prefix_ids = torch.cat([prefix_ids, new_ids], dim=1)
        prefix_mask = torch.cat([prefix_mask, new_valid.long()], dim=1)
    assert scorer.cache.get_seq_length() == prefix_ids.shape[1] - 1  # candidates never stay in the cache


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_cached_and_naive_guided_decoding_agree(tiny_model_dirs, critics, arch):
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[arch]).eval()
    ids, mask = _left_padded_prompts(batch=3)
    runs = [
        guided_generate(
            policy, critics[arch], ids, mask, alpha=2.0, top_k=5, do_sample=False, eos_token_id=EOS, scoring=scoring,
            max_new_tokens=8,
        )
        for scoring in ("cached", "naive")
    ]
    assert torch.equal(runs[0], runs[1])


# ---------------------------------------------------------------------------------------------------- prediction


def test_predict_length_applies_the_chat_template(critics, tiny_tokenizer):
    critic = critics["llama"]
    prompts = ["hi", "what is two plus two?", [{"role": "user", "content": "hey"}]]
    predicted = predict_length(critic, tiny_tokenizer, prompts, batch_size=2)
    assert predicted.shape == (3,) and bool((predicted > 0).all())
    text = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                              tokenize=False)
    ids = torch.tensor([tiny_tokenizer(text, add_special_tokens=False)["input_ids"]])
    torch.testing.assert_close(predicted[0], critic.predict_length(ids, torch.ones_like(ids))[0])
    # batching and padding do not change a prediction
    alone = predict_length(critic, tiny_tokenizer, prompts[1:2], batch_size=1)
    torch.testing.assert_close(predicted[1:2], alone, atol=1e-4, rtol=1e-4)
    raw = predict_length(critic, tiny_tokenizer, ["hi"], use_chat_template=False)
    assert not torch.allclose(raw, predicted[:1])


def test_tokenize_prompts_left_pads(tiny_tokenizer):
    ids, mask = tokenize_prompts(tiny_tokenizer, ["a", "abcdef"], use_chat_template=False)
    assert mask[:, -1].tolist() == [1, 1] and mask[0].tolist()[:5] == [0] * 5


# ---------------------------------------------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_clear_errors(tmp_path, critics, policy, tiny_tokenizer, tiny_model_dir):
    ids, mask = _left_padded_prompts(batch=2)
    with pytest.raises(ValueError, match="T must be ≥ 1"):
        LengthTarget("equal_to", 0)
    with pytest.raises(ValueError, match="T must be ≥ 1"):
        LengthTarget("at_most", [4, -2])
    with pytest.raises(ValueError, match="unknown length constraint 'exactly'"):
        LengthTarget("exactly", 5)
    with pytest.raises(ValueError, match="top_k"):
        LengthGuidedLogitsProcessor(critics["llama"], top_k=0, eos_token_id=EOS)
    with pytest.raises(ValueError, match="eos_token_id is required"):
        LengthGuidedLogitsProcessor(critics["llama"])
    with pytest.raises(ValueError, match="cannot reach the equal_to target T=10"):
        guided_generate(policy, critics["llama"], ids, mask, target=LengthTarget("equal_to", 10), max_new_tokens=5,
                        eos_token_id=EOS)
    with pytest.raises(ValueError, match="num_beams=1"):
        guided_generate(policy, critics["llama"], ids, mask, eos_token_id=EOS, num_beams=2)
    with pytest.raises(ValueError, match="pass typical_p to guided_generate"):
        guided_generate(policy, critics["llama"], ids, mask, eos_token_id=EOS, typical_p=0.9)
    with pytest.raises(ValueError, match="unknown length constraint"):
        parse_constraints("equal_to:5,roughly:7")
    # a critic on another vocabulary
    small_dir = tmp_path / "small-vocab"
    config = tiny_decoder_config("llama", vocab_size=50)
    AutoModelForCausalLM.from_config(config).save_pretrained(small_dir)
    foreign = LengthValueModel.from_backbone(small_dir, gamma=0.9)
    with pytest.raises(ValueError, match="critic vocabulary mismatch"):
        guided_generate(policy, foreign, ids, mask, eos_token_id=EOS)
    with pytest.raises(ValueError, match="critic vocabulary mismatch"):
        check_vocabulary(policy.config.vocab_size, foreign, tiny_tokenizer)
    check_vocabulary(policy.config.vocab_size + 64, critics["llama"], tiny_tokenizer)  # padded policy table: fine
    # a target needs γ
    no_gamma = LengthValueModel.from_backbone(tiny_model_dir)
    with pytest.raises(ValueError, match="no gamma"):
        LengthGuidedLogitsProcessor(no_gamma, eos_token_id=EOS, target=LengthTarget("at_most", 3))


# ---------------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def critic_dir(tmp_path_factory, tiny_model_dir):
    path = tmp_path_factory.mktemp("critic")
    _critic(tiny_model_dir, gamma=0.95).save_pretrained(path)
    return path


def test_predict_length_cli_writes_predictions(tmp_path, critic_dir):
    data = tmp_path / "prompts.jsonl"
    rows = [{"question": "hi", "lengths": [3, 5, 9]}, {"question": "tell me more", "lengths": 12}]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out" / "pred.jsonl"
    code = main(["predict-length", "--critic", str(critic_dir), "--dataset", str(data), "--prompt_column", "question",
                 "--output_file", str(out), "--lengths_column", "lengths"])
    assert code == 0
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["question"] for row in written] == ["hi", "tell me more"]
    assert all(row["predicted_length"] > 0 and -1 < row["predicted_value"] < 0 for row in written)
    assert written[1]["value_space_length"] == pytest.approx(12.0)
    assert written[0]["value_space_length"] < (3 + 5 + 9) / 3  # value space sits below the raw mean (Jensen)


def test_predict_length_cli_names_a_missing_column(tmp_path, critic_dir, capsys):
    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps({"text": "hi"}) + "\n")
    code = main(["predict-length", "--critic", str(critic_dir), "--dataset", str(data),
                 "--output_file", str(tmp_path / "o.jsonl")])
    assert code == 2 and "no column 'prompt'" in capsys.readouterr().err


def test_eval_length_control_cli_reports_both_runs(tmp_path, tiny_model_dir, critic_dir, capsys):
    report = tmp_path / "report.json"
    code = main(["eval-length-control", "--policy", str(tiny_model_dir), "--critic", str(critic_dir),
                 "--constraints", "equal_to:5,at_most:5,at_least:5", "--num_prompts", "2", "--samples_per_prompt", "1",
                 "--output_file", str(report)])
    assert code == 0
    assert "guided dev%" in capsys.readouterr().out
    results = {entry["constraint"]: entry for entry in json.loads(report.read_text())["results"]}
    assert set(results) == {"equal_to", "at_most", "at_least"}
    assert results["equal_to"]["guided"]["mean_score"] == pytest.approx(100.0)
    assert results["at_most"]["guided"]["satisfied"] == 1.0 and results["at_least"]["guided"]["satisfied"] == 1.0
    assert "mean_abs_deviation_pct" in results["equal_to"]["unguided"]


def test_cli_rejects_an_unknown_constraint(tmp_path, tiny_model_dir, critic_dir, capsys):
    code = main(["eval-length-control", "--policy", str(tiny_model_dir), "--critic", str(critic_dir),
                 "--constraints", "about:5"])
    assert code == 2 and "unknown length constraint 'about'" in capsys.readouterr().err
