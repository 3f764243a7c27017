"""Listing norms: a block's RMSNorm swapped for one that lists its output's kept entries for the
fused projections it feeds (q/k/v after the input norm, gate/up after the post-attention norm)
as it makes that output, so that their launch reads ready lists (`listed_ops`) instead of
thresholding x itself: its programs start on kept rows, at sparsity 0.5 half of them have none
(docs/kernel_notes.md, v6 and v7).

    swap_in(model, thresholds, fuse=True)
    list_in(model)       every Llama-style norm before a fused group becomes a ListingRMSNorm
    list_out(model)      the model's own norms back (swap_out alone leaves the listing norms)

A group reads lists only for one token, the teal rule and a calibrated sparsity of 0.5 or more
(the tile band from which the listed GEMV pays); otherwise the norm runs as the model's own and
the group thresholds x as before. Results are those of the fused path to rounding.
"""

from __future__ import annotations

import operator

import torch
from torch import nn

from ..errors import UnsupportedArchitectureError
from ..models.adapters import decoder_layers, get_adapter
from . import listed_ops  # noqa: F401  (registers sponlib::rmsnorm_list)
from .module import FusedSparseLinear, SegmentOf
from .tiles import LIST_CHUNK

# Norms computed as w · (h / rms(h)) with the normed input rounded to h's dtype first
LISTABLE_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")
# The norm attribute of a decoder block that makes each fused group's input, by its first role
NORM_BEFORE = {"q": "input_layernorm", "gate": "post_attention_layernorm"}


class ListingRMSNorm(nn.Module):
    """Stands in for `norm`: the same output, and, when `group` will read lists, that output's
    lists for the group's thresholds, handed to the group with the output they belong to."""

    def __init__(self, norm: nn.Module, group: FusedSparseLinear, chunk: int = LIST_CHUNK):
        super().__init__()
        self.norm, self.group, self.chunk = norm, group, chunk
        self.eps = norm.variance_epsilon

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        group = self.group
        if h.numel() != h.shape[-1] or group.col_norm is not None or group.tile_band < 0.5:
            return self.norm(h)
        y, rows, vals, counts = torch.ops.sponlib.rmsnorm_list(
            h.reshape(-1), self.norm.weight, self.eps, group.tau, self.chunk
        )  # y (K,), lists (G, K) and (G, C)
        y = y.view_as(h)
        group.ready = (y, (rows, vals, counts, self.chunk))
        return y

    def extra_repr(self) -> str:
        return f"lists for {self.group.segments} in chunks of {self.chunk}"


def _group_of(module: nn.Module, name: str) -> FusedSparseLinear:
    if not isinstance(module, SegmentOf):
        raise UnsupportedArchitectureError(
            f"'{name}' is a {type(module).__name__}, not part of a fused group: call "
            "swap_in(model, thresholds, fuse=True) before list_in"
        )
    return module.fused


def list_in(model: nn.Module, chunk: int = LIST_CHUNK) -> nn.Module:
    """In place, on a model swapped in with fused groups: each block's input and post-attention
    norms become ListingRMSNorm modules for the q/k/v and gate/up groups they feed. Returns `model`."""
    roles = get_adapter(model).roles
    swaps = []
    for index, layer in enumerate(decoder_layers(model)):
        for first, attribute in NORM_BEFORE.items():
            norm = getattr(layer, attribute, None)
            if isinstance(norm, ListingRMSNorm):
                continue
            if type(norm).__name__ not in LISTABLE_NORMS:
                raise UnsupportedArchitectureError(
                    f"block {index} has {type(norm).__name__} at '{attribute}'; listing norms replace "
                    f"{', '.join(LISTABLE_NORMS)} only"
                )
            group = _group_of(operator.attrgetter(roles[first])(layer), f"block {index} {roles[first]}")
            swaps.append((layer, attribute, ListingRMSNorm(norm, group, chunk)))
    for layer, attribute, listing in swaps:  # checked first: a refused call changes nothing
        setattr(layer, attribute, listing)
    return model


def list_out(model: nn.Module) -> nn.Module:
    """In place: every ListingRMSNorm back to the norm it stands in for. Returns `model`."""
    for layer in decoder_layers(model):
        for attribute in NORM_BEFORE.values():
            module = getattr(layer, attribute, None)
            if isinstance(module, ListingRMSNorm):
                module.group.ready = None
                setattr(layer, attribute, module.norm)
    return model
