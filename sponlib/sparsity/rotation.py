"""LaRoSA's rotations: each residual-stream input of a block expressed in the PCA basis of what it
sees on calibration text, so that a per-token Top-K keeps more of it than Top-K on raw channels.

For the inputs q/k/v share (the normed residual before attention) and the one gate/up share (the
normed residual before the MLP), Q is the orthogonal matrix of eigenvectors of the inputs'
covariance, by decreasing eigenvalue. The mask then feeds W

    S(x) = Q TopK(Qᵀ x)          (Top-K per token, K = in − round(level · in))

and W S(x) = (W Q) TopK(Qᵀ x): with W Q folded into the weights offline, a skipped rotated channel
skips one column of W Q, the same bytes a skipped teal channel saves. What it costs is the
rotation of the input: a deployment folds Qᵀ into whatever writes the residual stream (the
embeddings, o and down, with an adapter Q_aᵀ Q_b between sublayers of different rotations: about
d² multiply-adds per sublayer and token). sponlib never rewrites a model's forward, so it applies
Qᵀ in the projection's hook instead: `fold_rotations` is that folded form, and the tests check it
gives the dense model's logits. o and down read inputs no earlier weight can rotate for free (a
mix of heads, a product of gate and up), so they keep their own basis: Top-K on raw inputs.

SPON vectors stay in each projection's own input basis (S(x) + α), so folding them into a bias
is the same for every rule.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from tqdm.auto import tqdm

from ..data import load_corpus, load_windows
from ..errors import CorruptFileError, InvalidArgumentError
from ..io import atomic_write_bytes
from ..models.adapters import block_projections
from ..models.fingerprint import check_fingerprint, model_fingerprint
from ..models.hooks import HookSet
from ..models.placement import input_device
from ..progress import no_bars
from .rules import topk_input

ROTATED_GROUPS: tuple[tuple[str, ...], ...] = (("q", "k", "v"), ("gate", "up"))  # the residual-stream inputs
ROTATION_WINDOWS = 16  # calibration windows the covariances are taken over (8k tokens of 512)
FORMAT = "sponlib-rotations/1"


class Rotations:
    """One orthogonal matrix per rotated input of a model: projection name -> Q (in, in), the
    projections of a shared input holding the same tensor."""

    def __init__(self, matrices: dict[str, torch.Tensor], groups: list[list[str]], fingerprint: dict, meta: dict):
        self.matrices, self.groups, self.fingerprint, self.meta = matrices, groups, fingerprint, meta
        self._digest: str | None = None

    def digest(self) -> str:
        """sha256 of the matrices in float32, group by group: what a SPON file trained on them records.
        Hashed once: every larosa mask records it, and a run builds many."""
        if self._digest is None:
            h = hashlib.sha256()
            for group in self.groups:
                h.update(self.matrices[group[0]].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._digest = h.hexdigest()
        return self._digest

    def describe(self) -> dict:
        return {**self.meta, "sha256": self.digest()}

    def save(self, path: str | os.PathLike) -> None:
        tensors = {group[0]: self.matrices[group[0]].to("cpu", torch.float64).contiguous() for group in self.groups}
        header = {"format": FORMAT, "groups": self.groups, "fingerprint": self.fingerprint, "meta": self.meta}
        atomic_write_bytes(path, save(tensors, metadata={"sponlib": json.dumps(header)}))

    @classmethod
    def load(cls, path: str | os.PathLike, model=None) -> "Rotations":
        if not os.path.isfile(path):
            raise InvalidArgumentError(f"rotations file {str(path)!r} does not exist")
        try:
            with safe_open(path, framework="pt") as f:
                header = json.loads(f.metadata()["sponlib"])
                if header.get("format") != FORMAT:
                    raise KeyError("format")
                matrices = {}
                for group in header["groups"]:
                    q = f.get_tensor(group[0])
                    matrices.update(dict.fromkeys(group, q))
        except (SafetensorError, KeyError, TypeError, ValueError, OSError) as e:
            raise CorruptFileError(
                f"{path} is not a complete sponlib rotations file ({type(e).__name__}: {e}); make it again"
            ) from None
        if model is not None:
            check_fingerprint(header["fingerprint"], model, f"rotations file {path}")
        return cls(matrices, header["groups"], header["fingerprint"], header["meta"])


def principal_axes(total: torch.Tensor, outer: torch.Tensor, count: int) -> torch.Tensor:
    """Eigenvectors of the covariance from the sums of x (in,) and x xᵀ (in, in) over `count`
    tokens, by decreasing eigenvalue, each signed so its largest entry is positive (a rotation
    the same on any machine up to rounding). -> (in, in) float64, columns orthonormal (kept in
    float64: rounded to float32, Q Qᵀ misses I by 1e-7, more than the fold's own arithmetic)"""
    mean = total / count
    covariance = outer / count - torch.outer(mean, mean)
    _, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues, float64
    vectors = vectors.flip(-1)
    largest = vectors.abs().argmax(dim=0)  # (in,)
    signs = torch.sign(vectors[largest, torch.arange(vectors.shape[1])])
    return vectors * signs


@torch.no_grad()  # not inference_mode: the rotations take part in training graphs later
def pca_rotations(model, ids: torch.Tensor, batch_size: int = 4, progress: bool = True, meta=None) -> Rotations:
    """The rotation of every residual-stream input of `model`, from a dense pass over `ids` (N, L)."""
    sums: dict[str, list] = {}  # group head -> [sum x (in,), sum x xᵀ (in, in), tokens], float64
    groups = []
    with HookSet() as hooks:
        for block in block_projections(model):
            for roles in ROTATED_GROUPS:
                members = [block[role] for role in roles if role in block]
                head = members[0]
                groups.append([p.name for p in members])
                n = head.in_features
                sums[head.name] = [torch.zeros(n, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64), 0]

                def hook(module, args, acc=sums[head.name]):
                    x = args[0].detach().reshape(-1, args[0].shape[-1]).double()  # (tokens, in)
                    acc[0] += x.sum(0).cpu()
                    acc[1] += (x.T @ x).cpu()
                    acc[2] += x.shape[0]

                hooks.pre(head.module, hook)
        device = input_device(model)
        for start in tqdm(
            range(0, ids.shape[0], batch_size), desc="rotations", unit="batch", disable=no_bars(progress), leave=False
        ):
            model(input_ids=ids[start : start + batch_size].to(device), use_cache=False, logits_to_keep=1)
    matrices = {}
    for group in groups:
        total, outer, count = sums[group[0]]
        matrices.update(dict.fromkeys(group, principal_axes(total, outer, count)))
    about = {"windows": int(ids.shape[0]), "window_len": int(ids.shape[1]), **(meta or {})}
    return Rotations(matrices, groups, model_fingerprint(model), about)


def text_rotations(
    model, tokenizer, corpus: str, windows: int = ROTATION_WINDOWS, window_len: int = 512, seed: int = 0
):
    """The rotations from `windows` windows of a named corpus (e.g. a calibration's own text)."""
    ids = load_windows(load_corpus(corpus), tokenizer, window_len, windows, seed).ids  # (N, L)
    meta = {"corpus": corpus, "seed": seed}
    return pca_rotations(model, ids, progress=False, meta=meta)


def rotated_topk(x: torch.Tensor, keep: int, rotation: torch.Tensor | None) -> torch.Tensor:
    """Q TopK(Qᵀ x) per token, or TopK(x) without a rotation. (..., in) -> (..., in)"""
    if rotation is None:
        return topk_input(x, keep)
    q = rotation.to(x.device, x.dtype)  # (in, in)
    return topk_input(x @ q, keep) @ q.T  # a row vector's Qᵀx is x Q


@contextlib.contextmanager
def fold_rotations(model, rotations: Rotations):
    """The folded form, while inside: every rotated projection's weight replaced by W Q and its
    input rotated to x Q by a hook that runs before any mask (standing in for the residual
    adapters a deployment folds it into). The dense model's outputs are unchanged; a larosa mask
    then needs no rotation of its own (`Thresholds.bases` empty, rule_settings rotation "folded").
    The original weights are restored exactly on exit."""
    saved = {}
    with HookSet() as hooks:
        try:
            for block in block_projections(model):
                for p in block.values():
                    q = rotations.matrices.get(p.name)
                    if q is None:
                        continue
                    weight = p.module.weight
                    saved[p.name] = (weight, weight.detach().clone())
                    with torch.no_grad():
                        weight.copy_((weight.double() @ q.to(weight.device, torch.float64)).to(weight.dtype))
                    rotate = q.to(weight.device)
                    hooks.pre(
                        p.module, lambda m, args, q=rotate: (args[0] @ q.to(args[0].dtype),) + args[1:], prepend=True
                    )
            yield model
        finally:
            with torch.no_grad():
                for weight, original in saved.values():
                    weight.copy_(original)


def check_rotations(rotations: Rotations, projections: dict) -> None:
    """Every rotated input of the model has a square rotation of its width."""
    for name, p in projections.items():
        if p.role not in {r for g in ROTATED_GROUPS for r in g}:
            continue
        q = rotations.matrices.get(name) if rotations is not None else None
        if q is None:
            raise InvalidArgumentError(
                f"larosa needs a rotation for {name}: make them with sponlib.sparsity.pca_rotations(model, ids) "
                "and attach them (Thresholds.with_rotations); the command line makes them from the calibration text"
            )
        if q.shape != (p.in_features, p.in_features):
            raise InvalidArgumentError(
                f"the rotation for {name} is {tuple(q.shape)}, the projection takes {p.in_features} inputs"
            )
