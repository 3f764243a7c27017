"""Tiny randomly initialised models of every supported architecture, built from configs.

They exercise the plumbing (hooks, adapters, perplexity arithmetic) in milliseconds, in the tests
and for anyone registering an adapter of their own. They are never a source of results: every
number sponlib reports comes from a real trained model. (`sponlib.sparsity.quantile_thresholds`
gives such a model exact thresholds without a calibration.)
"""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    Qwen2Config,
    Qwen3Config,
)

_CONFIGS: dict[str, type[PretrainedConfig]] = {
    "llama": LlamaConfig,
    "mistral": MistralConfig,
    "qwen2": Qwen2Config,
    "qwen3": Qwen3Config,
    "gemma3_text": Gemma3TextConfig,
}

TINY_ARCHITECTURES: tuple[str, ...] = tuple(_CONFIGS)

# Small enough for fast tests, large enough that every projection has a distinct shape:
# q (32->32), k/v (32->16 through 2 kv heads), gate/up (32->48), down (48->32).
_TINY_SIZES = dict(
    vocab_size=256,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=256,
)


def tiny_config(arch: str, **overrides) -> PretrainedConfig:
    """Config of a tiny model of `arch` (one of TINY_ARCHITECTURES); `overrides` win."""
    if arch not in _CONFIGS:
        raise ValueError(f"no tiny config for {arch!r}; choose from {', '.join(TINY_ARCHITECTURES)}")
    return _CONFIGS[arch](**{**_TINY_SIZES, **overrides})


def tiny_model(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A randomly initialised causal LM of `arch`, in eval mode, seeded for reproducibility."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **overrides), dtype=dtype)
    return model.eval()
