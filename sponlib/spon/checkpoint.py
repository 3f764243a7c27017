"""Checkpoints of a SPON training run: written atomically, refused when damaged or made by another
run, so that an interrupted run resumes bit for bit and never from someone else's state.
"""

from __future__ import annotations

import hashlib
import io
import json

import torch

from ..errors import CorruptFileError, InvalidArgumentError
from ..io import atomic_write_bytes


def run_key(*parts) -> str:
    """A short digest of a run's settings, data and starting point: a checkpoint resumes only the
    run with the same key."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            h.update(part.cpu().numpy().tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True).encode())
    return h.hexdigest()[:16]


def save_checkpoint(path: str, state: dict) -> None:
    """Write a training state atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str, key: str) -> dict:
    """A training state, refused when damaged or made by another run (`key`)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        found = state["run_key"]
    except Exception as e:  # torch raises many types for a damaged file
        raise CorruptFileError(
            f"checkpoint {path} is damaged ({type(e).__name__}: {e}); delete it to start afresh"
        ) from None
    if found != key:
        raise InvalidArgumentError(
            f"checkpoint {path} belongs to another run (other settings, data, thresholds or model); "
            "delete it, or train with restart=True (--restart) to start afresh"
        )
    return state
