"""Input sparsity on every linear projection: per-projection thresholds and the `Sparsifier`.

A projection y = W x reads S(x) instead of x, where S zeroes the entries whose score is at most
the projection's threshold τ:
    teal   score_i = |x_i|                       (magnitude, TEAL)
    wina   score_i = |x_i| · ‖W[:, i]‖₂          (weight-aware, WINA)
Thresholds come from a calibration (sponlib.calibration) for a target sparsity, either the same
level on every projection ("uniform") or a block-wise greedy allocation ("greedy").

The Sparsifier puts forward pre-hooks on the real Hugging Face nn.Linear modules; it is a context
manager and removes every handle on exit, also when the body raises. Given SPON vectors
(`alphas`), the same hooks feed W (S(x) + α): the mask first, then the vector.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .adapters import iter_projections
from .errors import CorruptFileError, InvalidArgumentError
from .io import atomic_write_json
from .models import check_fingerprint
from .placement import execution_device, onloaded

SCORES = ("teal", "wina")  # what is thresholded
METHODS = ("teal", "wina", "greedy", "greedy-wina")  # mask rule = score + allocation


def check_sparsity(target: float) -> float:
    """A target sparsity must be a finite number in [0, 1)."""
    try:
        value = float(target)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"target sparsity must be a number in [0, 1); got {target!r}") from None
    if not 0.0 <= value < 1.0:  # also refuses NaN
        raise InvalidArgumentError(
            f"target sparsity must be in [0, 1): the share of inputs zeroed; got {target!r} "
            "(1 would zero every input, use e.g. 0.5 for half)")
    return value


def split_method(method: str) -> tuple[str, str]:
    """'greedy-wina' -> ('wina', 'greedy'); 'teal' -> ('teal', 'uniform')."""
    if method not in METHODS:
        raise InvalidArgumentError(f"unknown mask rule {method!r}; choose from {', '.join(METHODS)}")
    if method.startswith("greedy"):
        return ("wina" if method.endswith("wina") else "teal"), "greedy"
    return method, "uniform"


def comparison_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype scores are compared with τ in: float32, or float64 for a float64 model. Half-
    precision activations are upcast (exactly) first, so τ is never rounded to bf16/fp16 and the
    hooks, the torch reference and the GPU kernels keep the same inputs."""
    return torch.promote_types(dtype, torch.float32)


def score_weights(module: nn.Linear, score: str) -> torch.Tensor | None:
    """What the input magnitudes are multiplied by before thresholding: ‖W[:, i]‖₂ for wina
    ((in,) tensor in the comparison dtype), nothing for teal."""
    if score != "wina":
        return None
    with onloaded(module):  # an offloaded weight is a meta tensor outside its forward
        weight = module.weight.detach()
        return weight.to(comparison_dtype(weight.dtype)).norm(dim=0)


def sparse_input(x: torch.Tensor, keep: torch.Tensor, alpha: torch.Tensor | None) -> torch.Tensor:
    """What the projection reads: S(x), plus its SPON vector if it has one. (..., in) -> (..., in)"""
    sparse = x * keep
    # alpha broadcast over tokens; .to is a no-op unless a device map split this projection off
    return sparse if alpha is None else sparse + alpha.to(sparse.device, sparse.dtype)


def input_scores(x: torch.Tensor, col_norm: torch.Tensor | None) -> torch.Tensor:
    """Score of every input entry, in the comparison dtype: |x_i| (teal) or |x_i| · ‖W[:, i]‖₂
    (wina). (..., in) -> (..., in)"""
    magnitude = x.abs().to(comparison_dtype(x.dtype))
    return magnitude if col_norm is None else magnitude * col_norm.to(magnitude.device, magnitude.dtype)


@dataclass
class Thresholds:
    """Per-projection thresholds for one mask rule at one target sparsity."""

    method: str  # one of METHODS
    target: float  # requested average sparsity (weighted by weights skipped)
    levels: dict[str, float]  # projection name -> its own target sparsity
    taus: dict[str, float]  # projection name -> threshold on its score
    fingerprint: dict  # of the model they were calibrated on
    calibration: dict = field(default_factory=dict)  # provenance of the calibration

    @property
    def score(self) -> str:
        return split_method(self.method)[0]

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, {"format": "sponlib-thresholds/1", **asdict(self)})

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | None = None) -> "Thresholds":
        """Read a thresholds file; with `model`, refuse it unless it was made for that model."""
        try:
            with open(path) as f:
                data = json.load(f)
            if data.pop("format") != "sponlib-thresholds/1":
                raise KeyError("format")
            thresholds = cls(**data)
        except FileNotFoundError:
            raise InvalidArgumentError(f"thresholds file {str(path)!r} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise CorruptFileError(f"{path} is not a complete sponlib thresholds file ({e}); "
                                   "write it again with sponlib") from None
        if model is not None:
            check_fingerprint(thresholds.fingerprint, model, f"thresholds file {path}")
        return thresholds


class _MaskHook:
    """Forward pre-hook of one projection: zero the inputs whose score is <= tau (and count them),
    then add the projection's spontaneous-neuron vector alpha if it has one: S(x) + alpha."""

    def __init__(self, tau: float, col_norm: torch.Tensor | None, alpha: torch.Tensor | None = None,
                 count: bool = True):
        self.tau = tau
        self.col_norm = col_norm  # (in,) for wina, None for teal
        self.alpha = alpha  # (in,) or None; may require grad (SPON training)
        self.count = count  # training skips the bookkeeping
        self.zeroed = 0  # tensor after the first call: no device sync per forward
        self.seen = 0

    def __call__(self, module: nn.Module, args: tuple):
        x = args[0]  # (..., in)
        keep = input_scores(x, self.col_norm) > self.tau  # (..., in) bool
        if self.count:
            self.zeroed = self.zeroed + (~keep).sum()
            self.seen += keep.numel()
        return (sparse_input(x, keep, self.alpha),) + tuple(args[1:])


class Sparsifier:
    """Sparsify the inputs of every projection of `model` with `thresholds`, while active.

        with Sparsifier(model, thresholds) as sp:
            logits = model(ids).logits
        sp.measured()  # projection name -> share of its inputs zeroed

    `alphas` (projection name -> (in,) vector, e.g. `SponVectors.alphas`) adds spontaneous neurons
    after the mask: the projection computes W (S(x) + alpha). Each vector is moved to where its
    projection computes (a no-op when it is there already, so trained vectors stay the leaves).
    `count=False` skips the measured-sparsity bookkeeping (one reduction per projection per
    forward), as training does.
    """

    def __init__(self, model: nn.Module, thresholds: Thresholds, check: bool = True,
                 alphas: dict[str, torch.Tensor] | None = None, count: bool = True):
        if check:
            check_fingerprint(thresholds.fingerprint, model, "these thresholds")
        self.model, self.thresholds = model, thresholds
        self.projections = {p.name: p for p in iter_projections(model)}
        missing = set(self.projections) - set(thresholds.taus)
        if missing:
            raise InvalidArgumentError(f"thresholds lack {len(missing)} projections, e.g. {sorted(missing)[0]}")
        alphas = alphas or {}
        unknown = set(alphas) - set(self.projections)
        if unknown:
            raise InvalidArgumentError(f"spontaneous-neuron vectors for projections this model lacks, "
                                       f"e.g. {sorted(unknown)[0]}")
        self.hooks: dict[str, _MaskHook] = {}
        for name, proj in self.projections.items():
            alpha = alphas.get(name)
            if alpha is not None and alpha.shape != (proj.in_features,):
                raise InvalidArgumentError(f"vector for {name} has shape {tuple(alpha.shape)}, "
                                           f"the projection takes {proj.in_features} inputs")
            if alpha is not None:
                alpha = alpha.to(execution_device(proj.module))
            self.hooks[name] = _MaskHook(thresholds.taus[name], score_weights(proj.module, thresholds.score),
                                         alpha, count)
        self._handles: list = []

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def attach(self) -> "Sparsifier":
        if not self.active:
            self._handles = [self.projections[n].module.register_forward_pre_hook(h) for n, h in self.hooks.items()]
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "Sparsifier":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def reset_stats(self) -> None:
        for hook in self.hooks.values():
            hook.zeroed, hook.seen = 0, 0

    def counts(self) -> torch.Tensor:
        """Inputs zeroed and seen by each projection since the last reset, in hook order: (P, 2)
        float64 (what data-parallel processes sum before `measured`)."""
        return torch.tensor([[float(h.zeroed), float(h.seen)] for h in self.hooks.values()], dtype=torch.float64)

    def set_counts(self, counts: torch.Tensor) -> None:
        """Replace the counts with (P, 2) ones in hook order, e.g. their sum over processes."""
        for hook, (zeroed, seen) in zip(self.hooks.values(), counts.tolist()):
            hook.zeroed, hook.seen = zeroed, int(seen)

    def measured(self) -> dict[str, float]:
        """Share of each projection's inputs zeroed since the last reset."""
        return {n: float(h.zeroed) / h.seen for n, h in self.hooks.items() if h.seen}

    def summary(self) -> dict[str, float]:
        """Measured sparsity over all projections: `weighted` by weight count (the share of weight
        columns a kernel could skip, what the target means) and the plain `mean`."""
        measured = self.measured()
        if not measured:
            raise InvalidArgumentError("no forward pass has run through the sparsifier yet")
        sizes = {n: self.projections[n].module.weight.numel() for n in measured}
        weighted = sum(measured[n] * sizes[n] for n in measured) / sum(sizes.values())
        return {"weighted": weighted, "mean": sum(measured.values()) / len(measured)}
