"""How far apart two sets of representations are: relative drift, cosine, linear CKA (plain,
debiased, minibatch), PCA, and the KL divergence between next-token distributions.

Every function takes states as (N, d) tensors whose rows are the same N tokens in both
arguments (paired), except CKA, which only needs the same tokens in the same order and compares
the geometry of the two sets, so d may differ. Pure tensor maths, no model.

CKA (Kornblith et al., 2019) with linear kernels:
    CKA(X, Y) = ‖Ycᵀ Xc‖²_F / (‖Xcᵀ Xc‖_F ‖Ycᵀ Yc‖_F),  Xc, Yc column-centred.
It is invariant to orthogonal transforms and isotropic scaling of either side, which is why it
saturates near 1 for a model and a slightly perturbed copy of itself. The plain estimator is
biased upwards for few tokens; `debiased_cka` uses the unbiased HSIC estimator (Song et al., 2012)
and `minibatch_cka` averages it over minibatches (Nguyen et al., 2021) for many tokens.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidArgumentError, NumericalError

NON_FINITE_STATES = "NaN or infinite states: the sparse model diverged or the dtype overflowed"


def _same_shape(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.shape != b.shape or a.dim() != 2 or a.shape[0] == 0:
        raise InvalidArgumentError(
            f"expected two (N, d) tensors of one shape with N >= 1; got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return a, b


def _paired(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _same_shape(a, b)
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise NumericalError(NON_FINITE_STATES)
    return a.double(), b.double()


def _token_drift(h: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(N, d), (N, d) -> () mean over tokens of ‖h − h_ref‖ / ‖h_ref‖, in the inputs' dtype."""
    return ((h - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-12)).mean()


def relative_drift(states: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over tokens of ‖h − h_ref‖ / ‖h_ref‖. Per token, then averaged, so that the few
    tokens with huge residual norms (the first position of a window) do not dominate."""
    return float(_token_drift(*_paired(states, reference)))


def cosine(states: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over tokens of the cosine between h and h_ref."""
    h, ref = _paired(states, reference)
    return float(F.cosine_similarity(h, ref, dim=1, eps=1e-12).mean())


def layer_drift(states: list[torch.Tensor], reference: list[torch.Tensor]) -> list[float]:
    """`relative_drift` of each pair of (N, d) states, e.g. every layer of a run against dense's,
    in float32 (or the states' wider dtype): equal up to rounding, and an order of magnitude faster
    than float64 copies of every layer. NaN or infinite states show in the result, checked once."""
    if len(states) != len(reference):
        raise InvalidArgumentError(f"expected as many states as references; got {len(states)} and {len(reference)}")
    drifts = []
    for h, ref in zip(states, reference):
        h, ref = _same_shape(h, ref)
        dtype = torch.promote_types(h.dtype, torch.float32)
        drifts.append(_token_drift(h.to(dtype), ref.to(dtype)))  # ()
    drift = torch.stack(drifts).double()  # (L,)
    if not torch.isfinite(drift).all():
        raise NumericalError(NON_FINITE_STATES)
    return drift.tolist()


def _two_sets(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise InvalidArgumentError(
            f"CKA needs (N, d1) and (N, d2) states of the same N tokens; got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[0] < 4:
        raise InvalidArgumentError(f"CKA needs at least 4 tokens; got {x.shape[0]}")
    return x, y


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of (N, d1) and (N, d2) states in float64: through d x d cross-covariances, or
    through N x N Gram matrices when there are fewer tokens than features (cheaper then)."""
    x, y = _two_sets(x, y)
    xc = x.double() - x.double().mean(0)  # (N, d1)
    yc = y.double() - y.double().mean(0)  # (N, d2)
    if x.shape[0] < max(x.shape[1], y.shape[1]):
        gram_x, gram_y = xc @ xc.T, yc @ yc.T  # (N, N) each
        cross, norms = (gram_x * gram_y).sum(), gram_x.norm() * gram_y.norm()
    else:
        cross = (yc.T @ xc).square().sum()  # ‖Ycᵀ Xc‖²_F
        norms = (xc.T @ xc).norm() * (yc.T @ yc).norm()
    return float(cross / norms) if norms > 0 else float("nan")


def _unbiased_hsic(gram_x: torch.Tensor, gram_y: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC estimator of two (n, n) Gram matrices, K and L in Song et al. (2012), up to a
    constant factor that cancels in CKA. Needs n >= 4."""
    n = gram_x.shape[0]
    k = gram_x - torch.diag(torch.diag(gram_x))  # zero diagonals
    m = gram_y - torch.diag(torch.diag(gram_y))
    ones = torch.ones(n, dtype=k.dtype, device=k.device)
    trace = (k * m).sum()
    middle = (ones @ k @ ones) * (ones @ m @ ones) / ((n - 1) * (n - 2))
    last = 2.0 * (ones @ k) @ (m @ ones) / (n - 2)
    return (trace + middle - last) / (n * (n - 3))


def _gram(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x @ x.T  # (n, n)


def debiased_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA with the unbiased HSIC estimator on all N tokens ((N, N) Gram matrices: keep N
    to a few thousand, or use `minibatch_cka`)."""
    x, y = _two_sets(x, y)
    gram_x, gram_y = _gram(x), _gram(y)
    denominator = torch.sqrt(_unbiased_hsic(gram_x, gram_x) * _unbiased_hsic(gram_y, gram_y))
    return float(_unbiased_hsic(gram_x, gram_y) / denominator) if denominator > 0 else float("nan")


def minibatch_cka(x: torch.Tensor, y: torch.Tensor, batch_size: int = 256, seed: int = 0) -> float:
    """CKA from unbiased HSIC averaged over seeded minibatches of `batch_size` tokens (Nguyen et
    al., 2021): memory O(batch_size²) however many tokens."""
    x, y = _two_sets(x, y)
    if batch_size < 4:
        raise InvalidArgumentError(f"batch_size must be at least 4; got {batch_size}")
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    xy = xx = yy = torch.zeros((), dtype=torch.float64)
    for start in range(0, len(order) - batch_size + 1, batch_size):  # full batches only
        rows = order[start : start + batch_size]
        gram_x, gram_y = _gram(x[rows]), _gram(y[rows])
        xy = xy + _unbiased_hsic(gram_x, gram_y)
        xx, yy = xx + _unbiased_hsic(gram_x, gram_x), yy + _unbiased_hsic(gram_y, gram_y)
    if xx == 0:  # fewer tokens than one batch
        return debiased_cka(x, y)
    return float(xy / torch.sqrt(xx * yy))


def cka_matrix(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> np.ndarray:
    """Linear CKA of every pair (xs[i], ys[j]): (len(xs), len(ys)). Through normalised centred
    Gram matrices in one matrix product when there are few tokens, pair by pair otherwise."""
    if not xs or not ys:
        raise InvalidArgumentError("cka_matrix needs at least one state on each side")
    n = xs[0].shape[0]
    if n > 1024:
        return np.array([[linear_cka(x, y) for y in ys] for x in xs])

    def flat_grams(states):
        grams = []
        for s in states:
            s = _two_sets(s, xs[0])[0].double()
            s = s - s.mean(0)  # (N, d)
            gram = s @ s.T  # (N, N)
            grams.append((gram / gram.norm().clamp_min(1e-300)).reshape(-1))
        return torch.stack(grams)  # (layers, N * N)

    return (flat_grams(xs) @ flat_grams(ys).T).numpy()  # ⟨K̂x, K̂y⟩_F = CKA


def pca_fit(reference: torch.Tensor, n_components: int = 2):
    """A scikit-learn PCA fitted on (N, d) reference states (the dense model's)."""
    from sklearn.decomposition import PCA

    reference = torch.as_tensor(reference)
    if reference.dim() != 2 or reference.shape[0] < n_components:
        raise InvalidArgumentError(f"PCA needs (N, d) states with N >= {n_components}; got {tuple(reference.shape)}")
    return PCA(n_components=n_components, svd_solver="full").fit(reference.double().numpy())


def pca_project(pca, states: torch.Tensor) -> np.ndarray:
    """(N, d) states in the fitted PCA's coordinates: (N, n_components)."""
    return pca.transform(torch.as_tensor(states).double().numpy())


def kl_divergence(
    reference_logprobs: torch.Tensor,
    logprobs: torch.Tensor,
    overwrite: bool = False,
    reference_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-row KL(p_ref ‖ p) in nats from log-probabilities: (N, V), (N, V) -> (N,).
    `overwrite`: work in `logprobs`' memory (its values are lost), sparing an (N, V) tensor;
    `reference_probs`: exp(reference_logprobs), when kept from an earlier call."""
    diff = torch.sub(reference_logprobs, logprobs, out=logprobs if overwrite else None)  # (N, V)
    return diff.mul_(reference_logprobs.exp() if reference_probs is None else reference_probs).sum(-1)
