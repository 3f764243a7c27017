"""SPON at any sparsity level: vectors trained at a few levels of one mask rule, interpolated
between them.

    levels = SponLevels.from_files(calibration, {0.4: "spon-teal-0.4.safetensors", 0.5: ...}, model)
    vectors, thresholds = levels.at(0.45)   # halfway between the vectors trained at 0.4 and 0.5

At a trained level `at` gives the trained pair itself. Between trained levels lo < s < hi the
vectors are α = (1 - w) α_lo + w α_hi with w = (s - lo) / (hi - lo); below the lowest trained
level they shrink linearly to α = 0 at level 0 (the dense model, which needs no SPON). Above the
highest level nothing is extrapolated: train vectors there.

Thresholds: the vectors were trained against thresholds that may differ from the calibration's
(training refits them under the vectors). At s the mask's own thresholds come from the calibration,
plus the interpolated offset of the trained thresholds from the calibration's at the trained
levels, δ_i = τ_spon(s_i) - τ_cal(s_i) per projection (δ = 0 at level 0): exact at trained levels,
smooth between, and the calibration's own thresholds as s -> 0.
"""

from __future__ import annotations

import os

import numpy as np
from torch import nn

from ..errors import FingerprintError, InvalidArgumentError
from ..models.fingerprint import check_fingerprint
from ..sparsity.calibration import Calibration
from ..sparsity.thresholds import Thresholds
from .vectors import SponVectors, load_spon

SAME_LEVEL = 1e-9  # two levels closer than this are the same level
# what describes one trained file only (its thresholds file, run, level, safeguard decision)
LEVEL_OWN_META = ("thresholds", "training", "target", "interpolated", "safeguard")
FINGERPRINT_KEYS = ("architecture", "shapes", "weights")  # what check_fingerprint compares


def _same_model(a: dict, b: dict) -> bool:
    return all(a.get(key) == b.get(key) for key in FINGERPRINT_KEYS)


class SponLevels:
    """SPON vectors of one mask rule trained at a few levels, and the pair (vectors, thresholds)
    at any level between level 0 and the highest trained one (see the module docstring).

    `calibration` gives the mask's thresholds at any level; `trained` maps each trained level to
    its (SponVectors, Thresholds), e.g. from `sponlib.spon.load_spon`. All must be of one rule and
    one model. The offsets of the trained thresholds from the calibration's are computed once
    here, so that `at` costs one read of the calibration and one blend of the vectors."""

    def __init__(self, calibration: Calibration, trained: dict[float, tuple[SponVectors, Thresholds]]):
        if not trained:
            raise InvalidArgumentError("SponLevels needs SPON vectors trained at one level at least")
        self.calibration = calibration
        self._trained = {float(level): pair for level, pair in sorted(trained.items())}
        self._check()
        self._names = sorted(next(iter(self._trained.values()))[1].taus)  # projections with a threshold
        # offsets (K + 1, P): row 0 is level 0 (no offset), row i the trained level i
        self._grid = np.array([0.0, *self._trained])
        rows = [np.zeros(len(self._names))]
        for level, (_, thresholds) in self._trained.items():
            own = calibration.thresholds(level, self.rule).taus
            rows.append(np.array([thresholds.taus[name] - own[name] for name in self._names]))
        self._offsets = np.stack(rows)

    @classmethod
    def from_files(
        cls, calibration: Calibration, paths: dict[float, str | os.PathLike], model: nn.Module | None = None
    ) -> "SponLevels":
        """From SPON files (level -> path, each with its .thresholds.json); with `model`, the
        calibration and every file are checked against it."""
        if model is not None:
            check_fingerprint(calibration.fingerprint, model, "the calibration")
        return cls(calibration, {float(level): load_spon(path, model) for level, path in paths.items()})

    def _check(self) -> None:
        """One rule, one model, one set of projections; each level the one its thresholds name."""
        rules = {pair[1].method for pair in self._trained.values()}
        rules |= {vectors.meta["method"] for vectors, _ in self._trained.values() if "method" in vectors.meta}
        if len(rules) > 1:
            raise InvalidArgumentError(
                f"SPON vectors of different mask rules ({', '.join(sorted(rules))}) cannot be "
                "interpolated: give the vectors trained for one rule"
            )
        first_vectors, first_thresholds = next(iter(self._trained.values()))
        for level, (vectors, thresholds) in self._trained.items():
            if not 0 < level < 1:
                raise InvalidArgumentError(f"SPON vectors given at level {level:g}: trained levels lie in (0, 1)")
            if abs(level - thresholds.target) > SAME_LEVEL:
                raise InvalidArgumentError(
                    f"SPON vectors given at level {level:g} were trained at {thresholds.target:g}: "
                    "key each pair by the level it was trained at"
                )
            # vectors built by hand may carry no fingerprint: their thresholds' one is checked
            for what, fingerprint in (
                ("thresholds", thresholds.fingerprint),
                ("vectors", vectors.meta.get("fingerprint")),
            ):
                if fingerprint is not None and not _same_model(fingerprint, self.calibration.fingerprint):
                    raise FingerprintError(
                        f"the SPON {what} trained at {level:g} were made for {fingerprint.get('source') or '?'}, "
                        f"the calibration for {self.calibration.fingerprint.get('source') or '?'} "
                        "(fingerprints differ): give a calibration and vectors of one model"
                    )
            if set(vectors.alphas) != set(first_vectors.alphas) or set(thresholds.taus) != set(first_thresholds.taus):
                raise InvalidArgumentError(
                    f"the SPON vectors trained at {level:g} cover other projections than those at "
                    f"{self.levels[0]:g}: interpolate vectors trained for the same projections (roles)"
                )
        missing = sorted(set(first_thresholds.taus) - set(self.calibration.sizes))
        if missing:
            raise InvalidArgumentError(f"the calibration has no statistics of {missing[0]}: calibrate this model")

    @property
    def levels(self) -> tuple[float, ...]:
        """The trained levels, lowest first."""
        return tuple(self._trained)

    @property
    def rule(self) -> str:
        return next(iter(self._trained.values()))[1].method

    def covers(self, level: float) -> bool:
        """True for 0 < level <= the highest trained level (level 0 is dense: no SPON)."""
        return 0 < float(level) <= self.levels[-1] + SAME_LEVEL

    def trained_level(self, level: float) -> float | None:
        """The trained level equal to `level` (within 1e-9), or None."""
        return next((t for t in self._trained if abs(t - float(level)) <= SAME_LEVEL), None)

    def between(self, level: float) -> tuple[float, float, float] | None:
        """(lo, hi, w) the vectors at `level` blend, α = (1 - w) α_lo + w α_hi (lo = 0 below the
        lowest trained level: α_0 = 0); None at a trained level. Refuses an uncovered level."""
        level = float(level)
        if not self.covers(level):
            trained = ", ".join(f"{t:g}" for t in self.levels)
            if level <= 0:
                raise InvalidArgumentError(f"SPON at level {level:g}: level 0 is the dense model, which has no SPON")
            raise InvalidArgumentError(
                f"no SPON at {level:g}: {self.rule} vectors are trained at {trained} and interpolated "
                f"up to {self.levels[-1]:g} only; train vectors at {level:g} (python -m sponlib train)"
            )
        if self.trained_level(level) is not None:
            return None
        hi_index = int(np.searchsorted(self._grid, level))  # grid[hi - 1] < level < grid[hi]
        lo, hi = float(self._grid[hi_index - 1]), float(self._grid[hi_index])
        return lo, hi, (level - lo) / (hi - lo)

    def at(self, level: float) -> tuple[SponVectors, Thresholds]:
        """The vectors and thresholds at `level`: the trained pair at a trained level, else the
        interpolated pair (see the module docstring)."""
        blend = self.between(level)
        if blend is None:
            return self._trained[self.trained_level(level)]
        lo, hi, w = blend
        level = float(level)
        return self._vectors(level, lo, hi, w), self._thresholds(level, lo, hi, w)

    def _vectors(self, level: float, lo: float, hi: float, w: float) -> SponVectors:
        upper = self._trained[hi][0]
        lower = self._trained[lo][0] if lo > 0 else None  # below the lowest level: α_0 = 0
        if lower is None:
            alphas = {name: w * alpha for name, alpha in upper.alphas.items()}  # (in,) each
        else:
            alphas = {name: (1 - w) * lower.alphas[name] + w * alpha for name, alpha in upper.alphas.items()}
        neighbours = [upper.meta] + ([lower.meta] if lower is not None else [])
        common = {
            key: value
            for key, value in upper.meta.items()
            if key not in LEVEL_OWN_META and all(meta.get(key) == value for meta in neighbours)
        }
        interpolated = {"level": level, "between": [lo, hi], "weight": w}
        return SponVectors(alphas, {**common, "target": level, "interpolated": interpolated})

    def _thresholds(self, level: float, lo: float, hi: float, w: float) -> Thresholds:
        own = self.calibration.thresholds(level, self.rule)  # the mask's thresholds at `level`
        i = int(np.searchsorted(self._grid, hi))
        offsets = (1 - w) * self._offsets[i - 1] + w * self._offsets[i]  # (P,)
        # clamped at 0 (drops exact zeros only): a negative τ means the same; trained τ's are >= 0
        taus = {name: max(own.taus[name] + float(offset), 0.0) for name, offset in zip(self._names, offsets)}
        neighbours = [self._trained[t][1].calibration for t in (lo, hi) if t > 0]
        provenance = {k: v for k, v in neighbours[-1].items() if all(n.get(k) == v for n in neighbours)}
        provenance["spon_interpolated"] = {"between": [lo, hi], "weight": w}
        fingerprint = self._trained[hi][1].fingerprint
        return Thresholds(
            self.rule, level, {name: own.levels[name] for name in self._names}, taus, fingerprint, provenance
        )

    def __repr__(self) -> str:
        return f"SponLevels({self.rule}, trained at {', '.join(f'{t:g}' for t in self.levels)})"
