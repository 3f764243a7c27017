"""Model fingerprints: every thresholds, calibration or SPON file records the one of the model it
was made for, and is refused on any other (`check_fingerprint`)."""

from __future__ import annotations

import hashlib

import torch

from ..errors import FingerprintError
from .adapters import iter_projections
from .placement import onloaded


def model_fingerprint(model) -> dict:
    """What a thresholds or SPON file must match: architecture, projection shapes and a digest of
    the weights (first row of every projection, rounded to bfloat16 so that float32 and bfloat16
    loads of one checkpoint agree). `source` is informational."""
    projections = list(iter_projections(model))
    shapes = hashlib.sha256(
        ";".join(f"{p.name}:{p.in_features}x{p.out_features}" for p in projections).encode()
    ).hexdigest()
    weights = hashlib.sha256()
    with torch.no_grad():
        for p in projections:
            with onloaded(p.module):  # an offloaded weight is a meta tensor outside its forward
                row = p.module.weight[0].detach().to("cpu", torch.bfloat16).view(torch.int16)  # (in,)
            weights.update(row.numpy().tobytes())
    source = getattr(model, "sponlib_source", {})
    return {
        "architecture": type(model).__name__,
        "model_type": model.config.model_type,
        "blocks": len(projections) // 7,
        "shapes": shapes[:16],
        "weights": weights.hexdigest()[:16],
        "source": source.get("name", getattr(model, "name_or_path", "")),
    }


def check_fingerprint(expected: dict, model, what: str) -> None:
    """Raise a clear error if `model` is not the model `expected` was made for."""
    actual = model_fingerprint(model)
    differ = [k for k in ("architecture", "shapes", "weights") if expected.get(k) != actual[k]]
    if differ:
        raise FingerprintError(
            f"{what} was made for {expected.get('source') or '?'} ({expected.get('architecture')}, "
            f"{expected.get('blocks')} blocks) but this model is {actual['source'] or '?'} "
            f"({actual['architecture']}, {actual['blocks']} blocks): {', '.join(differ)} differ. "
            "Use a file made for this model, or make one (python -m sponlib calibrate --model ...)."
        )
