"""The sparse GEMV's torch reference: dense-on-masked input, the row-reading path, the hooks' rule."""

import pytest
import torch
import torch.nn.functional as F

from sponlib.adapters import iter_projections
from sponlib.errors import InvalidArgumentError
from sponlib.kernels import input_major, sparse_gemv_rows, sparse_gemv_reference
from sponlib.models import model_fingerprint
from sponlib.sparsity import Sparsifier, Thresholds
from sponlib.tiny import tiny_model


def _case(seed: int, batch: int, n_in: int = 96, n_out: int = 40, bias: bool = True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n_in, generator=g)  # (B, in)
    weight = torch.randn(n_out, n_in, generator=g)  # (out, in)
    b = torch.randn(n_out, generator=g) if bias else None
    return x, weight, b


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("score", ["teal", "wina"])
def test_reference_is_dense_on_the_masked_input(batch, score):
    x, weight, bias = _case(batch, batch)
    col_norm = weight.norm(dim=0) if score == "wina" else None
    scores = x.abs() * (1 if col_norm is None else col_norm)
    tau = float(scores.median())
    expected = F.linear(torch.where(scores > tau, x, 0.0), weight, bias)  # written independently
    got = sparse_gemv_reference(x, input_major(weight), bias, tau, col_norm)
    torch.testing.assert_close(got, expected)
    assert sparse_gemv_reference(x[0], input_major(weight), bias, tau, col_norm).shape == (weight.shape[0],)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("bias", [True, False])
def test_rows_reads_only_kept_rows_and_equals_the_reference(batch, bias):
    x, weight, b = _case(10 + batch, batch, bias=bias)
    assert sparse_gemv_rows(x.reshape(batch, 1, -1), input_major(weight), b, 0.3).shape == (batch, 1, weight.shape[0])
    weight_t = input_major(weight)
    for tau in (0.0, 0.3, 1.0, 2.5, 100.0):
        torch.testing.assert_close(sparse_gemv_rows(x, weight_t, b, tau), sparse_gemv_reference(x, weight_t, b, tau))
    # each token keeps only its own inputs, whatever the others keep
    x[0, :10], x[1:, :10] = 5.0, 0.0
    lone = sparse_gemv_rows(x, weight_t, b, 1.0)
    torch.testing.assert_close(lone, sparse_gemv_reference(x, weight_t, b, 1.0))


def test_entries_at_the_threshold_are_zeroed_and_tau_zero_is_dense():
    x = torch.tensor([[0.5, -0.5, 0.25, 1.0]])
    weight = torch.eye(4)
    y = sparse_gemv_reference(x, input_major(weight), None, 0.5)
    torch.testing.assert_close(y, torch.tensor([[0.0, 0.0, 0.0, 1.0]]))  # score > τ keeps, = τ zeroes
    dense = torch.randn(2, 4)
    torch.testing.assert_close(sparse_gemv_rows(dense, input_major(weight), None, 0.0), dense)


def test_reference_matches_the_hooked_projection_of_a_model():
    model = tiny_model("llama")
    projection = next(p for p in iter_projections(model) if p.role == "down")
    tau = 0.02
    names = [p.name for p in iter_projections(model)]
    thresholds = Thresholds("teal", 0.5, dict.fromkeys(names, 0.5), dict.fromkeys(names, tau), model_fingerprint(model))
    x = torch.randn(5, projection.in_features)  # (tokens, in)
    with torch.no_grad(), Sparsifier(model, thresholds):
        hooked = projection.module(x)
    bias = projection.module.bias
    torch.testing.assert_close(sparse_gemv_reference(x, input_major(projection.module.weight), bias, tau), hooked)


def test_bad_input_is_refused_clearly():
    x, weight, bias = _case(0, 1)
    with pytest.raises(InvalidArgumentError, match="input_major"):
        sparse_gemv_reference(x, weight, bias, 0.5)  # (out, in) instead of (in, out)
    with pytest.raises(InvalidArgumentError, match="outputs"):
        sparse_gemv_rows(x, input_major(weight), bias[:-1], 0.5)
    with pytest.raises(InvalidArgumentError, match="τ"):
        sparse_gemv_reference(x, input_major(weight), bias, float("nan"))
    with pytest.raises(InvalidArgumentError, match="out, in"):
        input_major(torch.ones(3))
