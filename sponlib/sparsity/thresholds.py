"""`Thresholds`: one τ per projection for one mask rule at one target sparsity, saved as JSON and
checked against the model's fingerprint on load. They come from a calibration
(sponlib.sparsity.calibration), or exactly from one dense pass (`quantile_thresholds`, for tests).

Rules beyond a threshold keep their settings here too: rsparse its low-rank share
(`rule_settings`), larosa its rotations (`rotations`, held in memory only: they are a file of
their own, sponlib.sparsity.rotation, and the settings record their sha256).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace

import torch
from torch import nn

from ..errors import CorruptFileError, InvalidArgumentError
from ..io import atomic_write_json
from ..models.adapters import iter_projections
from ..models.fingerprint import check_fingerprint, model_fingerprint
from ..models.hooks import HookSet
from .rules import input_scores, score_weights, split_method


@dataclass
class Thresholds:
    """Per-projection thresholds for one mask rule at one target sparsity."""

    method: str  # one of METHODS
    target: float  # requested average sparsity (weighted by weights skipped)
    levels: dict[str, float]  # projection name -> its own target sparsity
    taus: dict[str, float]  # projection name -> threshold on its score
    fingerprint: dict  # of the model they were calibrated on
    calibration: dict = field(default_factory=dict)  # provenance of the calibration
    rule_settings: dict = field(default_factory=dict)  # rsparse: low_rank_share; larosa: rotation provenance
    rotations: object = field(default=None, repr=False, compare=False)  # larosa: a sparsity.rotation.Rotations

    @property
    def score(self) -> str:
        return split_method(self.method)[0]

    @property
    def refittable(self) -> bool:
        """Whether τ sets the level (a Top-K rule has no threshold to refit)."""
        return self.score != "topk"

    def with_rotations(self, rotations) -> "Thresholds":
        """These thresholds with larosa's rotations attached (their provenance and sha256 recorded)."""
        return replace(
            self, rotations=rotations, rule_settings={**self.rule_settings, "rotation": rotations.describe()}
        )

    def save(self, path: str | os.PathLike) -> None:
        saved = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "rotations"}
        atomic_write_json(path, {"format": "sponlib-thresholds/1", **saved})

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
            raise CorruptFileError(
                f"{path} is not a complete sponlib thresholds file ({e}); write it again with sponlib"
            ) from None
        if model is not None:
            check_fingerprint(thresholds.fingerprint, model, f"thresholds file {path}")
        return thresholds


@torch.no_grad()
def quantile_thresholds(model, ids: torch.Tensor, score: str, quantile: float) -> Thresholds:
    """Thresholds at the `quantile` of each projection's scores over a dense pass on `ids` (B, L):
    every projection then drops about that share of its inputs on similar text. Exact, without
    the histograms of a calibration: for tiny models in tests."""
    seen = {}
    with HookSet() as hooks:
        for p in iter_projections(model):
            hooks.pre(p.module, lambda module, args, name=p.name: seen.__setitem__(name, args[0]))
        model(ids)
    taus = {
        p.name: float(
            torch.quantile(input_scores(seen[p.name], score_weights(p.module, score)).double().flatten(), quantile)
        )
        for p in iter_projections(model)
    }
    return Thresholds(score, quantile, dict.fromkeys(taus, quantile), taus, model_fingerprint(model))
