"""The one place that turns what a user names into the mask a model runs under.

A mask is thresholds (one τ per projection) and, for SPON, the vectors trained with them. Users
name it in one of four ways, and every interface (the command line, the lm-eval adapter, the
dashboards, the notebooks) goes through `resolve_mask`, so each combination means the same
everywhere and a bad one fails with the same message:

    resolve_mask(model)                                    dense: no mask
    resolve_mask(model, 0.5)                               teal at 0.5, from the shipped calibration
    resolve_mask(model, 0.5, "wina", calibration="c.safetensors")   ... or from a calibration file
    resolve_mask(model, thresholds="export/sparsity_thresholds.json")  a thresholds file
    resolve_mask(model, spon="spon-teal-0.5.safetensors")  SPON vectors with their own thresholds
    resolve_mask(model, 0.5, spon="shipped")               the vectors shipped for a known model
    resolve_mask(model, 0.45, spon="shipped")              ... interpolated between the shipped levels

    with mask.applied(model) as sparsifier:
        logits = model(ids).logits

A calibration, a thresholds file and a SPON file are three sources of thresholds: give one. A file
brings its own sparsity and rule; naming them too is a check that they agree (a SPON file is
trained for one level: SPON at another level comes from spon="shipped", or from several trained
files through sponlib.spon.SponLevels). `MaskRequest` checks a request without a model, so that a
bad one fails before anything loads.

spon="shipped" at a level with no shipped file, but between level 0 and the highest shipped one,
interpolates the shipped vectors of the rule (sponlib.spon.levels): `Mask.source` then says
`"spon_interpolated": {"between": [lo, hi], "weight": w}` and names the files blended.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Union

from torch import nn

from .artifacts import (
    artifacts_dir,
    found_spon_files,
    model_name,
    shipped_calibration,
    shipped_calibration_path,
    shipped_spon_levels,
)
from .errors import InvalidArgumentError
from .models.gguf import KNOWN_MODELS
from .paths import display_path
from .sparsity.calibration import Calibration
from .sparsity.rotation import ROTATION_WINDOWS, text_rotations
from .sparsity.rules import check_sparsity, split_method
from .sparsity.sparsifier import Sparsifier
from .sparsity.thresholds import Thresholds
from .spon.levels import SAME_LEVEL
from .spon.vectors import SponVectors, load_spon

DEFAULT_RULE = "teal"
SHIPPED = "shipped"  # spon=SHIPPED: the vectors shipped for a known model at the named sparsity
OTHER_LEVEL_HINT = (
    "; for SPON at the sparsity and rule named, use spon='shipped' (--spon shipped: a known model's "
    "shipped vectors, interpolated between their levels) or files trained for that rule at several levels "
    "(sponlib.spon.SponLevels)"
)

CalibrationSource = Union[Calibration, str, os.PathLike, None]


@dataclass(frozen=True)
class Mask:
    """What a model runs under: nothing (dense), thresholds, or thresholds and SPON vectors."""

    thresholds: Thresholds | None = None
    spon: SponVectors | None = None
    source: dict = field(default_factory=dict)  # the files it came from, for records

    @property
    def dense(self) -> bool:
        return self.thresholds is None

    @property
    def rule(self) -> str:
        return "dense" if self.dense else self.thresholds.method

    @property
    def sparsity(self) -> float:
        return 0.0 if self.dense else self.thresholds.target

    @property
    def alphas(self) -> dict | None:
        return None if self.spon is None else self.spon.alphas

    def describe(self) -> dict:
        """For records: rule, target sparsity, whether SPON is on, and the files."""
        return {"method": self.rule, "sparsity": self.sparsity, "spon": self.spon is not None, **self.source}

    def sparsifier(self, model: nn.Module, **options) -> Sparsifier | None:
        """A Sparsifier of this mask on `model` (not attached yet), or None for the dense model."""
        return None if self.dense else Sparsifier(model, self.thresholds, alphas=self.alphas, **options)

    @contextlib.contextmanager
    def applied(self, model: nn.Module):
        """The mask's hooks on `model` while inside; yields the Sparsifier (None for dense)."""
        sparsifier = self.sparsifier(model)
        if sparsifier is None:
            yield None
            return
        with sparsifier:
            yield sparsifier


@dataclass(frozen=True)
class MaskRequest:
    """A mask as a user names it, checked on creation (no model needed).

    sparsity     target share of inputs zeroed, in [0, 1); None: dense, unless a file brings one
    rule         mask rule (sponlib.sparsity.METHODS); None: teal, or the file's own
    calibration  a Calibration or its file; None: the calibration shipped for a known model
    thresholds   a Thresholds, or a thresholds file (e.g. an export's sparsity_thresholds.json)
    spon         a SPON file (its thresholds come with it), or "shipped" for the shipped vectors
                 at `sparsity` (interpolated between the shipped levels where none is trained there)
    """

    sparsity: float | None = None
    rule: str | None = None
    calibration: CalibrationSource = None
    thresholds: Thresholds | str | os.PathLike | None = None
    spon: str | os.PathLike | None = None

    def __post_init__(self):
        if self.sparsity is not None:
            object.__setattr__(self, "sparsity", check_sparsity(self.sparsity))
        if self.rule is not None:
            split_method(self.rule)
        given = [
            what
            for what, value in (
                ("a SPON file", self.spon),
                ("a thresholds file", self.thresholds),
                ("a calibration", self.calibration),
            )
            if value is not None
        ]
        if len(given) > 1:
            raise InvalidArgumentError(
                f"{' and '.join(given)} were both given: give one source of thresholds "
                "only (a SPON or thresholds file brings its own; a calibration gives them "
                "at a sparsity)"
            )
        if self.spon == SHIPPED and self.sparsity is None:
            raise InvalidArgumentError(
                "spon='shipped' picks the shipped vectors by level: name the sparsity too (e.g. 0.5)"
            )
        if self.calibration is not None and self.sparsity is None:
            raise InvalidArgumentError(
                "a calibration without a sparsity: the dense model needs no thresholds; name the sparsity (e.g. 0.5)"
            )
        if self.rule is not None and self.sparsity is None and not given:
            raise InvalidArgumentError(
                f"mask rule {self.rule} without a sparsity or a thresholds or SPON file: the "
                "dense model has no mask rule; name the sparsity (e.g. 0.5)"
            )

    @property
    def needs_calibration(self) -> bool:
        """True when the thresholds come from a calibration (a sparsity, and no file of thresholds)."""
        return self.sparsity is not None and self.spon is None and self.thresholds is None

    def resolve(self, model: nn.Module) -> Mask:
        """The mask on `model`; every file is checked against the model's fingerprint."""
        if self.spon == SHIPPED:
            return self._shipped(model)
        if self.spon is not None:
            return self._spon_file(Path(self.spon), model)
        if self.thresholds is not None:
            if isinstance(self.thresholds, Thresholds):
                self._check_agrees("these thresholds", self.thresholds)
                return Mask(self.thresholds)
            thresholds = Thresholds.load(self.thresholds, model)
            self._check_agrees(f"thresholds file {self.thresholds}", thresholds)
            return Mask(thresholds, source={"thresholds_file": display_path(self.thresholds)})
        if self.sparsity is None:
            return Mask()
        calibration, source = self._calibration(model)
        return Mask(calibration.thresholds(self.sparsity, self.rule or DEFAULT_RULE), source=source)

    def _spon_file(self, path: Path, model: nn.Module) -> Mask:
        vectors, thresholds = load_spon(path, model)
        self._check_agrees(f"SPON file {path}", thresholds, hint=OTHER_LEVEL_HINT)
        return Mask(thresholds, vectors, {"spon_file": display_path(path)})

    def _shipped(self, model: nn.Module) -> Mask:
        """The shipped file at the level, or the shipped files of the rule interpolated there."""
        if model_name(model) not in KNOWN_MODELS:  # a folder or hub id: no artifacts folder has its name
            raise InvalidArgumentError(
                f"spon='shipped': SPON vectors ship for the known models "
                f"({', '.join(KNOWN_MODELS)}) only; name a file trained for this model"
            )
        rule, level, folder = self.rule or DEFAULT_RULE, self.sparsity, artifacts_dir(model)
        files = found_spon_files(folder, rule)
        exact = [path for trained, path in files.items() if abs(trained - level) <= SAME_LEVEL]
        if exact:
            return self._spon_file(exact[0], model)
        if not files or level > max(files):
            raise InvalidArgumentError(
                f"no SPON vectors for {rule} at {level:g} in {display_path(folder)} "
                f"(found: {', '.join(f'{t:g}' for t in files) or 'none'}); shipped vectors are interpolated "
                "between level 0 and the highest shipped level only: pick a level in that range, or train "
                f"vectors at {level:g} (python -m sponlib train) and name the file"
            )
        levels = shipped_spon_levels(model, rule)
        vectors, thresholds = levels.at(level)
        lo, hi, weight = levels.between(level)
        source = {
            "spon_interpolated": {"between": [lo, hi], "weight": weight},
            "spon_files": [display_path(files[trained]) for trained in (lo, hi) if trained > 0],
            "calibration_file": display_path(shipped_calibration_path(model)),
        }
        return Mask(thresholds, vectors, source)

    def _calibration(self, model: nn.Module) -> tuple[Calibration, dict]:
        source = self.calibration
        if source is None:
            return shipped_calibration(model), {"calibration_file": display_path(shipped_calibration_path(model))}
        if isinstance(source, Calibration):
            return source, {}
        return Calibration.load(source, model), {"calibration_file": display_path(source)}

    def _check_agrees(self, what: str, thresholds: Thresholds, hint: str = "") -> None:
        """A file's own sparsity and rule against the ones named with it, if any (`hint`: what
        to do instead, appended to the message)."""
        if self.sparsity is not None and abs(self.sparsity - thresholds.target) > SAME_LEVEL:
            raise InvalidArgumentError(
                f"{what} was made for sparsity {thresholds.target:g}, not {self.sparsity:g}: "
                f"leave the sparsity out (the file brings its thresholds) or use a matching file{hint}"
            )
        if self.rule is not None and self.rule != thresholds.method:
            raise InvalidArgumentError(
                f"{what} was made for mask rule {thresholds.method}, not {self.rule}: leave the rule out "
                f"or use a matching file{hint}"
            )


def with_rotations(mask: Mask, model: nn.Module, tokenizer) -> Mask:
    """A larosa mask with its rotations attached: made again from the text its thresholds name
    (a SPON file records the corpus, windows and seed it was trained with), else from the first
    windows of the calibration text. Other masks are returned as they are."""
    thresholds = mask.thresholds
    if thresholds is None or thresholds.method != "larosa" or thresholds.rotations is not None:
        return mask
    made = thresholds.rule_settings.get("rotation") or {}
    corpus = made.get("corpus", thresholds.calibration.get("corpus"))
    if corpus is None:
        raise InvalidArgumentError(
            "these larosa thresholds name no text to make their rotations from: attach them yourself "
            "(thresholds.with_rotations(sponlib.sparsity.rotation.pca_rotations(model, ids)))"
        )
    rotations = text_rotations(
        model,
        tokenizer,
        corpus,
        made.get("windows", ROTATION_WINDOWS),
        made.get("window_len", thresholds.calibration.get("window_len", 512)),
        made.get("seed", thresholds.calibration.get("seed", 0)),
    )
    return replace(mask, thresholds=thresholds.with_rotations(rotations))


def resolve_mask(
    model: nn.Module,
    sparsity: float | None = None,
    rule: str | None = None,
    *,
    calibration: CalibrationSource = None,
    thresholds=None,
    spon=None,
) -> Mask:
    """The mask these arguments name on `model` (see MaskRequest for each argument)."""
    return MaskRequest(sparsity, rule, calibration, thresholds, spon).resolve(model)
