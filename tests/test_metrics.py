"""Representation metrics against their definitions and float64 references."""

import numpy as np
import pytest
import torch

from sponlib.analysis import cka_matrix, cosine, debiased_cka, kl_divergence, linear_cka, minibatch_cka, relative_drift
from sponlib.analysis.metrics import layer_drift, pca_fit, pca_project
from sponlib.errors import InvalidArgumentError, NumericalError


def reference_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA through centred Gram matrices, float64 (Kornblith et al., eq. for HSIC)."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    gram_x, gram_y = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float((gram_x * gram_y).sum() / np.sqrt((gram_x * gram_x).sum() * (gram_y * gram_y).sum()))


def reference_unbiased_hsic(gram_k: np.ndarray, gram_l: np.ndarray) -> float:
    """Song et al. (2012), eq. 5, written out literally."""
    n = gram_k.shape[0]
    k, l_ = gram_k.copy(), gram_l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l_, 0)
    one = np.ones(n)
    return float(
        (np.trace(k @ l_) + (one @ k @ one) * (one @ l_ @ one) / ((n - 1) * (n - 2)) - 2 / (n - 2) * one @ k @ l_ @ one)
        / (n * (n - 3))
    )


@pytest.fixture
def states():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 24, generator=g)
    y = x @ torch.randn(24, 16, generator=g) + 0.5 * torch.randn(200, 16, generator=g)  # related, not equal
    return x, y


def test_cka_is_one_for_identical_inputs(states):
    x, _ = states
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert debiased_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert minibatch_cka(x, x, batch_size=50) == pytest.approx(1.0, abs=1e-12)


def test_cka_invariant_to_orthogonal_transform_and_isotropic_scaling(states):
    x, y = states
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(2)))
    base = linear_cka(x, y)
    assert linear_cka(x, y @ q) == pytest.approx(base, rel=1e-6)
    assert linear_cka(7.5 * x, 0.01 * y) == pytest.approx(base, rel=1e-6)
    assert debiased_cka(x, y @ q * 3) == pytest.approx(debiased_cka(x, y), rel=1e-6)
    # ...but not to an anisotropic scaling, so the test can tell
    stretch = torch.ones(16)
    stretch[0] = 30.0
    assert abs(linear_cka(x, y * stretch) - base) > 1e-3


def test_cka_matches_float64_reference_on_random_data(states):
    x, y = states
    assert linear_cka(x.float(), y.float()) == pytest.approx(
        reference_cka(x.double().numpy(), y.double().numpy()), abs=1e-6
    )
    few = slice(0, 10)  # fewer tokens than features: the Gram-matrix path
    assert linear_cka(x[few], y[few]) == pytest.approx(
        reference_cka(x[few].double().numpy(), y[few].double().numpy()), abs=1e-9
    )
    kx, ky = (x.double() @ x.double().T).numpy(), (y.double() @ y.double().T).numpy()
    expected = reference_unbiased_hsic(kx, ky) / np.sqrt(
        reference_unbiased_hsic(kx, kx) * reference_unbiased_hsic(ky, ky)
    )
    assert debiased_cka(x, y) == pytest.approx(expected, rel=1e-9)
    assert 0.0 < debiased_cka(x, y) < linear_cka(x, y)  # the plain estimator is biased upwards


def test_minibatch_cka_is_close_to_full_debiased_and_deterministic(states):
    x, y = states
    assert minibatch_cka(x, y, batch_size=100) == pytest.approx(debiased_cka(x, y), abs=0.05)
    assert minibatch_cka(x, y, batch_size=40, seed=3) == minibatch_cka(x, y, batch_size=40, seed=3)


def test_unrelated_states_have_low_cka():
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(2000, 8, generator=g), torch.randn(2000, 8, generator=g)
    assert debiased_cka(x, y) == pytest.approx(0.0, abs=0.02)


def test_cka_matrix_matches_pairwise_on_both_paths(states):
    x, y = states
    xs, ys = [x, y, x * 2], [y, x]
    expected = np.array([[linear_cka(a, b) for b in ys] for a in xs])
    np.testing.assert_allclose(cka_matrix(xs, ys), expected, atol=1e-9)  # Gram path (N <= 1024)
    big = [torch.randn(1100, 6, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    assert cka_matrix(big, big).shape == (2, 2)
    assert cka_matrix(big, big)[0, 0] == pytest.approx(1.0)


def test_drift_and_cosine(states):
    x, _ = states
    assert relative_drift(x, x) == 0.0
    assert cosine(x, x) == pytest.approx(1.0)
    assert relative_drift(1.1 * x, x) == pytest.approx(0.1)
    assert cosine(-x, x) == pytest.approx(-1.0)
    # per token, then averaged: one huge token does not dominate
    a, b = torch.ones(2, 3), torch.ones(2, 3)
    a[0] *= 2.0  # token 0 off by 100%
    b[1] *= 1000.0
    a[1] *= 1000.0  # token 1 exact, with a huge norm
    assert relative_drift(a, b) == pytest.approx(0.5)


def test_layer_drift_equals_the_float64_drift_of_each_layer():
    g = torch.Generator().manual_seed(3)
    reference = torch.randn(5, 40, 12, generator=g)
    states = reference + 0.1 * torch.arange(5.0)[:, None, None] * torch.randn(5, 40, 12, generator=g)
    drift = layer_drift(list(states), list(reference))
    assert drift[0] == 0.0 and all(a < b for a, b in zip(drift, drift[1:]))  # drift grows with the noise
    assert drift == pytest.approx([relative_drift(s, r) for s, r in zip(states, reference)], rel=1e-6)
    bad = states.clone()
    bad[3, 0, 0] = float("inf")
    with pytest.raises(NumericalError):
        layer_drift(list(bad), list(reference))
    with pytest.raises(InvalidArgumentError, match="one shape"):
        layer_drift([states[0]], [reference[0, :10]])


def test_bad_states_are_refused(states):
    x, y = states
    with pytest.raises(InvalidArgumentError, match="same shape|one shape"):
        relative_drift(x, y)
    with pytest.raises(InvalidArgumentError, match="same N"):
        linear_cka(x, y[:10])
    with pytest.raises(InvalidArgumentError, match="at least 4"):
        linear_cka(x[:3], x[:3])
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(NumericalError):
        cosine(bad, x)


def test_pca_projection_shapes(states):
    x, y = states
    pca = pca_fit(x, n_components=3)
    assert pca_project(pca, x).shape == (200, 3)
    assert pca_project(pca, x[:17]).shape == (17, 3)
    assert np.allclose(pca_project(pca, x).mean(axis=0), 0.0, atol=1e-9)  # centred on the reference
    with pytest.raises(InvalidArgumentError):
        pca_fit(x[:2], n_components=3)


def test_kl_divergence_rows():
    p = torch.log_softmax(torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]), dim=-1)
    assert torch.allclose(kl_divergence(p, p), torch.zeros(2), atol=1e-7)
    q = torch.log_softmax(torch.zeros(2, 3), dim=-1)
    expected = (p.exp() * (p - q)).sum(-1)
    assert torch.allclose(kl_divergence(p, q), expected)
    assert (kl_divergence(p, q) >= 0).all()
