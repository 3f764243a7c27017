"""Export a model with its SPON vectors folded into biases as a plain Hugging Face checkpoint.

The folded model needs no sponlib to load: the config switches the biases on (Llama's
`attention_bias` / `mlp_bias`, Qwen3's `attention_bias`, ...) and the weights carry b' = b + W α.
Run dense it is a slightly shifted model; run under the thresholds it was trained with (copied
into the folder as `sparsity_thresholds.json`, for sponlib's Sparsifier or a sparse kernel) it
gives the SPON model's logits. A config that cannot give every projection with a vector a bias
(Mistral's, or Qwen2's o_proj) is refused before anything is written.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from ..errors import InvalidArgumentError, UnsupportedArchitectureError
from ..io import atomic_directory
from ..models.adapters import iter_projections
from ..sparsity.thresholds import Thresholds
from .vectors import SponVectors, ensure_bias

# Config switches that give a group of projections biases, in the families that have them.
BIAS_FLAGS: dict[str, tuple[str, ...]] = {"attention_bias": ("q", "k", "v", "o"), "mlp_bias": ("gate", "up", "down")}

THRESHOLDS_FILE = "sparsity_thresholds.json"


def bias_config(model: nn.Module, vectors: SponVectors):
    """A copy of the model's config with biases switched on for every group that has a vector,
    checked by building the model on the meta device: every projection with a vector must get a
    bias there. Raises UnsupportedArchitectureError otherwise."""
    config = copy.deepcopy(model.config)
    roles = {p.role for p in iter_projections(model) if p.name in vectors.alphas}
    for flag, group in BIAS_FLAGS.items():
        if roles & set(group) and hasattr(config, flag):
            setattr(config, flag, True)
    with torch.device("meta"):
        probe = AutoModelForCausalLM.from_config(config)
    lacking = [p.name for p in iter_projections(probe) if p.name in vectors.alphas and p.module.bias is None]
    if lacking:
        flags = [f for f in BIAS_FLAGS if hasattr(config, f)]
        raise UnsupportedArchitectureError(
            f"a {type(model).__name__} config cannot give {len(lacking)} projections a bias (e.g. {lacking[0]}; "
            f"bias switches it has: {', '.join(flags) or 'none'}), so the folded vectors have nowhere to go in "
            "a plain checkpoint. Keep the model and the SPON file (sponlib applies the vectors at run time), "
            "or train SPON only on roles whose biases this config can express (--roles)."
        )
    return config, probe


def cpu_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` on the CPU, each parameter and buffer copied there directly: a copy
    made where the model is and then moved would hold a second model on its device for a while
    (16 GB more for an 8B model in bf16). Tied weights stay tied."""
    memo: dict[int, torch.Tensor] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        on_cpu = tensor.detach().to("cpu", copy=True)
        memo[id(tensor)] = nn.Parameter(on_cpu, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else on_cpu
    return copy.deepcopy(model, memo)


def fold_and_export(
    model: nn.Module, tokenizer, vectors: SponVectors, thresholds: Thresholds | None, out_dir: str | os.PathLike
) -> Path:
    """Write a Hugging Face folder (config, safetensors weights, tokenizer) of `model` with
    `vectors` folded into its biases, plus the thresholds and the SPON provenance. The folder
    appears complete or not at all. Returns its path."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (
        not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / "sponlib_spon.json").is_file())
    ):
        raise InvalidArgumentError(
            f"{out_dir} exists and is not an earlier export; name a new folder (an export replaces the whole folder)"
        )
    vectors.check_model(model, "the SPON vectors")
    config, probe = bias_config(model, vectors)
    folded = cpu_copy(model)
    vectors.fold_into(folded)
    # Projections in a switched-on group without a vector of their own still need a (zero) bias,
    # or the checkpoint would not match its config.
    expects_bias = {p.name for p in iter_projections(probe) if p.module.bias is not None}
    for p in iter_projections(folded):
        if p.name in expects_bias:
            ensure_bias(p.module)
    folded.config = config
    with atomic_directory(out_dir) as tmp:
        folded.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if thresholds is not None:
            thresholds.save(Path(tmp) / THRESHOLDS_FILE)
        provenance = {
            key: vectors.meta[key] for key in ("method", "target", "roles", "thresholds") if key in vectors.meta
        }
        (Path(tmp) / "sponlib_spon.json").write_text(
            json.dumps(
                {
                    "note": "SPON vectors folded into biases, b' = b + W alpha; run with the thresholds in "
                    f"{THRESHOLDS_FILE} to reproduce the SPON model",
                    **provenance,
                },
                indent=2,
            )
            + "\n"
        )
    return out_dir
