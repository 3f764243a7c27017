"""Capture what a model computes on some tokens: the residual stream after every block and the input
of every projection. (What the head reads off a residual state, the "logit lens", is
`sponlib.models.lens_logprobs`.)

    dense = capture(model, ids)                        # dense model
    with Sparsifier(model, thresholds):                # masked (add alphas= for SPON)
        masked = capture(model, ids, tokens=dense.tokens)
    masked["blocks.5.resid_post"]                      # (N, d) float32 (float64 models: float64) on the CPU

Names:
    blocks.0.resid_pre                the residual stream entering block 0 (the embeddings)
    blocks.<i>.resid_post             the residual stream leaving block i
    blocks.<i>.<module path>.in       the input of a projection, e.g. blocks.5.mlp.down_proj.in,
                                      as it reaches the projection, before any mask
Projections that read one tensor (q/k/v, gate/up) share one captured tensor under their names.

Memory is bounded by the token selection: only the chosen (window, position) pairs are kept, as
float32 on the CPU (float64 for a model that computes in float64), whatever device the model
runs on. Capture hooks run before any other pre-hook (e.g. a Sparsifier's mask), so projection
inputs are the states the mask is applied to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InvalidArgumentError
from ..models.adapters import INPUT_GROUPS, ROLES, block_output, block_projections, decoder_layers, get_adapter
from ..models.hooks import HookSet
from ..models.placement import input_device


def resid_name(block: int, where: str = "post") -> str:
    return f"blocks.{block}.resid_{where}"


def input_name(model, block: int, role: str) -> str:
    """Readable name of a projection's input: blocks.<i>.<module path>.in."""
    return f"blocks.{block}.{get_adapter(model).roles[role]}.in"


def select_tokens(
    batch: int, length: int, max_tokens: int | None = None, skip_first: int = 0, seed: int = 0
) -> torch.Tensor:
    """Which (window, position) pairs to keep: every position from `skip_first` on, or a seeded
    random subset of `max_tokens` of them, in reading order. -> (N, 2) long."""
    if not 0 <= skip_first < length:
        raise InvalidArgumentError(
            f"skip_first must be in [0, {length}) for windows of {length} tokens; got {skip_first}"
        )
    windows, positions = torch.meshgrid(torch.arange(batch), torch.arange(skip_first, length), indexing="ij")
    pairs = torch.stack([windows.reshape(-1), positions.reshape(-1)], dim=1)  # (B * (L - skip), 2)
    if max_tokens is not None and max_tokens < len(pairs):
        if max_tokens < 1:
            raise InvalidArgumentError(f"max_tokens must be at least 1; got {max_tokens}")
        generator = torch.Generator().manual_seed(seed)
        chosen = torch.randperm(len(pairs), generator=generator)[:max_tokens].sort().values
        pairs = pairs[chosen]
    return pairs


@dataclass
class Capture:
    """States captured on one forward pass (or several batches of one)."""

    states: dict[str, torch.Tensor]  # name -> (N, d) float32 (float64 for a float64 model), CPU
    tokens: torch.Tensor  # (N, 2): window index and position of each captured row
    n_blocks: int
    measured: float | None = None  # measured sparsity of the run (weighted), when masked

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self.states[name]
        except KeyError:
            raise InvalidArgumentError(
                f"nothing captured under {name!r}; captured e.g. {', '.join(list(self.states)[:3])}"
            ) from None

    def names(self) -> list[str]:
        return list(self.states)

    def resid(self) -> list[torch.Tensor]:
        """The residual stream leaving each block, in order: L tensors of (N, d)."""
        return [self[resid_name(i)] for i in range(self.n_blocks)]

    def subset(self, rows: torch.Tensor) -> "Capture":
        """The same capture on some of its rows (a boolean (N,) mask or indices)."""
        shared = {id(t): t[rows] for t in self.states.values()}  # aliases stay shared
        return Capture(
            {name: shared[id(t)] for name, t in self.states.items()}, self.tokens[rows], self.n_blocks, self.measured
        )

    def nbytes(self) -> int:
        """Memory held (shared tensors counted once)."""
        return sum(t.numel() * t.element_size() for t in {id(t): t for t in self.states.values()}.values())


@torch.inference_mode()
def capture(
    model,
    ids: torch.Tensor,
    *,
    tokens: torch.Tensor | None = None,
    resid: bool = True,
    inputs: bool | tuple[str, ...] = True,
    blocks: tuple[int, ...] | None = None,
    batch_size: int = 8,
) -> Capture:
    """Run `model` on `ids` (B, L) under whatever hooks are attached (a Sparsifier, SPON) and keep
    the chosen states of the `tokens` pairs (default: all; see `select_tokens`). `inputs` is True
    (every projection), False, or a tuple of roles; `blocks` limits the inputs to some blocks."""
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise InvalidArgumentError(f"ids must be (windows, length) with length > 0; got shape {tuple(ids.shape)}")
    tokens = select_tokens(*ids.shape) if tokens is None else tokens
    if tokens.dim() != 2 or tokens.shape[1] != 2 or len(tokens) == 0:
        raise InvalidArgumentError("tokens must be an (N, 2) tensor of (window, position) pairs, N >= 1")
    if int(tokens[:, 0].max()) >= ids.shape[0] or int(tokens[:, 1].max()) >= ids.shape[1]:
        raise InvalidArgumentError(f"token pairs reach outside the ids of shape {tuple(ids.shape)}")
    roles = ROLES if inputs is True else (() if inputs is False else tuple(inputs))
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise InvalidArgumentError(f"unknown roles {sorted(unknown)}; choose from {', '.join(ROLES)}")

    device = input_device(model)
    parts: dict[str, list[torch.Tensor]] = {}  # name -> per-batch (n, d) rows
    rows = tokens[:0]  # (n, 2) pairs of the batch running now, relative to it; set per batch below

    def keep(name: str):
        def hook(x: torch.Tensor) -> None:  # x: (b, L, d)
            kept = torch.float64 if x.dtype == torch.float64 else torch.float32  # float64 stays exact
            parts.setdefault(name, []).append(x[rows[:, 0], rows[:, 1]].detach().to("cpu", kept))

        return hook

    def on_input(fn):
        return lambda module, args, kwargs: fn(args[0] if args else kwargs["hidden_states"])

    def on_output(fn):
        return lambda module, args, output: fn(block_output(output))

    aliases: dict[str, str] = {}  # name -> the name its tensor is captured under
    with HookSet() as hooks:
        layers = decoder_layers(model)
        if resid:
            hooks.pre(layers[0], on_input(keep(resid_name(0, "pre"))), with_kwargs=True, prepend=True)
            for i, layer in enumerate(layers):
                hooks.post(layer, on_output(keep(resid_name(i))))
        for i, block in enumerate(block_projections(model)):
            if blocks is not None and i not in blocks:
                continue
            for group in INPUT_GROUPS:
                wanted = [role for role in group if role in roles]
                if not wanted:
                    continue
                first = input_name(model, i, wanted[0])
                for role in wanted[1:]:
                    aliases[input_name(model, i, role)] = first
                hooks.pre(block[wanted[0]].module, lambda m, args, fn=keep(first): fn(args[0]), prepend=True)
        for start in range(0, ids.shape[0], batch_size):
            in_batch = (tokens[:, 0] >= start) & (tokens[:, 0] < start + batch_size)
            if not in_batch.any():
                continue
            rows = tokens[in_batch] - torch.tensor([start, 0])
            model(input_ids=ids[start : start + batch_size].to(device), use_cache=False, logits_to_keep=1)
    states = {name: torch.cat(chunks) for name, chunks in parts.items()}
    states.update({alias: states[first] for alias, first in aliases.items()})
    return Capture(states, tokens.clone(), len(layers))
