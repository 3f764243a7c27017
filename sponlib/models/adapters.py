"""Architecture adapters: where each decoder block of a Hugging Face causal LM keeps its linear
projections, by role (q, k, v, o, gate, up, down).

Everything downstream (calibration, hooks, SPON, kernels, analysis) asks this module for the
projections instead of hard-coding module names, so a new architecture is one `Adapter` entry.
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass
from typing import Iterator, Mapping

from torch import nn

from ..errors import UnsupportedArchitectureError

ROLES: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")

# Projections that read the same input tensor. q/k/v read the normed residual, gate/up the
# post-attention normed residual; o and down each read their own. One threshold per group input.
INPUT_GROUPS: tuple[tuple[str, ...], ...] = (("q", "k", "v"), ("o",), ("gate", "up"), ("down",))

# The layout Llama introduced and most decoder-only families kept.
LLAMA_STYLE_ROLES: Mapping[str, str] = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}


@dataclass(frozen=True)
class Adapter:
    """How to find the projections of one family of architectures."""

    model_type: str  # config.model_type this adapter serves
    layers: str  # dotted path from the *ForCausalLM module to its ModuleList of decoder blocks
    roles: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(LLAMA_STYLE_ROLES))


@dataclass(frozen=True)
class Projection:
    """One linear projection of one decoder block."""

    block: int  # index of the decoder block
    role: str  # one of ROLES
    name: str  # full module name in model.named_modules(), e.g. "model.layers.3.mlp.up_proj"
    module: nn.Linear

    @property
    def in_features(self) -> int:
        return self.module.in_features

    @property
    def out_features(self) -> int:
        return self.module.out_features


_ADAPTERS: dict[str, Adapter] = {}


def register_adapter(adapter: Adapter) -> None:
    """Teach sponlib a new architecture (or override one). Roles must cover all of ROLES."""
    missing = set(ROLES) - set(adapter.roles)
    if missing:
        raise ValueError(f"adapter for {adapter.model_type!r} lacks roles {sorted(missing)}")
    _ADAPTERS[adapter.model_type] = adapter


for _adapter in (
    Adapter("llama", "model.layers"),
    Adapter("mistral", "model.layers"),
    Adapter("qwen2", "model.layers"),
    Adapter("qwen3", "model.layers"),
    Adapter("gemma3_text", "model.layers"),  # Gemma3ForCausalLM (text only, e.g. gemma-3-270m)
    Adapter("gemma3", "model.language_model.layers"),  # Gemma3ForConditionalGeneration
):
    register_adapter(_adapter)


def supported_model_types() -> list[str]:
    return sorted(_ADAPTERS)


def get_adapter(model: nn.Module) -> Adapter:
    """The adapter for `model`, from its config.model_type; a clear error when there is none."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in _ADAPTERS:
        arch = type(model).__name__
        raise UnsupportedArchitectureError(
            f"sponlib has no adapter for model_type={model_type!r} ({arch}). "
            f"Supported: {', '.join(supported_model_types())}. For a decoder whose blocks have "
            "separate q/k/v/o/gate/up/down linear layers, register one with "
            "sponlib.models.register_adapter(Adapter(model_type, layers_path, roles))."
        )
    return _ADAPTERS[model_type]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    adapter = get_adapter(model)
    try:
        layers = operator.attrgetter(adapter.layers)(model)
    except AttributeError as e:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} has model_type={adapter.model_type!r} but no "
            f"'{adapter.layers}' module list; is it a *ForCausalLM model?"
        ) from e
    return layers


def block_projections(model: nn.Module) -> list[dict[str, Projection]]:
    """For every decoder block, in order, its projections keyed by role."""
    adapter = get_adapter(model)
    module_names = {id(m): n for n, m in model.named_modules()}
    blocks = []
    for index, layer in enumerate(decoder_layers(model)):
        block = {}
        for role in ROLES:
            try:
                module = operator.attrgetter(adapter.roles[role])(layer)
            except AttributeError as e:
                raise UnsupportedArchitectureError(
                    f"block {index} of {type(model).__name__} has no '{adapter.roles[role]}' "
                    f"(role {role!r}); this adapter does not fit the model"
                ) from e
            if type(module).__name__ in ("SparseLinear", "SegmentOf"):  # sponlib.kernels, not imported here
                raise UnsupportedArchitectureError(
                    f"'{module_names[id(module)]}' is a {type(module).__name__}: sparse kernels are swapped into "
                    "this model; call sponlib.kernels.swap_out(model) first"
                )
            if not isinstance(module, nn.Linear):
                raise UnsupportedArchitectureError(
                    f"'{module_names[id(module)]}' is a {type(module).__name__}, not nn.Linear: "
                    "quantised or fused layers must be de-quantised/unfused first"
                )
            block[role] = Projection(index, role, module_names[id(module)], module)
        blocks.append(block)
    return blocks


def iter_projections(model: nn.Module) -> Iterator[Projection]:
    """All projections, block by block, in ROLES order."""
    for block in block_projections(model):
        yield from block.values()


def block_output(output):
    """The hidden states a decoder block returns: some families return a tensor, others a tuple
    whose first item it is. -> (B, T, d)"""
    return output[0] if isinstance(output, tuple) else output
