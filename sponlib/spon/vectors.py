"""Spontaneous neurons (SPON): one learnable, input-independent vector per sparsified projection.

A projection y = W x (+ b) run under a sparsifier S computes y = W (S(x) + α) (+ b), with α in the
projection's *input* space. Training (sponlib.spon.training) fits the α's; afterwards they fold into
the bias, b' = b + W α, so that the sparse model pays nothing extra at inference.

`SponVectors` holds the α's (float32, keyed by projection name) with their provenance, and
saves/loads them as safetensors whose metadata carries the model fingerprint, the mask rule, the
target sparsity, the hash of the thresholds file they were trained against, the training settings
and the validation KL. The thresholds travel next to the vectors as `<stem>.thresholds.json`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from ..errors import CorruptFileError, InvalidArgumentError
from ..io import atomic_write_bytes, sha256_file
from ..models.adapters import ROLES, iter_projections
from ..models.fingerprint import check_fingerprint, model_fingerprint
from ..models.placement import execution_device, is_offloaded
from ..sparsity.thresholds import Thresholds

FORMAT = "sponlib-spon/1"


def check_roles(roles) -> tuple[str, ...]:
    """Projection roles that get a vector, in ROLES order; a clear error for unknown ones."""
    roles = tuple(roles)
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise InvalidArgumentError(f"SPON roles must be a non-empty subset of {', '.join(ROLES)}; got {roles}")
    return tuple(r for r in ROLES if r in roles)


def thresholds_path(spon_path: str | os.PathLike) -> Path:
    """Where the thresholds of a SPON file live: `spon-teal-0.5.safetensors` ->
    `spon-teal-0.5.thresholds.json` in the same folder."""
    path = Path(spon_path)
    return path.with_name(path.name.removesuffix(".safetensors") + ".thresholds.json")


def ensure_bias(linear: nn.Linear) -> None:
    """Give `linear` a zero bias (frozen, like the weights) if it has none."""
    if linear.bias is None:
        weight = linear.weight
        linear.bias = nn.Parameter(
            torch.zeros(linear.out_features, dtype=weight.dtype, device=weight.device), requires_grad=False
        )


@dataclass
class SponVectors:
    """The α of every projection that has one, and where they came from."""

    alphas: dict[str, torch.Tensor]  # projection name -> (in_features,) float32
    meta: dict = field(default_factory=dict)  # fingerprint, method, target, thresholds, training

    @classmethod
    def zeros(cls, model: nn.Module, roles=ROLES) -> "SponVectors":
        """Zero vectors (the starting point: SPON at α = 0 is the plain mask) for the projections
        of `model` whose role is in `roles`, each on the device its projection computes on."""
        roles = check_roles(roles)
        alphas = {
            p.name: torch.zeros(p.in_features, dtype=torch.float32, device=execution_device(p.module))
            for p in iter_projections(model)
            if p.role in roles
        }
        return cls(alphas, {"fingerprint": model_fingerprint(model), "roles": list(roles)})

    def parameter_count(self) -> int:
        return sum(a.numel() for a in self.alphas.values())

    def share_of(self, model: nn.Module) -> float:
        """Parameters added, as a share of the model's own parameters."""
        return self.parameter_count() / sum(p.numel() for p in model.parameters())

    # ---------------------------------------------------------------- folding

    @torch.no_grad()
    def fold_into(self, model: nn.Module) -> nn.Module:
        """In place: b' = b + W α for every projection with a vector, creating zero biases where
        there were none. Run under the same thresholds (without α), the model then gives the same
        logits as the SPON model. Returns `model`."""
        projections = {p.name: p.module for p in iter_projections(model)}
        self._check_names(projections)
        for name, alpha in self.alphas.items():
            linear = projections[name]
            if is_offloaded(linear):  # its weight is a placeholder; a bias added there would be lost
                raise InvalidArgumentError(
                    f"{name} is offloaded by its device map: folding changes weights in "
                    "place, so load the model without CPU or disk offload to fold"
                )
            weight = linear.weight  # (out, in)
            shift = weight.double() @ alpha.to(weight.device, torch.float64)  # (out,), exact enough in fp64
            ensure_bias(linear)
            linear.bias.copy_((linear.bias.double() + shift).to(weight.dtype))
        return model

    def _check_names(self, projections) -> None:
        unknown = sorted(set(self.alphas) - set(projections))
        if unknown:
            raise InvalidArgumentError(f"these vectors name projections the model lacks, e.g. {unknown[0]}")

    # ---------------------------------------------------------------- files

    def save(self, path: str | os.PathLike) -> None:
        """Write the vectors atomically as safetensors, provenance in the metadata."""
        tensors = {name: a.detach().to("cpu", torch.float32).contiguous() for name, a in self.alphas.items()}
        atomic_write_bytes(path, save(tensors, metadata={"format": FORMAT, "meta": json.dumps(self.meta)}))

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | None = None) -> "SponVectors":
        """Read a SPON file; with `model`, refuse it unless it was trained for that model and every
        vector fits its projection."""
        if not os.path.isfile(path):
            raise InvalidArgumentError(f"SPON file {str(path)!r} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                if header.get("format") != FORMAT:
                    raise KeyError(f"format is {header.get('format')!r}, expected {FORMAT!r}")
                meta = json.loads(header["meta"])
                alphas = {name: f.get_tensor(name) for name in f.keys()}
        except (SafetensorError, OSError, KeyError, json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
            raise CorruptFileError(
                f"{path} is not a complete sponlib SPON file ({e}); train it again "
                "(python -m sponlib train ...) or copy it anew"
            ) from None
        vectors = cls(alphas, meta)
        if model is not None:
            vectors.check_model(model, f"SPON file {path}")
        return vectors

    def check_model(self, model: nn.Module, what: str = "these SPON vectors") -> None:
        """A clear error unless the vectors were trained for `model` and fit its projections."""
        check_fingerprint(self.meta.get("fingerprint", {}), model, what)
        projections = {p.name: p for p in iter_projections(model)}
        self._check_names(projections)
        for name, alpha in self.alphas.items():
            if alpha.shape != (projections[name].in_features,):
                raise InvalidArgumentError(
                    f"{what}: vector for {name} has shape {tuple(alpha.shape)}, the "
                    f"projection takes {projections[name].in_features} inputs"
                )
            if not torch.isfinite(alpha).all():
                raise CorruptFileError(f"{what}: vector for {name} holds NaN or infinite values")


def save_spon(vectors: SponVectors, thresholds: Thresholds, path: str | os.PathLike) -> None:
    """Write the thresholds next to the vectors, then the vectors with the thresholds' hash."""
    tpath = thresholds_path(path)
    thresholds.save(tpath)
    meta = {
        **vectors.meta,
        "method": thresholds.method,
        "target": thresholds.target,
        "thresholds": {"file": tpath.name, "sha256": sha256_file(tpath)},
    }
    SponVectors(vectors.alphas, meta).save(path)


def load_spon(path: str | os.PathLike, model: nn.Module | None = None) -> tuple[SponVectors, Thresholds]:
    """The vectors of a SPON file and the thresholds they were trained against (its sibling
    `.thresholds.json`, checked against the hash recorded in the SPON file)."""
    vectors = SponVectors.load(path, model)
    recorded = vectors.meta.get("thresholds", {})
    tpath = Path(path).with_name(recorded.get("file", thresholds_path(path).name))
    if not tpath.is_file():
        raise InvalidArgumentError(
            f"the thresholds of {path} should be in {tpath}, which does not exist; copy it along with the SPON file"
        )
    if sha256_file(tpath) != recorded.get("sha256"):
        raise InvalidArgumentError(
            f"{tpath} is not the thresholds file {path} was trained against "
            "(sha256 differs); use the file written with it, or train again"
        )
    return vectors, Thresholds.load(tpath, model)
