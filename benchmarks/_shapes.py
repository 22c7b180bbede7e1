"""Real model shapes for the benchmarks (built from configs in code: random init, no download) and the analytic
FLOPs of a critic forward against a causal-LM forward on the same backbone.

Per token, for a decoder with hidden size H, L layers, n_h query heads and n_kv key/value heads of size d, MLP width
I, vocabulary V and a context of S tokens (matrix multiplies count 2 FLOPs per multiply-add):

    attention projections  2·H·(n_h·d) [q] + 2·2·H·(n_kv·d) [k, v] + 2·(n_h·d)·H [o]
    attention scores       2·2·n_h·d·S                    (QKᵀ and AV over the S keys, as dense SDPA computes them)
    MLP (SwiGLU)           2·3·H·I
    LM head                2·H·V                          (the causal LM only)
    value head             2·(H·H + H)                    (the critic only: Linear(H, H) → SiLU → Linear(H, 1))

Norms, activations and embeddings are left out (a few percent at most).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Shape", "SHAPES", "smollm2_135m_config", "forward_flops_per_token", "analytic_critic_ratio",
           "print_analytic_table"]


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool


SHAPES = {
    "smollm2-135m": Shape("SmolLM2-135M", 576, 30, 9, 3, 64, 1536, 49152, True),
    "qwen2.5-0.5b": Shape("Qwen2.5-0.5B", 896, 24, 14, 2, 64, 4864, 151936, True),
    "qwen2.5-1.5b": Shape("Qwen2.5-1.5B", 1536, 28, 12, 2, 128, 8960, 151936, True),
    "qwen2.5-7b": Shape("Qwen2.5-7B", 3584, 28, 28, 4, 128, 18944, 152064, False),
}


def smollm2_135m_config():
    """A ``LlamaConfig`` with SmolLM2-135M's sizes (hidden 576, 30 layers, 9 heads, 3 KV heads, MLP 1536, vocabulary
    49,152, tied embeddings): 134.5M parameters, as the real checkpoint."""
    from transformers import LlamaConfig

    shape = SHAPES["smollm2-135m"]
    return LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                       num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                       num_key_value_heads=shape.kv_heads, head_dim=shape.head_dim, max_position_embeddings=8192,
                       rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=shape.tied,
                       bos_token_id=1, eos_token_id=2, pad_token_id=2)


def forward_flops_per_token(shape: Shape, context: int) -> dict[str, float]:
    """FLOPs per token of each part of a forward pass (module docstring) at a context of ``context`` tokens."""
    h, q, kv = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    per_layer = 2 * h * q + 2 * 2 * h * kv + 2 * q * h + 2 * 2 * shape.heads * shape.head_dim * context
    per_layer += 2 * 3 * h * shape.intermediate
    return {"layers": shape.layers * per_layer, "lm_head": 2.0 * h * shape.vocab, "value_head": 2.0 * (h * h + h)}


def analytic_critic_ratio(shape: Shape, context: int) -> tuple[float, float]:
    """``(critic FLOPs ÷ causal-LM FLOPs, LM-head share of the causal LM's FLOPs)`` per token."""
    parts = forward_flops_per_token(shape, context)
    causal = parts["layers"] + parts["lm_head"]
    return (parts["layers"] + parts["value_head"]) / causal, parts["lm_head"] / causal


def print_analytic_table(context: int) -> None:
    """One line per shape: LM-head share and critic ÷ causal-LM forward FLOPs at ``context`` tokens."""
    print(f"analytic FLOPs per token at a context of {context} tokens (critic = backbone + value head, "
          "causal LM = backbone + LM head):")
    for shape in SHAPES.values():
        ratio, head_share = analytic_critic_ratio(shape, context)
        print(f"  {shape.name:<13} vocab {shape.vocab:>6}: LM head {100 * head_share:4.1f}% of the causal LM; "
              f"critic / causal LM = {ratio:.3f}")
