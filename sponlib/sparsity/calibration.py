"""Calibration: stream the inputs of every projection over calibration windows and keep
memory-bounded statistics, from which the threshold for any target sparsity is read.

Two passes, both on calibration text (never the test novel):

1. Dense statistics. For every projection, a histogram of log10 of its score (|x| for teal,
   |x_i|·‖W[:, i]‖₂ for wina) on fixed bins: 4096 bins over 16 decades, 32 KB per projection
   whatever the number of tokens (q/k/v and gate/up share one |x| histogram: same input). Stored
   as quantile tables: the score at sparsity 0, 0.001, ..., 1.
2. Sparse-aware refinement. Under sparsity the hidden states drift, so a threshold read off dense
   statistics zeroes the wrong share of a deep layer's inputs (data/results/calibration_cpu.json
   measures by how much). For each refinement level and mask rule, one forward pass over a batch
   of windows calibrates every projection on the inputs it really sees, upstream projections
   already sparsified, in execution order. The ratio refined/dense threshold is stored per level
   and interpolated between levels (1 at level 0, held beyond the last).
3. Optionally, before 2, the greedy block-wise allocation (sponlib.sparsity.allocation).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from tqdm.auto import tqdm

from ..errors import CorruptFileError, InvalidArgumentError, NumericalError
from ..io import atomic_write_bytes
from ..models.adapters import INPUT_GROUPS, block_projections
from ..models.fingerprint import check_fingerprint, model_fingerprint
from ..models.hooks import HookSet
from ..models.placement import device_record, input_device
from ..progress import no_bars
from .allocation import allocation_levels, greedy_allocation
from .lowrank import DEFAULT_LOW_RANK_SHARE, channel_level, completed
from .rules import SCORES, THRESHOLD_METHODS, check_sparsity, input_scores, score_weights, split_method, with_vector
from .thresholds import Thresholds

LOG10_LOW, LOG10_HIGH, BINS = -10.0, 6.0, 4096  # |x| < 1e-10 (zeros included) lands in bin 0
QUANTILE_GRID = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)  # (Q,) sparsity levels
FORMAT = "sponlib-calibration/1"
# Levels the sparse-aware correction is measured at by default; it is interpolated between them and
# held beyond the last. They span the levels people deploy and the curves go to (docs/protocol.md).
REFINE_LEVELS = (0.25, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class _Histogram:
    """Running histogram of log10(score) on fixed bins (float64 counts: exact up to 2^53)."""

    def __init__(self):
        self.counts = torch.zeros(BINS, dtype=torch.float64)

    def add(self, scores: torch.Tensor) -> None:
        if not torch.isfinite(scores).all():
            raise NumericalError(
                "NaN or infinite activations while calibrating: the model's weights or dtype are broken (try float32)"
            )
        logs = scores.detach().float().abs().clamp_min(1e-30).log10().clamp_(LOG10_LOW, LOG10_HIGH - 1e-6)
        self.counts += torch.histc(logs, bins=BINS, min=LOG10_LOW, max=LOG10_HIGH).to("cpu", torch.float64)

    def quantiles(self, levels: torch.Tensor = QUANTILE_GRID) -> torch.Tensor:
        """Score below which each share in `levels` of the entries lies (same shape as `levels`)."""
        edges = np.linspace(LOG10_LOW, LOG10_HIGH, BINS + 1)
        cdf = np.concatenate([[0.0], np.cumsum(self.counts.numpy())])
        cdf /= cdf[-1]
        # Interpolate log10(score) linearly inside a bin; flat stretches of the cdf (empty bins)
        # are collapsed so that interpolation is well defined.
        keep = np.concatenate([[True], np.diff(cdf) > 0])
        logs = np.interp(np.asarray(levels, dtype=np.float64), cdf[keep], edges[keep])
        values = torch.from_numpy(10.0 ** np.atleast_1d(logs))
        values[torch.as_tensor(np.atleast_1d(levels)) == 0] = 0.0  # tau = 0 drops only exact zeros
        return values


@dataclass
class Calibration:
    """Statistics of every projection's scores for one model, and the thresholds they give."""

    fingerprint: dict
    tables: dict[str, dict[str, torch.Tensor]]  # score -> projection -> (Q,) dense quantiles
    sizes: dict[str, int]  # projection -> number of weights (for weighted averages)
    blocks: list[list[str]]  # projection names of each block, in ROLES order
    meta: dict = field(default_factory=dict)  # windows, source, versions
    refined: dict[str, dict[float, dict[str, float]]] = field(default_factory=dict)  # method -> level -> name -> tau
    greedy: dict[str, dict] = field(default_factory=dict)  # score -> allocation table (sponlib.sparsity.allocation)

    def dense_threshold(self, score: str, name: str, level: float) -> float:
        """Threshold read off the dense statistics alone."""
        return float(np.interp(level, QUANTILE_GRID.numpy(), self.tables[score][name].numpy()))

    def levels(self, method: str, target: float) -> dict[str, float]:
        """Per-projection sparsity for a mask rule: uniform, or the greedy allocation."""
        score, allocation = split_method(method)
        if allocation == "uniform":
            return {name: target for name in self.sizes}
        if score not in self.greedy:
            raise InvalidArgumentError(
                f"this calibration has no greedy allocation on {score}; make one with "
                "`python -m sponlib calibrate --greedy-windows N ...`"
            )
        return allocation_levels(self.greedy[score], self.blocks, target)

    def _ratios(self, method: str) -> tuple[list[float], dict[str, list[float]]]:
        """Refined/dense threshold ratio of every projection at each refined level of `method`,
        with ratio 1 at level 0."""
        score, _ = split_method(method)
        refined = self.refined.get(method, {})
        grid = sorted(refined)
        ratios: dict[str, list[float]] = {name: [1.0] for name in self.sizes}
        for target in grid:
            own = self.levels(method, target)
            for name in self.sizes:
                dense = self.dense_threshold(score, name, own[name])
                ratios[name].append(refined[target][name] / dense if dense > 0 else 1.0)
        return [0.0] + grid, ratios

    def thresholds(
        self, target: float, method: str = "teal", sparse_aware: bool = True, low_rank_share: float | None = None
    ) -> Thresholds:
        """Thresholds of every projection for mask rule `method` at average sparsity `target`:
        the dense threshold at each projection's level, times the sparse-aware correction
        interpolated between refined levels (left out with sparse_aware=False, for comparison).
        larosa needs no threshold (Top-K; attach its rotations with `with_rotations`); rsparse is
        teal at the channel level its byte budget leaves (sponlib.sparsity.lowrank)."""
        target = check_sparsity(target)
        if method == "larosa":
            levels = dict.fromkeys(self.sizes, target)
            return Thresholds(method, target, levels, dict.fromkeys(self.sizes, 0.0), self.fingerprint, dict(self.meta))
        if method == "rsparse":
            share = DEFAULT_LOW_RANK_SHARE if low_rank_share is None else low_rank_share
            teal = self.thresholds(channel_level(target, share), "teal", sparse_aware)
            return replace(teal, method=method, target=target, rule_settings={"low_rank_share": share})
        score, _ = split_method(method)
        if score not in self.tables:
            raise InvalidArgumentError(f"this calibration has no {score} statistics; calibrate with it")
        levels = self.levels(method, target)
        grid, ratios = self._ratios(method) if sparse_aware else ([0.0], {name: [1.0] for name in levels})
        taus = {
            name: self.dense_threshold(score, name, level) * float(np.interp(target, grid, ratios[name]))
            for name, level in levels.items()
        }
        return Thresholds(method, target, levels, taus, self.fingerprint, dict(self.meta))

    def save(self, path: str | os.PathLike) -> None:
        """One safetensors file: quantile tables as tensors, everything else as JSON metadata."""
        tensors = {
            f"{score}/{name}": table.float().contiguous()
            for score, per in self.tables.items()
            for name, table in per.items()
        }
        refined = {s: {str(level): taus for level, taus in per.items()} for s, per in self.refined.items()}
        header = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "sizes": self.sizes,
            "blocks": self.blocks,
            "meta": self.meta,
            "refined": refined,
            "greedy": self.greedy,
        }
        atomic_write_bytes(path, save(tensors, metadata={"sponlib": json.dumps(header)}))

    @classmethod
    def load(cls, path: str | os.PathLike, model=None) -> "Calibration":
        """Read a calibration file; with `model`, refuse it unless it was made for that model."""
        if not os.path.isfile(path):
            raise InvalidArgumentError(f"calibration file {str(path)!r} does not exist")
        try:
            with safe_open(path, framework="pt") as f:
                header = json.loads(f.metadata()["sponlib"])
                flat = {key: f.get_tensor(key) for key in f.keys()}
            if header.get("format") != FORMAT:
                raise KeyError("format")
            tables: dict[str, dict[str, torch.Tensor]] = {}
            for key, value in flat.items():
                score, name = key.split("/", 1)
                tables.setdefault(score, {})[name] = value.double()
            refined = {s: {float(level): taus for level, taus in per.items()} for s, per in header["refined"].items()}
            calibration = cls(
                header["fingerprint"],
                tables,
                header["sizes"],
                header["blocks"],
                header["meta"],
                refined,
                header["greedy"],
            )
        except (SafetensorError, KeyError, TypeError, ValueError, OSError) as e:
            raise CorruptFileError(
                f"{path} is not a complete sponlib calibration file ({type(e).__name__}: {e}); calibrate again"
            ) from None
        if model is not None:
            check_fingerprint(calibration.fingerprint, model, f"calibration file {path}")
        return calibration


def _batches(ids: torch.Tensor, batch_size: int, progress: bool, desc: str):
    for start in tqdm(
        range(0, ids.shape[0], batch_size), desc=desc, unit="batch", disable=no_bars(progress), leave=False
    ):
        yield ids[start : start + batch_size]


@torch.inference_mode()
def dense_statistics(
    model, ids: torch.Tensor, scores=SCORES, batch_size: int = 4, progress: bool = True
) -> dict[str, dict[str, torch.Tensor]]:
    """Pass 1: quantile tables of every projection's scores on the dense model."""
    hists: dict[str, dict[str, _Histogram]] = {s: {} for s in scores}
    device = input_device(model)
    with HookSet() as hooks:
        for block in block_projections(model):
            for group in INPUT_GROUPS:
                projs = [block[role] for role in group]
                shared = _Histogram()  # one |x| histogram per shared input
                for p in projs:
                    if "teal" in scores:
                        hists["teal"][p.name] = shared
                    if "wina" in scores:
                        hists["wina"][p.name] = _Histogram()
                col_norms = [score_weights(p.module, "wina") for p in projs]  # (in,) each

                def hook(module, args, projs=projs, shared=shared, col_norms=col_norms):
                    x = args[0].abs()  # (B, T, in), once for both scores
                    if "teal" in scores:
                        shared.add(x)
                    if "wina" in scores:
                        for p, norm in zip(projs, col_norms):
                            hists["wina"][p.name].add(x * norm)

                hooks.pre(projs[0].module, hook)
        for batch in _batches(ids, batch_size, progress, "dense statistics"):
            model(input_ids=batch.to(device), use_cache=False, logits_to_keep=1)
    return {s: {name: h.quantiles() for name, h in per.items()} for s, per in hists.items()}


class _RefiningHook:
    """Pass 2 hook: calibrate tau on the input this projection really sees, then apply it (and add
    the projection's SPON vector, if any, as the Sparsifier would)."""

    def __init__(self, level: float, col_norm, alpha=None, completion: torch.Tensor | None = None):
        self.level, self.col_norm, self.alpha, self.completion, self.tau = level, col_norm, alpha, completion, None

    def __call__(self, module, args):
        x = args[0]  # (B, T, in)
        score = input_scores(x, self.col_norm)  # (B, T, in)
        hist = _Histogram()
        hist.add(score)
        self.tau = float(hist.quantiles(torch.tensor([self.level], dtype=torch.float64))[0])
        sparse = x * (score > self.tau)
        if self.completion is not None:  # rsparse: what the mask drops, through W's low-rank part
            sparse = completed(x, sparse, self.completion)
        return (with_vector(sparse, self.alpha),) + tuple(args[1:])


@torch.inference_mode()
def refine_thresholds(
    model,
    ids: torch.Tensor,
    score: str,
    levels: dict[str, float],
    alphas: dict[str, torch.Tensor] | None = None,
    completions: dict[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Pass 2 at one setting: every projection's threshold calibrated under upstream sparsity
    (and upstream SPON vectors, when `alphas` are given: SPON moves the hidden states, so
    thresholds fitted without it would miss their level; and rsparse's low-rank bases, when
    `completions` are given). `ids` go through as one batch, so each threshold sees all
    refinement tokens."""
    alphas, completions = alphas or {}, completions or {}
    refiners: dict[str, _RefiningHook] = {}
    with HookSet() as hooks:
        for block in block_projections(model):
            for p in block.values():
                refiners[p.name] = _RefiningHook(
                    levels[p.name], score_weights(p.module, score), alphas.get(p.name), completions.get(p.name)
                )
                hooks.pre(p.module, refiners[p.name])
        model(input_ids=ids.to(input_device(model)), use_cache=False, logits_to_keep=1)
    return {name: hook.tau for name, hook in refiners.items()}


def calibrate(
    model,
    windows,
    scores=SCORES,
    refine_windows: int = 8,
    refine_levels=REFINE_LEVELS,
    greedy_windows: int = 0,
    greedy_scores=None,
    greedy_step: float = 0.05,
    batch_size: int = 4,
    progress: bool = True,
    meta: dict | None = None,
) -> Calibration:
    """Calibrate `model` on `windows` (a data.Windows or (N, L) ids): dense statistics over all
    windows; with `greedy_windows` > 0, greedy allocations on that many windows for
    `greedy_scores` (default: all `scores`); then sparse-aware refinement of every mask rule at
    `refine_levels` on the first `refine_windows` windows."""
    ids = getattr(windows, "ids", windows)  # (N, L)
    for level in refine_levels:
        check_sparsity(level)
    started = time.perf_counter()
    timings = {}  # seconds spent in each pass
    blocks = block_projections(model)
    calibration = Calibration(
        model_fingerprint(model),
        dense_statistics(model, ids, scores, batch_size, progress),
        {p.name: p.module.weight.numel() for block in blocks for p in block.values()},
        [[p.name for p in block.values()] for block in blocks],
        {
            **(meta or {}),
            "windows": int(ids.shape[0]),
            "window_len": int(ids.shape[1]),
            "refine_windows": int(min(refine_windows, ids.shape[0])),
            "refine_levels": list(refine_levels),
            "greedy_windows": int(min(greedy_windows, ids.shape[0])),
        },
    )
    timings["dense_statistics_s"] = time.perf_counter() - started
    if greedy_windows > 0:
        for score in scores if greedy_scores is None else greedy_scores:
            calibration.greedy[score] = greedy_allocation(
                model, ids[:greedy_windows], calibration, score, step=greedy_step, progress=progress
            )
        timings["greedy_s"] = time.perf_counter() - started - sum(timings.values())
    methods = [
        m
        for m in THRESHOLD_METHODS
        if split_method(m)[0] in scores
        and (split_method(m)[1] == "uniform" or split_method(m)[0] in calibration.greedy)
    ]
    steps = [(m, level) for m in methods for level in refine_levels]
    for method, level in tqdm(
        steps, desc="refine", unit="level", disable=no_bars(progress and bool(steps)), leave=False
    ):
        levels = calibration.levels(method, float(level))
        calibration.refined.setdefault(method, {})[float(level)] = refine_thresholds(
            model, ids[:refine_windows], split_method(method)[0], levels
        )
    timings["refine_s"] = time.perf_counter() - started - sum(timings.values())
    device = input_device(model)
    calibration.meta.update(
        elapsed_s=round(time.perf_counter() - started, 1),
        timings={k: round(v, 1) for k, v in timings.items()},
        device=device_record(device),
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
    )
    return calibration
