"""Allocation of sparsity over a block's projections, greedy and block-wise (TEAL-style): inside
each decoder block, shift sparsity between its seven projections to minimise the block's output
error, at the number of skipped weights that uniform sparsity would skip.

For one block, with its dense inputs X and dense outputs Y captured on calibration windows:
    start with every projection at sparsity 0;
    repeat: for each projection p, try raising its sparsity by `step`; keep the raise with the
            smallest increase of ‖block(X) − Y‖² per weight skipped;
    record every point of that path (skipped-weight share, per-projection levels).
The allocation for an average sparsity g is read off the path between the two points around g,
interpolated so that the skipped weights equal g exactly. At each grid level the greedy allocation
is checked against uniform on the same tokens, and uniform is kept where greedy is not better, so
the stored allocation's block error is never above uniform's on calibration data.

A block is replayed with the exact arguments the model passed it (captured by a pre-hook), so no
model forward is copied here.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InvalidArgumentError
from ..models.adapters import block_output, block_projections, decoder_layers
from ..models.hooks import HookSet
from ..models.placement import input_device
from ..progress import no_bars
from .rules import score_weights
from .sparsifier import MaskHook

GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95: every protocol level is on it


@torch.inference_mode()
def capture_blocks(model, ids: torch.Tensor) -> list[tuple[tuple, dict, torch.Tensor]]:
    """(args, kwargs, dense output) of every decoder block for a dense forward over `ids`."""
    captured: list = []

    def pre(module, args, kwargs):
        captured.append([tuple(a.clone() if torch.is_tensor(a) else a for a in args), dict(kwargs), None])

    def post(module, args, kwargs, output):
        captured[-1][2] = block_output(output).clone()

    with HookSet() as hooks:
        for layer in decoder_layers(model):
            hooks.pre(layer, pre, with_kwargs=True)
            hooks.post(layer, post, with_kwargs=True)
        model(input_ids=ids.to(input_device(model)), use_cache=False, logits_to_keep=1)
    return [tuple(c) for c in captured]


class _BlockProbe:
    """One block with a mask hook on each projection, replayed at chosen levels."""

    def __init__(self, layer, block, calibration, score, capture):
        self.layer, self.block, self.calibration, self.score = layer, block, calibration, score
        self.args, self.kwargs, self.dense = capture
        self.hooks = {}
        for role, p in block.items():
            self.hooks[role] = MaskHook(0.0, score_weights(p.module, score), count=False)

    def error(self, levels: dict[str, float]) -> float:
        """Mean squared deviation of the block output from dense at `levels` (role -> sparsity)."""
        with HookSet() as hooks:
            for role, p in self.block.items():
                self.hooks[role].tau = self.calibration.dense_threshold(self.score, p.name, levels[role])
                hooks.pre(p.module, self.hooks[role])
            out = block_output(self.layer(*self.args, **self.kwargs))  # (B, T, d)
        return float(((out.float() - self.dense.float()) ** 2).mean())


def _path(probe: _BlockProbe, sizes: dict[str, int], step: float, stop: float):
    """The greedy path: list of (skipped share, levels) from all-zero up to `stop`."""
    roles, total = list(sizes), sum(sizes.values())
    levels = {r: 0.0 for r in roles}
    current = probe.error(levels)
    path = [(0.0, dict(levels))]
    while path[-1][0] < stop:
        best = None
        for r in roles:
            if levels[r] + step > 0.99 + 1e-9:
                continue
            trial = {**levels, r: round(levels[r] + step, 6)}
            error = probe.error(trial)
            gain = (error - current) / (step * sizes[r])  # error added per weight skipped
            if best is None or gain < best[0]:
                best = (gain, trial, error)
        if best is None:
            break
        _, levels, current = best
        path.append((sum(levels[r] * sizes[r] for r in roles) / total, dict(levels)))
    return path


def _at(path, target: float) -> dict[str, float]:
    """Levels on the path whose skipped share is exactly `target` (linear between path points)."""
    shares = [s for s, _ in path]
    i = int(np.searchsorted(shares, target, side="right")) - 1
    i = min(max(i, 0), len(path) - 2)
    (s0, l0), (s1, l1) = path[i], path[i + 1]
    w = 0.0 if s1 == s0 else (target - s0) / (s1 - s0)
    return {r: l0[r] + w * (l1[r] - l0[r]) for r in l0}


@torch.inference_mode()
def greedy_allocation(
    model, ids: torch.Tensor, calibration, score: str = "teal", step: float = 0.05, grid=GRID, progress: bool = True
) -> dict:
    """Greedy allocation table for `score` at the `grid` levels, from calibration windows `ids`."""
    captures = capture_blocks(model, ids)
    blocks = block_projections(model)
    table = {
        "score": score,
        "step": step,
        "grid": list(grid),
        "windows": int(ids.shape[0]),
        "levels": {},
        "fallback": [],
        "block_error": {"greedy": [], "uniform": []},
    }
    for index in tqdm(range(len(blocks)), desc=f"greedy {score}", unit="block", disable=no_bars(progress), leave=False):
        block = blocks[index]
        probe = _BlockProbe(decoder_layers(model)[index], block, calibration, score, captures[index])
        sizes = {r: p.module.weight.numel() for r, p in block.items()}
        path = _path(probe, sizes, step, stop=max(grid))
        greedy_err, uniform_err = [], []
        for g in grid:
            chosen = _at(path, g)
            uniform = {r: g for r in sizes}
            e_greedy, e_uniform = probe.error(chosen), probe.error(uniform)
            if e_greedy > e_uniform:  # keep uniform where greedy is not better
                chosen, e_greedy = uniform, e_uniform
                table["fallback"].append([index, g])
            greedy_err.append(e_greedy)
            uniform_err.append(e_uniform)
            for r, p in block.items():
                table["levels"].setdefault(p.name, []).append(chosen[r])
        table["block_error"]["greedy"].append(greedy_err)
        table["block_error"]["uniform"].append(uniform_err)
    return table


def allocation_levels(table: dict, blocks: list[list[str]], target: float) -> dict[str, float]:
    """Per-projection levels for average sparsity `target`: linear between grid levels (and from
    all-zero below the first), which keeps the skipped weights equal to uniform's."""
    grid = [0.0] + list(table["grid"])
    if target > grid[-1] + 1e-9:
        raise InvalidArgumentError(f"the greedy allocation reaches {grid[-1]}; target {target} is beyond it")
    return {
        name: float(np.interp(target, grid, [0.0] + list(table["levels"][name]))) for block in blocks for name in block
    }
