"""The Triton sparse GEMV against the torch reference: random shapes, sparsities and dtypes with
fresh inputs every time and a poisoned output, mask equality at the threshold, fused segments,
batches, and the op under torch.compile and CUDA graphs.

One command on a GPU machine (skips cleanly without CUDA):

    python -m pytest tests/test_kernels_gpu.py -o addopts=""      (or: make test-gpu)

Without CUDA the same tests run the kernel's source on the CPU under Triton's interpreter when
TRITON_INTERPRET=1 is set (tests/test_kernels.py does that in CI), with smaller shapes; the tests
that need a real GPU (compile, CUDA graphs, the real model) skip there.
"""

import importlib.util
import os

import pytest
import torch

from sponlib.kernels import SparseLinear, keep_mask, sparse_gemv, sparse_gemv_reference, swap_in

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_TRITON = importlib.util.find_spec("triton") is not None
DEVICE = "cuda" if torch.cuda.is_available() else "cpu" if INTERPRET else None
pytestmark = pytest.mark.skipif(
    DEVICE is None or not HAS_TRITON, reason="needs CUDA and triton (or TRITON_INTERPRET=1 with triton installed)"
)
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a real GPU")

DTYPES = (torch.float16, torch.bfloat16)
# ‖y − ref‖/‖ref‖ against a float64 reference: the output is rounded once to fp16/bf16
TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 1e-2}
SIZES = (64, 96, 200, 320) if INTERPRET or DEVICE is None else (64, 200, 576, 1536, 4096, 5000)


def _gemv():
    from sponlib.kernels.tiles import GemvConfig
    from sponlib.kernels.triton_gemv import triton_sparse_gemv

    return GemvConfig, triton_sparse_gemv


def _random_case(gen: torch.Generator, n_in: int, n_out: int, dtype, sparsity: float, wina: bool):
    x = torch.randn(n_in, generator=gen).mul_(torch.rand(n_in, generator=gen) * 3).to(DEVICE, dtype)  # (K,)
    weight_t = torch.randn(n_in, n_out, generator=gen).div_(n_in**0.5).to(DEVICE, dtype)  # (K, N)
    bias = torch.randn(n_out, generator=gen).to(DEVICE, dtype)  # (N,)
    col_norm = (torch.rand(n_in, generator=gen) + 0.5).to(DEVICE) if wina else None  # (K,)
    score = x.float().abs() * (1 if col_norm is None else col_norm)
    tau = torch.quantile(score.cpu(), sparsity).reshape(1).to(DEVICE)  # (1,)
    return x, weight_t, bias, col_norm, tau


def _reference64(x, weight_t, bias, col_norm, tau):
    """Float64 dense product on the input masked by the float32 rule."""
    keep = keep_mask(x, tau[0], col_norm)
    y = (x.double() * keep) @ weight_t.double()
    return y if bias is None else y + bias.double()


def _relative_error(y, ref):
    return float((y.double() - ref).norm() / ref.norm().clamp_min(1e-30))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("wina", [False, True], ids=["teal", "wina"])
def test_triton_matches_the_reference_on_random_cases(dtype, wina):
    GemvConfig, triton_sparse_gemv = _gemv()
    gen = torch.Generator().manual_seed(1000 + DTYPES.index(dtype) * 2 + wina)
    checked = 0
    for _ in range(12 if INTERPRET else 16):  # on a GPU most of the time goes to compiling
        n_in = SIZES[int(torch.randint(len(SIZES), (1,), generator=gen))]
        n_out = SIZES[int(torch.randint(len(SIZES), (1,), generator=gen))]
        sparsity = float(torch.tensor([0.0, 0.25, 0.5, 0.7, 0.9, 0.99])[torch.randint(6, (1,), generator=gen)])
        x, weight_t, bias, col_norm, tau = _random_case(gen, n_in, n_out, dtype, sparsity, wina)
        with_bias = bool(torch.randint(2, (1,), generator=gen))
        workspace = torch.zeros(2 * n_out, device=DEVICE)
        for config in CONFIGS:
            out = torch.full((n_out,), float("nan"), device=DEVICE, dtype=dtype)  # poisoned
            y = triton_sparse_gemv(
                x,
                weight_t,
                tau,
                bias if with_bias else None,
                None if col_norm is None else col_norm.reshape(1, -1),
                config=config,
                out=out,
                workspace=workspace,
            )
            assert y.data_ptr() == out.data_ptr() and torch.isfinite(y).all(), "every output must be written"
            assert not workspace.any(), "the atomic split must leave its workspace zero"
            ref = _reference64(x, weight_t, bias if with_bias else None, col_norm, tau)
            err = _relative_error(y, ref)
            assert err < TOLERANCE[dtype], (n_in, n_out, sparsity, config, err)
            checked += 1
    assert checked >= 12 * len(CONFIGS)


def _configs():
    GemvConfig, _ = _gemv()
    return (
        None,  # the shipped choice for the shape (tuned table or heuristic)
        GemvConfig(64, 32, 32),  # split-K, partial sums + second kernel
        GemvConfig(64, 32, 64, atomic=True),  # split-K by atomics
        GemvConfig(64, 16, 48, prefetch=True, atomic=True),  # two blocks in flight
        GemvConfig(128, 16, 10**6, prefetch=True),  # one slice per tile, one launch
        GemvConfig(64, 16, 96, atomic=True, compact=True),  # kept rows listed first
        GemvConfig(64, 16, 96, prefetch=True, atomic=True, finisher=True, compact=True),  # ... next step in flight
        GemvConfig(128, 32, 10**6, compact=True),
        GemvConfig(64, 16, 16, atomic=True, evict=True),  # one step per program, cache hints
        GemvConfig(128, 8, 32, prefetch=True, atomic=True, pdl=True),  # dependent launch (GPU only)
        GemvConfig(64, 16, 32, prefetch=True, atomic=True, finisher=True),  # atomics, then a cast kernel
        GemvConfig(256, 8, 32, atomic=True, finisher=True, evict=True, pdl=True),
        GemvConfig(64, 16, 64, atomic=True, select=True),  # kept rows picked in registers
        GemvConfig(128, 8, 10**6, select=True),  # one slice per tile: the loop runs over all kept rows
        GemvConfig(256, 8, 32, atomic=True, finisher=True, select=True, pdl=True),
    )


CONFIGS = _configs() if HAS_TRITON else ()


def test_one_workspace_serves_repeated_calls_and_stays_zero():
    GemvConfig, triton_sparse_gemv = _gemv()
    gen = torch.Generator().manual_seed(5)
    x, weight_t, bias, _, tau = _random_case(gen, 320, 200, torch.bfloat16, 0.5, False)
    workspace = torch.zeros(400, device=DEVICE)
    config = GemvConfig(64, 16, 32, prefetch=True, atomic=True, compact=True)  # 10 slices per tile
    first = triton_sparse_gemv(x, weight_t, tau, bias, config=config, workspace=workspace)
    for _ in range(3):
        again = triton_sparse_gemv(x, weight_t, tau, bias, config=config, workspace=workspace)
        assert not workspace.any()
        # float32 atomics may add in another order: equal up to the last bit of a float32 sum
        assert _relative_error(again, first.double()) < 1e-2
    assert _relative_error(first, _reference64(x, weight_t, bias, None, tau)) < TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mask_equals_the_reference_mask_at_the_threshold(dtype):
    """With W = I the output is S(x) itself, so any mask difference shows. Inputs sit exactly at
    τ, one ulp of the input dtype either side, and at ±τ; scores compare in float32."""
    _, triton_sparse_gemv = _gemv()
    gen = torch.Generator().manual_seed(7)
    n = 256
    tau_value = torch.tensor(0.37, dtype=dtype)  # a value representable in the input dtype
    near = torch.stack(
        [
            tau_value,
            torch.nextafter(tau_value, torch.tensor(1.0, dtype=dtype)),
            torch.nextafter(tau_value, torch.tensor(0.0, dtype=dtype)),
        ]
    )
    x = torch.randn(n, generator=gen).to(dtype)
    x[:96] = near.repeat(32) * torch.tensor([1.0, -1.0]).repeat(48).to(dtype)  # (n,)
    weight_t = torch.eye(n, dtype=dtype, device=DEVICE)
    for tau, col_norm in ((tau_value.float(), None), (tau_value.float() * 1.5, torch.full((n,), 1.5))):
        tau = tau.reshape(1).to(DEVICE)
        norm = None if col_norm is None else col_norm.to(DEVICE)
        y = triton_sparse_gemv(x.to(DEVICE), weight_t, tau, None, None if norm is None else norm.reshape(1, -1))
        expected = torch.where(
            keep_mask(x.to(DEVICE), tau[0], norm), x.to(DEVICE), torch.zeros((), dtype=dtype, device=DEVICE)
        )
        assert torch.equal(y, expected)
        assert (y[:96] == 0).sum() >= 32  # the entries exactly at τ were dropped, the ones above kept


def test_fused_segments_use_each_segments_threshold():
    _, triton_sparse_gemv = _gemv()
    gen = torch.Generator().manual_seed(11)
    n_in, segments = (200, (128, 64, 64)) if INTERPRET else (2048, (2048, 512, 512))
    x = torch.randn(n_in, generator=gen).to(DEVICE, torch.bfloat16)
    weight_t = torch.randn(n_in, sum(segments), generator=gen).to(DEVICE, torch.bfloat16)
    bias = torch.randn(sum(segments), generator=gen).to(DEVICE, torch.bfloat16)
    tau = torch.tensor([0.3, 0.8, 1.4], device=DEVICE)
    col_norm = (torch.rand(3, n_in, generator=gen) + 0.5).to(DEVICE)
    y = triton_sparse_gemv(x, weight_t, tau, bias, col_norm, segments)
    start, parts = 0, []
    for g, size in enumerate(segments):
        parts.append(
            _reference64(x, weight_t[:, start : start + size], bias[start : start + size], col_norm[g], tau[g : g + 1])
        )
        start += size
    assert _relative_error(y, torch.cat(parts)) < TOLERANCE[torch.bfloat16]
    separate = sparse_gemv(x, weight_t.contiguous(), tau, bias, col_norm, segments)  # through the op
    assert _relative_error(separate, torch.cat(parts)) < TOLERANCE[torch.bfloat16]


def test_nan_input_reaches_the_output_like_the_dense_model():
    _, triton_sparse_gemv = _gemv()
    x = torch.randn(128, device=DEVICE, dtype=torch.float16)
    x[5] = float("nan")
    weight_t = torch.randn(128, 64, device=DEVICE, dtype=torch.float16)
    y = triton_sparse_gemv(x, weight_t, torch.tensor([0.5], device=DEVICE))
    assert torch.isnan(y).all()


@pytest.mark.parametrize("tokens", [2, 5])
def test_batches_take_the_masked_dense_path_and_match(tokens):
    gen = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, 3, 192, generator=gen).to(DEVICE, torch.bfloat16)  # (B, T, K)
    weight_t = torch.randn(192, 96, generator=gen).to(DEVICE, torch.bfloat16)
    tau = torch.tensor([0.6], device=DEVICE)
    y = sparse_gemv(x, weight_t, tau)
    assert y.shape == (tokens, 3, 96)
    ref = sparse_gemv_reference(x.double(), weight_t.double(), None, tau[0].double())
    assert _relative_error(y, ref) < TOLERANCE[torch.bfloat16]


def _listed():
    from sponlib.kernels.tiles import GemvConfig
    from sponlib.kernels.triton_listed import list_kept, listed_sparse_gemv

    return GemvConfig, list_kept, listed_sparse_gemv


def _check_lists(x: torch.Tensor, tau: torch.Tensor, lists, col_norm: torch.Tensor | None = None) -> None:
    """`lists` hold exactly the inputs of x that the mask keeps under each threshold (and each
    segment's column norms, for wina), chunk by chunk, in order."""
    rows, vals, counts, chunk = lists
    assert counts.shape == (tau.shape[0], -(-x.shape[0] // chunk))
    for g in range(tau.shape[0]):
        keep = keep_mask(x, tau[g], None if col_norm is None else col_norm[g])
        for c, start in enumerate(range(0, x.shape[0], chunk)):
            expected = start + torch.nonzero(keep[start : start + chunk]).flatten()
            entries = slice(start, start + len(expected))
            assert int(counts[g, c]) == len(expected) and torch.equal(rows[g, entries].long(), expected)
            assert torch.equal(vals[g, entries], x.float()[expected])


@pytest.mark.parametrize("wina", [False, True], ids=["teal", "wina"])
def test_kept_lists_hold_each_segments_kept_inputs_in_order(wina):
    _, list_kept, _ = _listed()
    gen = torch.Generator().manual_seed(21 + wina)
    for n_in, chunk in zip(SIZES[:3], (16, 64, 10**6)):  # chunks of 16 and 64 (the last one short), one for all
        x = torch.randn(n_in, generator=gen).to(DEVICE, torch.bfloat16)  # (K,)
        tau = torch.tensor([0.0, 0.6, 1e9], device=DEVICE)  # all kept, some, none
        col_norm = (torch.rand(3, n_in, generator=gen) + 0.5).to(DEVICE) if wina else None  # (3, K)
        _check_lists(x, tau, list_kept(x, tau, chunk, col_norm), col_norm)


def _listed_configs():
    GemvConfig, _, _ = _listed()
    return (
        GemvConfig(64, 16, 10**6, prefetch=True),  # the whole list per tile, one launch
        GemvConfig(64, 16, 48, prefetch=True, atomic=True, finisher=True),  # the list split, then a cast kernel
        GemvConfig(128, 8, 32, atomic=True, finisher=True, evict=True),  # no step in flight
        GemvConfig(128, 8, 16, prefetch=True, atomic=True, finisher=True, pdl=True),
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_listed_gemv_matches_the_reference(dtype):
    """Random shapes, levels 0 to 0.99 and one to three segments with their own thresholds, every
    config twice on one workspace: the result, every output written, the workspace left zero."""
    _, list_kept, listed_sparse_gemv = _listed()
    gen = torch.Generator().manual_seed(31 + DTYPES.index(dtype))
    for case in range(8):
        n_in = SIZES[int(torch.randint(len(SIZES), (1,), generator=gen))]
        segments = [SIZES[int(torch.randint(len(SIZES), (1,), generator=gen))] for _ in range(1 + case % 3)]
        n_out = sum(segments)
        x, weight_t, bias, _, _ = _random_case(gen, n_in, n_out, dtype, 0.0, False)
        levels = torch.tensor([0.0, 0.25, 0.5, 0.7, 0.99])[torch.randint(5, (len(segments),), generator=gen)]
        tau = torch.quantile(x.float().abs().cpu(), levels).to(DEVICE)  # (G,)
        workspace = torch.zeros(2 * n_out, device=DEVICE)
        starts = [0, *torch.tensor(segments).cumsum(0).tolist()]
        reference = torch.cat(
            [
                _reference64(x, weight_t[:, a:b], bias[a:b], None, tau[g : g + 1])
                for g, (a, b) in enumerate(zip(starts, starts[1:]))
            ]
        )
        for index, config in enumerate(_listed_configs()):
            kept = list_kept(x, tau, (16, 32, 10**6)[(index + case) % 3])  # lists written in chunks, read as one
            for _ in range(2):
                out = torch.full((n_out,), float("nan"), device=DEVICE, dtype=dtype)  # poisoned
                y = listed_sparse_gemv(x, weight_t, kept, bias, tuple(segments), config, out, workspace)
                assert y.data_ptr() == out.data_ptr() and torch.isfinite(y).all() and not workspace.any()
                assert _relative_error(y, reference) < TOLERANCE[dtype], (n_in, segments, levels, config)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_producers_make_the_models_input_and_list_it(dtype):
    """RMSNorm and SiLU(gate) · up as a Llama block computes them (to rounding), and lists of
    exactly the values they return, for one to three thresholds."""
    from sponlib.kernels.triton_producers import rmsnorm_list, silu_mul_list

    gen = torch.Generator().manual_seed(41 + DTYPES.index(dtype))
    # two roundings, each off by up to one unit in the last place (Triton's CPU interpreter truncates
    # where a GPU rounds to nearest)
    ulps = 2 * torch.finfo(dtype).eps
    for n in (*SIZES[:3], 9000):  # 9000: the mean square over more than one load
        h = (torch.randn(n, generator=gen) * 3).to(DEVICE, dtype)  # (K,)
        weight = (torch.rand(n, generator=gen) + 0.5).to(DEVICE, dtype)  # (K,)
        tau = torch.tensor([0.0, 0.4, 1.0][: 1 + n % 3], device=DEVICE)  # (G,)
        chunk = (16, 64, 10**6)[n % 3]
        h32 = h.float()
        expected = weight * (h32 * torch.rsqrt(h32.pow(2).mean() + 1e-5)).to(dtype)  # as the model computes it
        for segment_programs in (False, True):
            y, kept = rmsnorm_list(h, weight, 1e-5, tau, chunk, segment_programs=segment_programs)
            torch.testing.assert_close(y, expected, rtol=ulps, atol=ulps)
            _check_lists(y, tau, kept)
        gate, up = (
            (torch.randn(n, generator=gen) * 2).to(DEVICE, dtype),
            torch.randn(n, generator=gen).to(DEVICE, dtype),
        )
        a, kept = silu_mul_list(gate, up, tau, chunk)
        torch.testing.assert_close(a, torch.nn.functional.silu(gate) * up, rtol=ulps, atol=ulps)
        _check_lists(a, tau, kept)


@needs_gpu
def test_sparse_linear_under_torch_compile_and_cuda_graphs_follows_new_thresholds():
    torch.manual_seed(0)
    linear = torch.nn.Linear(1024, 512, bias=False, device="cuda", dtype=torch.bfloat16)
    module = SparseLinear.from_linear(linear, 0.5).eval()
    compiled = torch.compile(module, mode="reduce-overhead", fullgraph=True)
    for tau in (0.5, 0.5, 0.5, 1.5, 0.0):  # several calls: warm-up, then CUDA-graph replays
        module.set_tau(tau)
        x = torch.randn(1, 1, 1024, device="cuda", dtype=torch.bfloat16)
        y = compiled(x).clone()
        ref = sparse_gemv_reference(x.double(), module.weight_t.double(), None, module.tau[0].double())
        assert _relative_error(y, ref) < TOLERANCE[torch.bfloat16], tau


@needs_gpu
def test_swapped_tiny_model_matches_the_hooked_projections_on_the_gpu():
    """Each SparseLinear, fed the input its hooked projection saw, gives the hooked output."""
    from sponlib.models import iter_projections, model_fingerprint
    from sponlib.models.tiny import tiny_model
    from sponlib.sparsity import Sparsifier, Thresholds

    model = tiny_model("llama").to("cuda", torch.bfloat16)
    names = [p.name for p in iter_projections(model)]
    thresholds = Thresholds("teal", 0.5, dict.fromkeys(names, 0.5), dict.fromkeys(names, 0.4), model_fingerprint(model))
    seen = {}
    hooks = [
        p.module.register_forward_hook(lambda m, a, out, n=p.name: seen.__setitem__(n, (a[0], out)))
        for p in iter_projections(model)
    ]
    ids = torch.randint(0, model.config.vocab_size, (1, 1), device="cuda")
    with torch.no_grad(), Sparsifier(model, thresholds):
        model(ids)
    for h in hooks:
        h.remove()
    # the hooks saw S(x): feed the dense input again through each projection's pre-hook-free path
    swap_in(model, thresholds)
    for name, module in model.named_modules():
        if isinstance(module, SparseLinear):
            x_masked, hooked = seen[name]
            y = module(x_masked)  # S(S(x)) = S(x)
            assert _relative_error(y, hooked.double()) < TOLERANCE[torch.bfloat16], name


@needs_gpu
def test_listing_norms_give_the_fused_paths_output_compiled_with_cuda_graphs():
    """A tiny bf16 Llama swapped in with fused groups, then listing norms (the Triton producer and
    the listed GEMV): the last token's logits against the fused path's, eager and compiled."""
    from sponlib.kernels.listing import list_in
    from sponlib.models import iter_projections, model_fingerprint
    from sponlib.models.tiny import tiny_model
    from sponlib.sparsity import Thresholds

    torch.manual_seed(2)
    model = tiny_model("llama").to("cuda", torch.bfloat16)
    names = [p.name for p in iter_projections(model)]
    thresholds = Thresholds("teal", 0.5, dict.fromkeys(names, 0.5), dict.fromkeys(names, 0.4), model_fingerprint(model))
    swap_in(model, thresholds, fuse=True)
    ids = torch.randint(0, model.config.vocab_size, (1, 1), device="cuda")
    with torch.no_grad():
        expected = model(ids).logits.double()
        list_in(model)
        assert _relative_error(model(ids).logits, expected) < TOLERANCE[torch.bfloat16]
        compiled = torch.compile(lambda i: model(i).logits, mode="reduce-overhead", fullgraph=True)
        for _ in range(3):
            assert _relative_error(compiled(ids).clone(), expected) < TOLERANCE[torch.bfloat16]


@needs_gpu
def test_fused_group_under_torch_compile_matches_separate_projections():
    """q/k/v as one launch (SegmentOf in each place), compiled with CUDA graphs, against each
    projection's own SparseLinear."""
    from sponlib.kernels import FusedSparseLinear, SegmentOf

    torch.manual_seed(1)
    linears = [torch.nn.Linear(512, n, bias=False, device="cuda", dtype=torch.bfloat16) for n in (512, 128, 128)]
    taus = [0.4, 0.7, 1.0]
    fused = FusedSparseLinear(linears, taus)
    segments = [SegmentOf(fused, i) for i in range(3)]
    separate = [SparseLinear.from_linear(linear, tau) for linear, tau in zip(linears, taus)]

    def attention_inputs(x):  # as an attention block calls its projections
        return [segment(x) for segment in segments]

    compiled = torch.compile(attention_inputs, mode="reduce-overhead", fullgraph=True)
    for _ in range(4):
        x = torch.randn(1, 1, 512, device="cuda", dtype=torch.bfloat16)
        for got, module in zip(compiled(x), separate):
            assert _relative_error(got.clone(), module(x).double()) < TOLERANCE[torch.bfloat16]
    assert fused.pending is None


@needs_gpu
@pytest.mark.parametrize("finisher", [False, True], ids=["counter", "finisher"])
def test_dependent_launches_in_a_cuda_graph_read_the_previous_output(finisher):
    """A chain of launches as programmatic dependents, captured in one graph: each launch reads the
    output the one before it wrote, so a launch that read too early would show here."""
    GemvConfig, triton_sparse_gemv = _gemv()
    gen = torch.Generator().manual_seed(13)
    weight_t = (torch.randn(2048, 2048, generator=gen) * 1.2 / 2048**0.5).to("cuda", torch.bfloat16)  # (K, K)
    tau = torch.tensor([0.5], device="cuda")
    workspace = torch.zeros(4096, device="cuda")
    config = GemvConfig(256, 16, 64, prefetch=True, atomic=True, pdl=True, finisher=finisher)
    x = torch.randn(2048, generator=gen).to("cuda", torch.bfloat16)
    triton_sparse_gemv(x, weight_t, tau, config=config, workspace=workspace)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        chain = [x]
        for _ in range(6):
            chain.append(triton_sparse_gemv(chain[-1], weight_t, tau, config=config, workspace=workspace))
    for _ in range(3):
        x.copy_(torch.randn(2048, generator=gen).to("cuda", torch.bfloat16))
        graph.replay()
        for before, after in zip(chain, chain[1:]):
            ref = _reference64(before, weight_t, None, None, tau)
            assert _relative_error(after, ref) < TOLERANCE[torch.bfloat16]
        assert not workspace.any()


def _shipped_rows():
    import json

    from sponlib.kernels.tiles import CONFIG_DIR

    rows = []
    for path in sorted(CONFIG_DIR.glob("*.json")):
        rows += [(path.stem, row) for row in json.loads(path.read_text())["configs"]]
    return rows


@pytest.mark.parametrize(
    "gpu, row",
    _shipped_rows(),
    ids=lambda v: (
        v if isinstance(v, str) else f"{v['in']}x{v['out']}" + (f"@{v['min_sparsity']}" if "min_sparsity" in v else "")
    ),
)
def test_every_shipped_tile_config_computes_the_reference(gpu, row):
    """Each row of the tuned tables, on its own shape (small shapes only under the interpreter),
    twice with one workspace: the result, every output written, the workspace left zero."""
    GemvConfig, triton_sparse_gemv = _gemv()
    if INTERPRET and row["in"] * row["out"] > 2**20:
        pytest.skip("too large for Triton's interpreter")
    config = GemvConfig(**{k: v for k, v in row.items() if k in GemvConfig.__dataclass_fields__})
    gen = torch.Generator().manual_seed(row["in"] + row["out"])
    workspace = torch.zeros(2 * row["out"], device=DEVICE)
    for sparsity in (0.0, 0.5):
        x, weight_t, bias, _, tau = _random_case(gen, row["in"], row["out"], torch.bfloat16, sparsity, False)
        for _ in range(2):
            out = torch.full((row["out"],), float("nan"), device=DEVICE, dtype=torch.bfloat16)
            y = triton_sparse_gemv(x, weight_t, tau, bias, config=config, out=out, workspace=workspace)
            assert torch.isfinite(y).all() and not workspace.any()
            assert _relative_error(y, _reference64(x, weight_t, bias, None, tau)) < TOLERANCE[torch.bfloat16]
