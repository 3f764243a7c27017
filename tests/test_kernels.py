"""The sparse GEMV on the CPU: its torch reference (dense on the masked input, the row-reading
path, the hooks' rule), the `sponlib::sparse_gemv` custom op (paths, fused segments, opcheck,
torch.compile, refusals), `SparseLinear` swapped into a tiny model against the `Sparsifier` hooks,
and the Triton kernel's tests run under Triton's CPU interpreter."""

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sponlib.errors import InvalidArgumentError, UnsupportedArchitectureError
from sponlib.kernels import (
    FusedSparseLinear,
    SegmentOf,
    SparseLinear,
    input_major,
    new_workspace,
    ops,
    set_thresholds,
    sparse_gemv,
    sparse_gemv_reference,
    sparse_gemv_rows,
    sparse_linears,
    swap_in,
    swap_out,
)
from sponlib.kernels.ops import check_gemv_arguments
from sponlib.models import iter_projections, model_fingerprint
from sponlib.models.tiny import tiny_model
from sponlib.sparsity import Sparsifier, Thresholds, quantile_thresholds

ROOT = Path(__file__).resolve().parents[1]


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


# --- the op `sponlib::sparse_gemv` on the CPU -------------------------------------------------


def _op_case(
    seed: int, shape: tuple, n_out: int = 40, dtype=torch.float64, bias: bool = True, wina: bool = False, n_in: int = 96
):
    """Arguments of the op: x (*shape, in), weight_t (in, out), bias (out,) or None, col_norm
    (1, in) for wina or None, and τ (1,) at the median score, so that about half the inputs drop."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, n_in, generator=g, dtype=torch.float64).to(dtype)
    weight_t = torch.randn(n_in, n_out, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(n_out, generator=g, dtype=torch.float64).to(dtype) if bias else None
    col_norm = (torch.rand(1, n_in, generator=g, dtype=torch.float64) + 0.5).to(dtype) if wina else None
    scores = x.abs() * (1 if col_norm is None else col_norm[0])  # (*shape, in), the rule written out
    return x, weight_t, b, col_norm, scores.median().reshape(1)


def _spy_on_rows(monkeypatch) -> list:
    """Record the op's calls of the row-reading path, which the CPU takes for a single token."""
    calls = []

    def spy(*args, **kwargs):
        calls.append(tuple(args[0].shape))
        return sparse_gemv_rows(*args, **kwargs)

    monkeypatch.setattr(ops, "sparse_gemv_rows", spy)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("score", ["teal", "wina"])
@pytest.mark.parametrize("shape", [(), (1, 1), (5,), (2, 3)], ids=["x(in)", "x(1,1,in)", "x(5,in)", "x(2,3,in)"])
def test_op_equals_the_reference_for_one_token_and_several(shape, score, bias, dtype, monkeypatch):
    x, weight_t, b, col_norm, tau = _op_case(
        len(shape) * 7 + sum(shape), shape, dtype=dtype, bias=bias, wina=score == "wina"
    )
    rows = _spy_on_rows(monkeypatch)
    y = sparse_gemv(x, weight_t, tau, b, col_norm)
    assert y.shape == (*shape, weight_t.shape[1]) and y.dtype == dtype
    expected = sparse_gemv_reference(x, weight_t, b, float(tau), None if col_norm is None else col_norm[0])
    torch.testing.assert_close(y, expected)
    # one token reads only its kept rows; several take the masked dense product
    assert rows == ([tuple(x.shape)] if x.numel() == x.shape[-1] else [])
    # τ drops about half the inputs, so a path that ignored it would be far off
    dense = x @ weight_t + (0 if b is None else b)
    assert not torch.allclose(y, dense, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("score", ["teal", "wina"])
@pytest.mark.parametrize("tokens", [1, 4])
@pytest.mark.parametrize("segments", [(24, 16), (16, 8, 16)], ids=["2-segments", "3-segments"])
def test_fused_segments_each_use_their_own_threshold(segments, tokens, score):
    g = torch.Generator().manual_seed(len(segments) * 10 + tokens)
    n_in, n_out = 64, sum(segments)
    x = torch.randn(tokens, n_in, generator=g, dtype=torch.float64)
    weight_t = torch.randn(n_in, n_out, generator=g, dtype=torch.float64)
    bias = torch.randn(n_out, generator=g, dtype=torch.float64)
    tau = torch.tensor([0.3, 0.9, 1.5][: len(segments)], dtype=torch.float64)
    col_norm = torch.rand(len(segments), n_in, generator=g, dtype=torch.float64) + 0.5 if score == "wina" else None
    y = sparse_gemv(x, weight_t, tau, bias, col_norm, segments)
    # each segment as the separate projection it stands for: its own slice of Wᵀ, τ and norms
    parts, start = [], 0
    for i, size in enumerate(segments):
        stop = start + size
        parts.append(
            sparse_gemv_reference(
                x,
                weight_t[:, start:stop].contiguous(),
                bias[start:stop],
                float(tau[i]),
                None if col_norm is None else col_norm[i],
            )
        )
        start = stop
    torch.testing.assert_close(y, torch.cat(parts, dim=-1))
    # the thresholds differ enough that the first one applied everywhere gives another result
    first_everywhere = sparse_gemv_reference(
        x, weight_t, bias, float(tau[0]), None if col_norm is None else col_norm[0]
    )
    assert not torch.allclose(y, first_everywhere)


def _opcheck_arguments(case: int) -> tuple:
    """Positional arguments of torch.ops.sponlib.sparse_gemv.default."""
    if case == 0:  # one token, teal, float32, bias: the row path
        x, weight_t, b, _, tau = _op_case(20, (1,), dtype=torch.float32)
        return x, weight_t, tau.float(), b, None, [weight_t.shape[1]], None, 0.0
    # a (2, 3) batch, wina, float64, two segments, no bias, with a workspace
    x, weight_t, _, _, _ = _op_case(21, (2, 3), n_out=48)
    col_norm = torch.rand(2, x.shape[-1], dtype=torch.float64) + 0.5
    tau = torch.tensor([0.4, 1.1], dtype=torch.float64)
    return x, weight_t, tau, None, col_norm, [32, 16], new_workspace(48, "cpu"), 0.5


@pytest.mark.parametrize("case", [0, 1], ids=["row-path", "segments-wina"])
def test_opcheck_accepts_the_schema_and_the_fake_implementation(case):
    """opcheck runs the op against its schema, its fake (meta) implementation and AOT dispatch:
    what torch.compile relies on when it traces through the op without running it."""
    if not hasattr(torch.library, "opcheck"):
        pytest.skip(f"torch.library.opcheck is not in torch {torch.__version__} (it came in 2.4)")
    result = torch.library.opcheck(torch.ops.sponlib.sparse_gemv.default, _opcheck_arguments(case))
    assert result and set(result.values()) == {"SUCCESS"}, result


@pytest.mark.parametrize("score", ["teal", "wina"])
@pytest.mark.parametrize("tokens", [1, 3])
def test_op_traces_under_torch_compile(tokens, score):
    x, weight_t, b, col_norm, tau = _op_case(30 + tokens, (tokens,), wina=score == "wina")

    def project(x, weight_t, tau, bias, col_norm):
        return torch.relu(sparse_gemv(x, weight_t, tau, bias, col_norm))  # an op around it, fused into one graph

    torch._dynamo.reset()
    compiled = torch.compile(project, backend="aot_eager", fullgraph=True)  # fullgraph: no graph break allowed
    norm = None if col_norm is None else col_norm[0]
    for scale in (1.0, 2.0):  # a new τ value in the same tensor shape
        expected = torch.relu(sparse_gemv_reference(x, weight_t, b, float(tau) * scale, norm))
        torch.testing.assert_close(compiled(x, weight_t, tau * scale, b, col_norm), expected)


def test_new_thresholds_need_no_recompilation():
    """τ is a tensor input of the graph, not a constant baked into it."""
    testing = pytest.importorskip("torch._dynamo.testing")
    counter = testing.CompileCounterWithBackend("aot_eager")
    x, weight_t, b, _, _ = _op_case(40, (1,))
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, t: sparse_gemv(x, weight_t, t, b), backend=counter, fullgraph=True)
    for value in (0.1, 0.5, 1.0, 2.0):
        t = torch.tensor([value], dtype=torch.float64)
        torch.testing.assert_close(compiled(x, t), sparse_gemv_reference(x, weight_t, b, value))
    assert counter.frame_count == 1


def _valid_arguments() -> dict:
    """Arguments the op accepts: x (2, 32), weight_t (32, 24), τ (1,), bias (24,), one segment."""
    g = torch.Generator().manual_seed(3)
    return dict(
        x=torch.randn(2, 32, generator=g),
        weight_t=torch.randn(32, 24, generator=g),
        tau=torch.tensor([0.5]),
        bias=torch.randn(24, generator=g),
        col_norm=None,
        segments=[24],
        workspace=None,
    )


BAD_ARGUMENTS = {  # what is wrong -> (the arguments it changes, given the valid ones; a word of the message)
    "weight-out-in": (lambda a: {"weight_t": a["weight_t"].t().contiguous()}, "input_major"),
    "weight-3d": (lambda a: {"weight_t": a["weight_t"].reshape(32, 2, 12)}, "input_major"),
    "weight-not-contiguous": (lambda a: {"weight_t": a["weight_t"].t().contiguous().t()}, "contiguous"),
    "x-float64-weight-float32": (lambda a: {"x": a["x"].double()}, "cast"),
    "tau-two-for-one-segment": (lambda a: {"tau": torch.tensor([0.5, 0.5])}, "per segment"),
    "tau-0d": (lambda a: {"tau": torch.tensor(0.5)}, "per segment"),
    "tau-integer": (lambda a: {"tau": torch.tensor([1])}, "float tensor"),
    "segments-sum-short": (lambda a: {"segments": [12, 8], "tau": torch.tensor([0.5, 0.5])}, "summing"),
    "segment-of-size-zero": (lambda a: {"segments": [24, 0], "tau": torch.tensor([0.5, 0.5])}, "positive"),
    "four-segments": (lambda a: {"segments": [6, 6, 6, 6], "tau": torch.full((4,), 0.5)}, "1 to 3"),
    "no-segments": (lambda a: {"segments": [], "tau": torch.zeros(0)}, "1 to 3"),
    "bias-short": (lambda a: {"bias": a["bias"][:-1]}, "outputs"),
    "col-norm-1d": (lambda a: {"col_norm": torch.ones(32)}, "col_norm"),
    "col-norm-two-segments": (lambda a: {"col_norm": torch.ones(2, 32)}, "col_norm"),
    "workspace-short": (lambda a: {"workspace": torch.zeros(24)}, "workspace"),
    "workspace-float64": (lambda a: {"workspace": torch.zeros(48, dtype=torch.float64)}, "float32"),
    "tau-on-another-device": (lambda a: {"tau": torch.zeros(1, device="meta")}, "move them"),
    "sparsity-one": (lambda a: {"sparsity": 1.0}, "calibration's target level"),
    "sparsity-nan": (lambda a: {"sparsity": float("nan")}, "in \\[0, 1\\)"),
}


@pytest.mark.parametrize("wrong", list(BAD_ARGUMENTS))
def test_bad_op_arguments_are_refused_clearly(wrong):
    check_gemv_arguments(**_valid_arguments())  # so that the refusal below comes from the change
    change, word = BAD_ARGUMENTS[wrong]
    arguments = _valid_arguments()
    arguments.update(change(arguments))
    with pytest.raises(InvalidArgumentError, match=word):
        check_gemv_arguments(**arguments)
    with pytest.raises(InvalidArgumentError, match=word):
        sparse_gemv(**arguments)


# --- SparseLinear swapped into a model, against the Sparsifier hooks -------------------------


def _tiny64():
    """The tiny Llama in float64: sparse and hooked models then agree to ~1e-15, so a 1e-9
    tolerance checks the function, not the rounding."""
    return tiny_model("llama").to(torch.float64)


def _ids(tokens: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (1, tokens), generator=torch.Generator().manual_seed(seed))  # (1, T)


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits  # (1, T, V)


def _calibrated(model, score: str, quantile: float, ids=None) -> Thresholds:
    return quantile_thresholds(model, _ids(16, seed=99) if ids is None else ids, score, quantile)


def _alphas(model, seed: int, scale: float = 0.05) -> dict:
    """Random SPON vectors, projection name -> (in,) float64."""
    g = torch.Generator().manual_seed(seed)
    return {
        p.name: torch.randn(p.in_features, generator=g, dtype=torch.float64) * scale for p in iter_projections(model)
    }


@pytest.mark.parametrize("tokens", [1, 7])
@pytest.mark.parametrize("score", ["teal", "wina"])
def test_swapped_in_model_equals_the_hooked_dense_model(score, tokens):
    """One token takes the row path in every projection, seven the masked dense product."""
    model = _tiny64()
    thresholds, alphas, ids = _calibrated(model, score, 0.5), _alphas(model, 1), _ids(tokens)
    dense = _logits(model, ids)
    with Sparsifier(model, thresholds):
        without_spon = _logits(model, ids)
    with Sparsifier(model, thresholds, alphas=alphas):
        hooked = _logits(model, ids)
    swap_in(model, thresholds, alphas)
    assert len(sparse_linears(model)) == len(thresholds.taus) == 14
    torch.testing.assert_close(_logits(model, ids), hooked, rtol=0, atol=1e-9)
    # both the thresholds and the SPON vectors move the logits far beyond the tolerance
    assert (hooked - dense).abs().max() > 1e-3 and (hooked - without_spon).abs().max() > 1e-3


def test_swap_out_restores_the_dense_model_exactly():
    model = _tiny64()
    ids = _ids(7)
    weights = {p.name: p.module.weight.clone() for p in iter_projections(model)}
    dense = _logits(model, ids)
    swap_in(model, _calibrated(model, "teal", 0.5), _alphas(model, 1))
    assert not torch.allclose(_logits(model, ids), dense)
    swap_out(model)
    assert sparse_linears(model) == {}
    assert torch.equal(_logits(model, ids), dense)
    for p in iter_projections(model):  # plain nn.Linear again (iter_projections refuses anything else)
        assert type(p.module) is nn.Linear and torch.equal(p.module.weight, weights[p.name]) and p.module.bias is None


def test_swap_out_restores_a_model_whose_projections_have_biases():
    """Folding SPON writes into the module's bias in place; the original bias must stay apart."""
    model = tiny_model("qwen2").to(torch.float64)  # q/k/v have biases, unlike Llama
    ids = _ids(7)
    dense = _logits(model, ids)
    swap_in(model, _calibrated(model, "teal", 0.5), _alphas(model, 1))
    swap_out(model)
    assert torch.equal(_logits(model, ids), dense)


@pytest.mark.parametrize("score", ["teal", "wina"])
def test_set_thresholds_changes_the_function_in_place(score):
    model = _tiny64()
    dense_model = copy.deepcopy(model)  # stays dense, for the hooks
    ids = _ids(7)
    first, second = _calibrated(model, score, 0.4), _calibrated(model, score, 0.7)
    swap_in(model, first, _alphas(model, 1))
    storage = {n: (m.tau.data_ptr(), m.bias.data_ptr()) for n, m in sparse_linears(model).items()}
    before = _logits(model, ids)
    # new vectors for every other projection: the rest fall back to their dense (zero) bias
    alphas = {n: a for i, (n, a) in enumerate(_alphas(dense_model, 2).items()) if i % 2 == 0}
    for thresholds, vectors in ((second, alphas), (first, None)):
        set_thresholds(model, thresholds, vectors)
        with Sparsifier(dense_model, thresholds, alphas=vectors):
            hooked = _logits(dense_model, ids)
        after = _logits(model, ids)
        torch.testing.assert_close(after, hooked, rtol=0, atol=1e-9)
        assert (after - before).abs().max() > 1e-3
        # the same tensors, new values: a compiled or CUDA-graphed model would read them
        assert {n: (m.tau.data_ptr(), m.bias.data_ptr()) for n, m in sparse_linears(model).items()} == storage


def test_swapping_refuses_incomplete_thresholds_unknown_vectors_and_other_rules():
    model = _tiny64()
    thresholds = _calibrated(model, "teal", 0.5)
    first = min(thresholds.taus)
    partial = Thresholds(
        "teal", 0.5, thresholds.levels, {n: t for n, t in thresholds.taus.items() if n != first}, thresholds.fingerprint
    )
    with pytest.raises(InvalidArgumentError, match="thresholds lack"):
        swap_in(model, partial)
    with pytest.raises(InvalidArgumentError, match="SPON vectors"):
        swap_in(model, thresholds, {"model.layers.9.mlp.up_proj": torch.zeros(32, dtype=torch.float64)})
    assert sparse_linears(model) == {}  # refused before any projection was replaced
    with pytest.raises(InvalidArgumentError, match="swap_in"):
        set_thresholds(model, thresholds)  # nothing swapped in yet
    swap_in(model, thresholds)
    with pytest.raises(UnsupportedArchitectureError, match="swap_out"):
        swap_in(model, thresholds)  # already swapped in
    with pytest.raises(InvalidArgumentError, match="thresholds lack"):
        set_thresholds(model, partial)
    with pytest.raises(InvalidArgumentError, match="rule"):
        set_thresholds(model, Thresholds("wina", 0.5, thresholds.levels, thresholds.taus, thresholds.fingerprint))


def test_a_refused_vector_leaves_the_model_untouched():
    model = _tiny64()
    thresholds, alphas = _calibrated(model, "teal", 0.5), _alphas(model, 1)
    last = sorted(alphas)[-1]
    for bad in (torch.zeros(3, dtype=torch.float64), torch.full_like(alphas[last], float("nan"))):
        with pytest.raises(InvalidArgumentError, match="SPON vector"):
            swap_in(model, thresholds, {**alphas, last: bad})
        assert sparse_linears(model) == {}  # checked before the first projection was replaced


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])  # qwen2: q/k/v have biases
@pytest.mark.parametrize("score", ["teal", "wina"])
def test_fused_groups_equal_the_hooked_model_and_swap_back(model_type, score):
    """q/k/v and gate/up as one launch each: the same function as the hooks, per-projection
    thresholds and SPON biases included; set_thresholds and swap_out work through the groups."""
    model = tiny_model(model_type).to(torch.float64)
    thresholds, alphas, ids = _calibrated(model, score, 0.5), _alphas(model, 2), _ids(1)
    dense = _logits(model, ids)
    with Sparsifier(model, thresholds, alphas=alphas):
        hooked = _logits(model, ids)
    swap_in(model, thresholds, alphas, fuse=True)
    modules = sparse_linears(model)
    assert sum(isinstance(m, SegmentOf) for m in modules.values()) == 5 * model.config.num_hidden_layers
    torch.testing.assert_close(_logits(model, ids), hooked, rtol=0, atol=1e-9)
    assert all(m.fused.pending is None for m in modules.values() if isinstance(m, SegmentOf))
    tau = model.model.layers[0].self_attn.q_proj.fused.tau
    moved = Thresholds(
        score, 0.6, thresholds.levels, {n: t * 1.3 for n, t in thresholds.taus.items()}, thresholds.fingerprint
    )
    set_thresholds(model, moved)  # no vectors: every bias back to the original
    assert model.model.layers[0].self_attn.q_proj.fused.tau.data_ptr() == tau.data_ptr()  # written in place
    with_new = _logits(model, ids)
    swap_out(model)
    assert torch.equal(_logits(model, ids), dense)
    with Sparsifier(model, moved):
        torch.testing.assert_close(with_new, _logits(model, ids), rtol=0, atol=1e-9)


def test_fused_segments_take_their_outputs_from_one_launch_also_when_compiled(monkeypatch):
    """The followers (k, v, up) take their part of the leader's launch, eagerly and under
    torch.compile(fullgraph=True); computing alone would mean the pattern was missed."""
    model = tiny_model("llama").eval()
    swap_in(model, _calibrated(model, "teal", 0.5), fuse=True, check=False)
    expected = _logits(model, _ids(1))

    def alone(*args):
        raise AssertionError("a segment computed alone")

    monkeypatch.setattr(FusedSparseLinear, "segment_alone", alone)
    torch.testing.assert_close(_logits(model, _ids(1)), expected)
    compiled = torch.compile(lambda ids: model(ids).logits, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(_ids(1)), expected)


def test_a_segment_called_alone_still_computes_its_projection():
    torch.manual_seed(3)
    linears = [nn.Linear(24, n, dtype=torch.float64) for n in (24, 8, 8)]
    fused = FusedSparseLinear(linears, [0.3, 0.5, 0.7])
    x = torch.randn(2, 24, dtype=torch.float64)
    y = SegmentOf(fused, 2)(x)  # no leader call before it
    torch.testing.assert_close(y, sparse_gemv_reference(x, input_major(linears[2].weight), linears[2].bias, 0.7))
    assert fused.tile_band == 0.0  # built without levels: the band of sparsity 0
    outputs = fused(x)  # the launch itself, as the leader runs it
    for index, (linear, tau) in enumerate(zip(linears, [0.3, 0.5, 0.7])):
        reference = sparse_gemv_reference(x, input_major(linear.weight), linear.bias, tau)
        torch.testing.assert_close(outputs[index], reference)


def test_sparse_linear_refuses_bad_thresholds_and_vectors():
    linear = nn.Linear(32, 24, dtype=torch.float64)
    for tau in (-0.1, float("nan"), float("inf")):
        with pytest.raises(InvalidArgumentError, match="threshold"):
            SparseLinear.from_linear(linear, tau)
    module = SparseLinear.from_linear(linear, 0.5)
    for tau in (-1.0, float("nan")):
        with pytest.raises(InvalidArgumentError, match="threshold"):
            module.set_tau(tau)
    assert module.tau.tolist() == [0.5]  # a refused τ leaves the old one
    with pytest.raises(InvalidArgumentError, match="shape"):
        SparseLinear.from_linear(linear, 0.5, alpha=torch.zeros(24, dtype=torch.float64))  # (out,), not (in,)
    with pytest.raises(InvalidArgumentError, match="NaN"):
        module.set_alpha(torch.tensor([float("nan")] + [0.0] * 31, dtype=torch.float64))
    assert torch.equal(module.bias, linear.bias)  # a refused vector leaves the bias as it was


@pytest.mark.parametrize("score", ["teal", "wina"])
def test_float32_single_token_matches_the_hooked_linear(score, monkeypatch):
    """Every projection of the float32 model, fed the input it sees on one token, through the
    CPU row path against the hooked nn.Linear: W (S(x) + α) + b computed two ways in float32."""
    model = tiny_model("llama")
    ids = _ids(1, seed=5)
    thresholds, alphas = _calibrated(model, score, 0.5, ids), _alphas(model, 3)
    seen = {}
    hooks = [
        p.module.register_forward_pre_hook(lambda m, args, n=p.name: seen.__setitem__(n, args[0]))
        for p in iter_projections(model)
    ]
    _logits(model, ids)
    for h in hooks:
        h.remove()
    rows = _spy_on_rows(monkeypatch)
    with torch.no_grad(), Sparsifier(model, thresholds, alphas=alphas) as sparsifier:
        for p in iter_projections(model):
            x = seen[p.name]  # (1, 1, in)
            sparse = SparseLinear.from_linear(p.module, thresholds.taus[p.name], score, alphas[p.name])
            y = sparse(x)
            assert y.dtype == torch.float32
            torch.testing.assert_close(y, p.module(x))  # the pre-hook masks and adds α
    assert len(rows) == 14  # every projection took the row path
    assert 0.3 < sparsifier.summary()["mean"] < 0.7  # and dropped about half its inputs


# --- the Triton kernel under Triton's CPU interpreter ----------------------------------------


@pytest.mark.integration  # minutes: the GPU tests, interpreted
def test_triton_kernel_tests_pass_under_the_cpu_interpreter():
    """tests/test_kernels_gpu.py with TRITON_INTERPRET=1: Triton then executes the kernel's
    source on CPU tensors, so a machine without a GPU (CI) still checks the kernel's logic
    (masks at τ, split-K, segments, the workspace) against the reference; the tests that need a
    real GPU (compile, CUDA graphs) skip there. A subprocess, because triton.jit reads the
    variable when the kernel module is imported; CUDA hidden, so it interprets even on a GPU host."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "tests/test_kernels_gpu.py",
        "-q",
        "-o",
        "addopts=",
        "-p",
        "no:cacheprovider",
    ]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    report = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= 10, report


@pytest.mark.parametrize("tokens", [1, 4])
def test_op_refuses_negative_or_nan_thresholds_on_the_cpu(tokens):
    x, weight, bias = _case(2, tokens)
    for tau in (-0.5, float("nan")):
        with pytest.raises(InvalidArgumentError, match=">= 0"):
            sparse_gemv(x, input_major(weight), torch.tensor([tau]), bias)


def test_tiles_come_from_the_tuned_table_by_sparsity_band_else_from_the_heuristic():
    from sponlib.kernels.tiles import GemvConfig, gemv_config, tile_band, tuned_configs

    assert (tile_band(0.0), tile_band(0.49), tile_band(0.5), tile_band(0.95)) == (0.0, 0.0, 0.5, 0.5)
    table = tuned_configs("NVIDIA H200")
    assert table, "the H200 table ships with the package"
    assert any(band == 0.5 for _, _, band in table), "some shapes have tiles of their own from sparsity 0.5"
    for (n_in, n_out, band), tuned in table.items():
        assert gemv_config(n_in, n_out, "NVIDIA H200", band) == tuned
        assert gemv_config(n_in, n_out, "NVIDIA H200", 0.3) == table[n_in, n_out, 0.0]
        # a band the table lacks for this shape falls back to the band below
        assert gemv_config(n_in, n_out, "NVIDIA H200", 0.7) == table.get((n_in, n_out, 0.5), table[n_in, n_out, 0.0])
        assert tuned.k_per_program % tuned.block_k == 0  # every tuned split-K runs in one pass of whole steps
    wide = gemv_config(4096, 12288, "NVIDIA H200", 0.5)  # a shape the table lacks (Qwen3-8B gate/up)
    assert (wide.block_n, wide.atomic, wide.pdl, wide.split(4096)) == (128, True, False, 10)
    narrow = gemv_config(576, 192)
    assert isinstance(narrow, GemvConfig) and narrow.block_n == 64 and not narrow.finisher


def test_swapped_in_modules_carry_the_tile_band_of_their_calibrated_level():
    model = _tiny64()
    thresholds = _calibrated(model, "teal", 0.5)
    names = list(thresholds.levels)
    thresholds.levels = {name: 0.6 if i % 2 else 0.2 for i, name in enumerate(names)}
    swap_in(model, thresholds, fuse=True)
    modules = sparse_linears(model)
    for name, module in modules.items():
        if isinstance(module, SparseLinear):
            assert module.tile_band == (0.5 if thresholds.levels[name] >= 0.5 else 0.0), name
    fused = {m.fused for m in modules.values() if isinstance(m, SegmentOf)}
    for group in fused:  # the band of the mean level, weighted by the segments' outputs
        mean = sum(level * size for level, size in zip(group.levels, group.segments)) / sum(group.segments)
        assert group.tile_band == (0.5 if mean >= 0.5 else 0.0)
    thresholds.levels = dict.fromkeys(names, 0.7)
    set_thresholds(model, thresholds)
    assert {getattr(m, "fused", m).tile_band for m in modules.values()} == {0.5}
    thresholds.levels[names[0]] = 1.0
    with pytest.raises(InvalidArgumentError, match=r"\[0, 1\)"):
        set_thresholds(model, thresholds)


def _run_beside_the_benchmarks(code: str) -> None:
    """Run `code` in a fresh interpreter from benchmarks/, whose modules import each other by name
    (the benchmark script puts its folder on the path); it must exit cleanly."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT / "benchmarks")
    assert done.returncode == 0, done.stderr[-2000:]


def test_kernel_benchmark_refuses_unknown_parts_and_sweep_variants_before_needing_a_gpu():
    for wrong, said in (
        ("--parts=gemv,listed,bogus", "unknown parts ['bogus']"),
        ("--sweep-variants=select,bogus", "choose from plain, prefetch, select, compact"),
        ("--parts=e2e-teal", "needs --teal PATH"),
    ):
        done = subprocess.run(
            [sys.executable, "benchmarks/kernels_h200.py", wrong, "--json", "unused.json"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert done.returncode == 2 and said in done.stderr, done.stderr
    assert not (ROOT / "unused.json").exists()


def test_sweep_candidates_keep_only_the_variants_asked_for():
    # the sweep's module lives beside the benchmark script, which puts its folder on the path
    code = (
        "from kernel_sweep import candidates, VARIANTS\n"
        "every = candidates(4096, 14336)\n"
        "only = candidates(4096, 14336, ('select',))\n"
        "assert only and all(c.select for c in only) and set(only) < set(every)\n"
        "assert any(c.compact and c.prefetch for c in every)\n"
        "assert all(c.k_per_program % c.block_k == 0 for c in every)\n"
        "from kernel_listed import listed_candidates\n"
        "listed = listed_candidates(4096, 1024)\n"
        "assert listed and all(c.finisher and c.prefetch and c.block_n <= 1024 for c in listed)\n"
        "assert all(c.k_per_program >= 2 * c.block_k for c in listed)\n"
    )
    _run_beside_the_benchmarks(code)


def test_a_benchmark_run_cut_short_keeps_the_runs_that_made_the_parts_it_did_not_redo():
    code = (
        "from kernels_h200 import merge_runs\n"
        "limits = {'parts': ['limits', 'gemv'], 'parts_done': ['limits', 'gemv']}\n"
        "e2e = {'parts': ['e2e-llama']}\n"
        "cut = {'parts': ['gemv', 'e2e-llama'], 'parts_done': ['gemv']}\n"
        "assert merge_runs([limits, e2e], cut) == [limits, e2e, cut]\n"
        "whole = {'parts': ['limits', 'gemv', 'e2e-llama'], 'parts_done': ['limits', 'gemv', 'e2e-llama']}\n"
        "assert merge_runs([limits, e2e], whole) == [whole]\n"
        "# a run whose parts were each redone by some later run goes, though none redid them all\n"
        "later = {'parts': ['e2e-llama'], 'parts_done': ['e2e-llama']}\n"
        "assert merge_runs([limits, cut, later], {'parts': ['limits'], 'parts_done': ['limits']})[0] is cut\n"
    )
    _run_beside_the_benchmarks(code)


def test_teal_linear_runs_a_model_as_the_hooked_mask_and_swaps_back():
    """TealLinear and teal_swap_in with a stand-in for TEAL's kernel (the same rule in torch, and
    its check that the weight is an input-major view): one token through the kernel's op, five
    through the masked dense product, both as the hooked model; teal_swap_out gives the dense
    model back."""
    code = (
        "import types, torch\n"
        "from sponlib.models.tiny import tiny_model\n"
        "from sponlib.sparsity import Sparsifier, quantile_thresholds\n"
        "from teal_contender import TealLinear, teal_swap_in, teal_swap_out\n"
        "def gemv(x, w, tau, key):  # TEAL's kernel asserts this layout of its (out, in) weight\n"
        "    assert w.stride(1) > 1, 'weight should be column major'\n"
        "    return (x * (x.abs() > tau)) @ w.t()\n"
        "stand_in = types.SimpleNamespace(module=types.SimpleNamespace(splitk_sparse_gemv=gemv))\n"
        "torch.manual_seed(0)\n"
        "model = tiny_model('llama')\n"
        "gen = torch.Generator().manual_seed(1)\n"
        "thresholds = quantile_thresholds(model, torch.randint(0, 256, (1, 16), generator=gen), 'teal', 0.5)\n"
        "ids = {n: torch.randint(0, 256, (1, n), generator=gen) for n in (1, 5)}\n"
        "with torch.no_grad():\n"
        "    dense = {n: model(i).logits for n, i in ids.items()}\n"
        "    with Sparsifier(model, thresholds):\n"
        "        hooked = {n: model(i).logits for n, i in ids.items()}\n"
        "    teal_swap_in(model, thresholds, stand_in)\n"
        "    assert sum(isinstance(m, TealLinear) for m in model.modules()) == 14\n"
        "    for n, i in ids.items():\n"
        "        torch.testing.assert_close(model(i).logits, hooked[n])\n"
        "    teal_swap_out(model)\n"
        "    assert not any(isinstance(m, TealLinear) for m in model.modules())\n"
        "    torch.testing.assert_close(model(ids[1]).logits, dense[1])\n"
        "    assert not torch.allclose(hooked[1], dense[1])\n"
    )
    _run_beside_the_benchmarks(code)


def test_the_transformers_generate_baseline_times_decoding_on_a_tiny_model():
    """The decoding part's hf-generate row, on the CPU (no compilation there): a tiny random
    Llama generates exactly the tokens asked for, and the time per token is positive."""
    code = (
        "import torch\n"
        "from transformers import AutoModelForCausalLM, LlamaConfig\n"
        "from kernel_e2e import hf_generate_seconds_per_token\n"
        "torch.manual_seed(0)\n"
        "config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,\n"
        "                     num_attention_heads=4, num_key_value_heads=2)\n"
        "model = AutoModelForCausalLM.from_config(config).eval()\n"
        "seconds, compiled = hf_generate_seconds_per_token(model, torch.randint(0, 128, (1, 8)), 48, 128)\n"
        "assert seconds > 0 and compiled is False, (seconds, compiled)\n"
    )
    _run_beside_the_benchmarks(code)


def test_kernel_report_renders_the_listed_part_when_the_record_has_one():
    """The renderer on the committed record, and on it with a made-up `listed` part (format only)."""
    import json

    from sponlib.records import results_dir
    from sponlib.reports.kernels import render_kernels

    record = json.loads((results_dir() / "kernels_h200.json").read_text())
    assert "GEMV on a ready list" not in render_kernels({k: v for k, v in record.items() if k != "listed"})
    gemv = {"roles": "q/o", "in": 4096, "out": 4096, "sparsity": 0.5, "list_us": 2.5}
    gemv |= {"gemv_speedup": 1.7, "chain_speedup": 1.2, "shipped_speedup": 1.35}
    producer = {"producer": "rmsnorm", "in": 4096, "segments": 3, "list_chunk": 512, "compiled_us": 3.1}
    producer["with_lists_us"] = 3.4
    layer = {"sparsity": 0.5, "dense_us": 150.0, "today_speedup": 1.5, "listed_speedup": 1.7}
    layer["down_relative_error"] = 0.01
    text = render_kernels(record | {"listed": {"gemv": [gemv], "producers": [producer], "layer": [layer]}})
    assert "| q/o | 4096 → 4096 | 0.5 | 2.50 | 1.70 | 1.20 | 1.35 |" in text
    assert "| rmsnorm | 4096 | 3 | 512 | 3.10 | 3.40 |" in text
    assert "| 0.5 | 150.0 | 1.50 | 1.70 | 0.0100 |" in text


def test_kernel_headline_names_decoding_against_teal_only_when_the_record_has_it():
    """The headline's clause on decoding beside TEAL comes from the summary, and goes with it."""
    import json

    from sponlib.records import results_dir
    from sponlib.reports.kernels import render_kernels

    record = json.loads((results_dir() / "kernels_h200.json").read_text())
    summary = record["summary"] | {"e2e_fused_vs_teal_at_0.5": 1.234}
    assert "fused path 1.23x the speed of TEAL's kernel in every projection" in render_kernels(
        record | {"summary": summary}
    )
    summary.pop("e2e_fused_vs_teal_at_0.5")
    assert "the speed of TEAL's kernel" not in render_kernels(record | {"summary": summary})
