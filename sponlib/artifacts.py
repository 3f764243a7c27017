"""The artifacts shipped for a known model: `data/artifacts/<model>/` holds its calibration
(`calibration.safetensors`) and the SPON vectors trained for it (`spon-<rule>-<level>.safetensors`,
each with its `.thresholds.json`).

    calibration = shipped_calibration(model)
    spon = shipped_spon(model, "teal")     # {("teal", 0.5): (thresholds, alphas), ...}
    levels = shipped_spon_levels(model, "teal")   # SponLevels: SPON at any level up to the highest

Notebooks, benchmarks and the mask resolver (sponlib.masks) read them through here, so that every
reader finds the same files and a missing one fails with the command that makes it.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from .errors import InvalidArgumentError
from .paths import data_dir
from .sparsity.calibration import Calibration
from .spon.levels import SponLevels
from .spon.vectors import load_spon


def model_name(model: nn.Module) -> str:
    """The known name a model was loaded under (`load_model("smollm2-135m")`), or ''."""
    return getattr(model, "sponlib_source", {}).get("name", "")


def artifacts_dir(model: nn.Module | str) -> Path:
    """data/artifacts/<name> for a model (or a known model's name)."""
    name = model if isinstance(model, str) else model_name(model)
    if not name:
        raise InvalidArgumentError(
            "artifacts are shipped for known models only (load it by name, e.g. "
            "load_model('smollm2-135m')); pass the files' paths instead"
        )
    return data_dir() / "artifacts" / name


def shipped_calibration_path(model: nn.Module) -> Path | None:
    """The shipped calibration file of a known model, or None when there is none."""
    name = model_name(model)
    path = data_dir() / "artifacts" / name / "calibration.safetensors"
    return path if name and path.is_file() else None


def shipped_calibration(model: nn.Module) -> Calibration:
    """The shipped calibration, checked against the model's fingerprint."""
    path = shipped_calibration_path(model)
    if path is None:
        raise InvalidArgumentError(
            f"no calibration shipped for {model_name(model) or 'this model'}; make one "
            "with `python -m sponlib calibrate --out FILE` and load it with Calibration.load"
        )
    return Calibration.load(path, model)


def found_spon_files(folder: str | os.PathLike, rule: str) -> dict[float, Path]:
    """level -> spon-<rule>-<level>.safetensors for every level in `folder`, sorted by level
    (empty when there is none)."""
    prefix, found = f"spon-{rule}-", {}
    for path in Path(folder).glob(f"{prefix}*.safetensors"):
        try:
            found[float(path.name[len(prefix) : -len(".safetensors")])] = path
        except ValueError:  # e.g. spon-teal-0.5-longer.safetensors: not a plain level
            continue
    return dict(sorted(found.items()))


def spon_files(folder: str | os.PathLike, rule: str, levels=None) -> dict[float, Path]:
    """level -> spon-<rule>-<level>.safetensors in `folder`, sorted by level: the asked levels
    (each must exist), or every level found."""
    found = found_spon_files(folder, rule)
    if levels is None:
        if not found:
            raise InvalidArgumentError(
                f"no spon-{rule}-<level>.safetensors in {folder}; train some with "
                "`python -m sponlib train` or name another folder"
            )
        return found
    missing = [level for level in levels if level not in found]
    if missing:
        raise InvalidArgumentError(
            f"no SPON vectors for {rule} at {', '.join(map(str, missing))} in {folder} "
            f"(found: {', '.join(map(str, sorted(found))) or 'none'})"
        )
    return {level: found[level] for level in sorted(levels)}


def shipped_spon(model: nn.Module, rule: str = "teal", levels=None, folder=None) -> dict[tuple[str, float], tuple]:
    """(rule, level) -> (thresholds, alphas) for every shipped SPON file of `rule` (or the asked
    levels), in the form `LayerAnalysis(spon=...)` takes; each file is checked against the model.
    These are the trained levels only; `shipped_spon_levels` gives SPON at the levels between."""
    files = spon_files(folder or artifacts_dir(model), rule, levels)
    loaded = {}
    for level, path in files.items():
        vectors, thresholds = load_spon(path, model)
        loaded[(rule, level)] = (thresholds, vectors.alphas)
    return loaded


def shipped_spon_levels(
    model: nn.Module, rule: str = "teal", calibration: Calibration | None = None, folder=None
) -> SponLevels:
    """`SponLevels` of every shipped SPON file of `rule` (or those in `folder`) with the shipped
    calibration (or `calibration`): SPON at any level up to the highest trained one, interpolated
    between trained levels; `LayerAnalysis(spon_levels=...)` takes it. Each file is checked
    against the model."""
    files = spon_files(folder or artifacts_dir(model), rule)
    return SponLevels.from_files(calibration or shipped_calibration(model), files, model)
