"""Compare the dense, masked and masked + SPON model on the same tokens, layer by layer: drift,
cosine, CKA and logit-lens KL of the residual stream, CKA between every pair of layers, and the
paths of the mean state through one PCA plane.

    variants = [Variant("dense"), Variant("masked", thresholds), Variant("spon", spon_thr, vectors.alphas)]
    captures = capture_variants(model, ids, variants, tokens=select_tokens(8, 512, 2048))
    per_layer = compare(model, captures["dense"], captures["masked"])   # metric -> L values
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InvalidArgumentError
from ..models.head import lens_logprobs
from ..progress import no_bars
from ..sparsity.sparsifier import Sparsifier
from ..sparsity.thresholds import Thresholds
from .capture import Capture, capture, select_tokens
from .metrics import (
    cka_matrix,
    cosine,
    kl_divergence,
    layer_drift,
    linear_cka,
    minibatch_cka,
    pca_fit,
    pca_project,
)

# The per-layer metrics, and the value each takes for the dense model itself.
METRICS = {
    "drift": "relative L2 drift ‖h − h_dense‖ / ‖h_dense‖ (0 = dense)",
    "cosine": "mean cosine with the dense state (1 = dense)",
    "cka": "linear CKA with the dense layer (1 = dense)",
    "cka_debiased": "minibatch CKA, unbiased HSIC (1 = dense)",
    "lens_kl": "KL(dense ‖ variant) of the logit-lens next-token distributions, nats (0 = dense)",
}
# Per-window only (sponlib.experiments.representation): CKA with the first position of each window kept.
WITH_FIRST_POSITION = {"cka_all_positions": "linear CKA over every position, the first of each window included"}
HIGHER_IS_CLOSER = {"cosine", "cka", "cka_debiased", "cka_all_positions"}


def distance(metric: str, value):
    """Every metric turned into a distance from dense: 0 at dense, larger is farther (a float or
    an array of them)."""
    return 1.0 - value if metric in HIGHER_IS_CLOSER else value


@dataclass
class Variant:
    """One way of running the model: dense, masked (thresholds), or masked + SPON (alphas too)."""

    name: str
    thresholds: Thresholds | None = None
    alphas: dict[str, torch.Tensor] | None = None

    @contextlib.contextmanager
    def active(self, model):
        """Hooks of this variant on `model` while inside; yields the Sparsifier (None for dense)."""
        if self.thresholds is None:
            yield None
            return
        with Sparsifier(model, self.thresholds, alphas=self.alphas) as sparsifier:
            yield sparsifier


def capture_variants(
    model,
    ids: torch.Tensor,
    variants: list[Variant],
    tokens: torch.Tensor | None = None,
    progress: bool = True,
    **capture_options,
) -> dict[str, Capture]:
    """One capture per variant on the same ids and token pairs. Each capture's `measured` holds
    the variant's measured sparsity (weighted by weights skipped; absent for dense)."""
    tokens = select_tokens(*ids.shape) if tokens is None else tokens
    captures = {}
    for variant in tqdm(variants, desc="capture", unit="variant", disable=no_bars(progress), leave=False):
        with variant.active(model) as sparsifier:
            captures[variant.name] = capture(model, ids, tokens=tokens, **capture_options)
        if sparsifier is not None:
            captures[variant.name].measured = sparsifier.summary()["weighted"]
    return captures


@torch.inference_mode()
def lens_kl_rows(
    model,
    dense: Capture,
    other: Capture,
    rows: torch.Tensor,
    reference: torch.Tensor | None = None,
    rows_per_pass: int = 1024,
) -> torch.Tensor:
    """KL(p_dense ‖ p_other) of the logit-lens next-token distributions of every block on the
    captured `rows` (n,): (L, n). Several layers go through the head in one matrix product.
    `reference`: the dense log-probabilities of those rows from `dense_lens`, when cached."""
    n = len(rows)
    per_pass = max(1, rows_per_pass // max(n, 1))  # layers per head pass
    out = []
    for first in range(0, dense.n_blocks, per_pass):
        layers = slice(first, min(first + per_pass, dense.n_blocks))
        p_ref = (
            lens_logprobs(model, torch.cat([h[rows] for h in dense.resid()[layers]]), chunk=rows_per_pass)
            if reference is None
            else reference[layers].reshape(-1, reference.shape[-1])
        )  # (k * n, V), layer-major
        # one head product for the pass: the larger, the closer to the CPU's peak
        p_other = lens_logprobs(model, torch.cat([h[rows] for h in other.resid()[layers]]), chunk=rows_per_pass)
        out.append(kl_divergence(p_ref, p_other, overwrite=True).view(-1, n))  # (k, n)
    return torch.cat(out)


def lens_kl(
    model,
    dense: Capture,
    other: Capture,
    max_tokens: int | None = 256,
    reference: torch.Tensor | None = None,
    rows_per_pass: int = 1024,
) -> list[float]:
    """Per block: mean KL(p_dense ‖ p_other) through the logit lens on the first `max_tokens`
    captured tokens (the last block's is the true output KL)."""
    rows = torch.arange(min(max_tokens or len(dense.tokens), len(dense.tokens)))
    return lens_kl_rows(model, dense, other, rows, reference, rows_per_pass).mean(dim=1).tolist()


def dense_lens(model, dense: Capture, max_tokens: int | None = 256) -> torch.Tensor:
    """Logit-lens log-probabilities of every block on the first `max_tokens` tokens: (L, n, V),
    worth caching when many variants are compared with one dense run (L * n * V floats)."""
    rows = slice(0, max_tokens)
    n = dense.resid()[0][rows].shape[0]
    return lens_logprobs(model, torch.cat([h[rows] for h in dense.resid()])).view(dense.n_blocks, n, -1)


def compare(
    model,
    dense: Capture,
    other: Capture,
    lens_tokens: int | None = 256,
    cka_batch: int = 256,
    reference_lens: torch.Tensor | None = None,
    metrics=tuple(METRICS),
) -> dict[str, list[float]]:
    """The `metrics` (default: all of METRICS), one value per block, on its output residual
    stream; with `model=None` or lens_tokens=0 the logit lens is left out. `reference_lens`:
    `dense_lens` of the same tokens, when cached."""
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise InvalidArgumentError(f"unknown metrics {sorted(unknown)}; choose from {', '.join(METRICS)}")
    pairs = list(zip(dense.resid(), other.resid()))
    per_pair = {
        "cosine": lambda d, o: cosine(o, d),
        "cka": linear_cka,
        "cka_debiased": lambda d, o: minibatch_cka(d, o, batch_size=cka_batch),
    }
    result = {name: [per_pair[name](d, o) for d, o in pairs] for name in metrics if name in per_pair}
    if "drift" in metrics:
        result["drift"] = layer_drift(other.resid(), dense.resid())
    if "lens_kl" in metrics and model is not None and lens_tokens != 0:
        result["lens_kl"] = lens_kl(model, dense, other, lens_tokens, reference=reference_lens)
    return {name: result[name] for name in metrics if name in result}  # in the order asked


def layer_cka_matrix(dense: Capture, other: Capture, max_tokens: int = 1024) -> np.ndarray:
    """CKA of dense block i with the other variant's block j: (L, L)."""
    return cka_matrix([h[:max_tokens] for h in dense.resid()], [h[:max_tokens] for h in other.resid()])


def pca_paths(captures: dict[str, Capture], reference: str = "dense", n_components: int = 2) -> dict:
    """Where each variant's mean state sits at every layer, in one PCA plane fitted on the
    reference variant's states of all layers. States are scaled to unit RMS per token first (what
    the next norm sees), else the deep layers' large norms would own the plane.
    -> {"paths": name -> (L, n_components), "explained": ratios of the components}"""

    def unit(states: torch.Tensor) -> torch.Tensor:  # (N, d) -> (N, d)
        return states / states.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-12)

    pooled = torch.cat([unit(h) for h in captures[reference].resid()])  # (L * N, d)
    pca = pca_fit(pooled, n_components)
    paths = {
        name: np.stack([pca_project(pca, unit(h)).mean(axis=0) for h in cap.resid()]) for name, cap in captures.items()
    }
    return {"paths": paths, "explained": pca.explained_variance_ratio_.tolist()}
