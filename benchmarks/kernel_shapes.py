"""Shapes and settings shared by the parts of benchmarks/kernels_h200.py: the Llama-3-8B and
SmolLM2 projection shapes, the sparsity levels, the dtype of the bf16 runs; and the seeded
random-weight models that its decoding parts and benchmarks/scale_rehearsal.py build."""

from __future__ import annotations

import torch

LEVELS = (0.0, 0.25, 0.4, 0.5, 0.6, 0.7, 0.9)
E2E_LEVELS = (0.0, 0.25, 0.4, 0.5, 0.6, 0.7)
DTYPE = torch.bfloat16
LLAMA3_8B = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    tie_word_embeddings=False,
)
# the published Llama-3-70B config's sizes: for benchmarks/scale_extrapolation.py (meta device only)
LLAMA3_70B = LLAMA3_8B | dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64)


def random_model(config, device, dtype: torch.dtype, seed: int = 0):
    """The model of a transformers `config` on `device`, with seeded N(0, 0.02) weights and unit
    norms whatever the library's own initialisation did, in eval mode with gradients off."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.fill_(1.0) if name.endswith("norm.weight") else param.normal_(0.0, 0.02)
    return model.requires_grad_(False)


SMOLLM2 = dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3)


def layer_shapes(
    hidden_size: int, intermediate_size: int, num_attention_heads: int, num_key_value_heads: int, **_
) -> dict[str, tuple[int, int]]:
    """role -> (in, out) of the seven projections of a Llama-style block, from config fields."""
    kv = hidden_size // num_attention_heads * num_key_value_heads
    return {
        "q": (hidden_size, hidden_size),
        "k": (hidden_size, kv),
        "v": (hidden_size, kv),
        "o": (hidden_size, hidden_size),
        "gate": (hidden_size, intermediate_size),
        "up": (hidden_size, intermediate_size),
        "down": (intermediate_size, hidden_size),
    }


MODEL_SHAPES = {"llama3-8b": layer_shapes(**LLAMA3_8B), "smollm2-135m": layer_shapes(**SMOLLM2)}


def gemv_shapes() -> list[tuple[str, str, int, int]]:
    """(model, roles, in, out) for each distinct projection shape."""
    rows = []
    for model, shapes in MODEL_SHAPES.items():
        seen: dict[tuple[int, int], list[str]] = {}
        for role, shape in shapes.items():
            seen.setdefault(shape, []).append(role)
        rows += [(model, "/".join(roles), k, n) for (k, n), roles in seen.items()]
    return rows


def sweep_shapes() -> list[tuple[str, str, int, int]]:
    """The projection shapes, and the fused q/k/v and gate/up shapes."""
    fused = []
    for model, shapes in MODEL_SHAPES.items():
        fused.append((model, "qkv", shapes["q"][0], sum(shapes[r][1] for r in ("q", "k", "v"))))
        fused.append((model, "gate+up", shapes["gate"][0], 2 * shapes["gate"][1]))
    return gemv_shapes() + fused
