"""The sparse GEMV over a ready list of kept inputs: one small kernel lists each segment's kept
inputs once (their indices and values, in order, and how many), and the GEMV's programs split
that list evenly, so the work and the number of busy programs follow the kept rows, not K.

    kept = list_kept(x, tau)                          (rows (G, K), vals (G, K), counts (G,))
    y = listed_sparse_gemv(x, weight_t, kept, bias)   the same y as triton_sparse_gemv

Where the streamed kernel (`triton_gemv`) runs as many steps at sparsity 0.5 as at 0, each
half masked off, here program (tile, slice) takes entries slice·P .. slice·P + P − 1 of its
segment's list: at 0.5 half the slices find nothing to do and return at once, and the split-K
sums take half the atomics. The list is what a fused producer (RMSNorm, SiLU·up) would write as
it makes x; `list_kept` stands in for that producer, as one launch more (docs/kernel_notes.md, v6).

Split-K sums go through float32 atomics that a second small kernel casts (`finisher`): slices
with nothing to add return without arriving, so no arrival counter can tell the last one.
Shapes: K inputs, N outputs, G ≤ 3 segments (as in `triton_gemv`); BLOCK_K list entries per
step, BLOCK_N outputs per program. Runs under TRITON_INTERPRET=1 on CPU tensors too.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .tiles import MAX_SEGMENTS, GemvConfig
from .triton_gemv import cast_sums, gdc_launch_dependents, gdc_wait, supports_pdl
from .triton_steps import keep_block, load_rows, store_output


@triton.jit
def list_segment(x, offs, ok, tau, norm_ptr, rows_ptr, vals_ptr, count_ptr, HAS_NORM: tl.constexpr):
    """One segment's list of x (K_POW2,) float32 under threshold tau: the kept entries' indices
    and values, in order, at rows_ptr and vals_ptr, and how many at count_ptr."""
    keep = keep_block(x, tau, norm_ptr, offs, ok, HAS_NORM)
    position = tl.cumsum(keep.to(tl.int32), axis=0) - 1  # (K_POW2,) index among the kept
    tl.store(rows_ptr + position, offs, mask=keep)
    tl.store(vals_ptr + position, x, mask=keep)
    tl.store(count_ptr, tl.sum(keep.to(tl.int32), axis=0))


@triton.jit
def _list_kept_kernel(
    x_ptr,  # (K,) input
    tau_ptr,  # (G,) float32 threshold per segment
    norm_ptr,  # (G, K) float32 column norms (wina), or any pointer when HAS_NORM is off
    rows_ptr,  # (G, K) int32: each segment's kept input indices, in order, then unwritten
    vals_ptr,  # (G, K) float32: their inputs
    counts_ptr,  # (G,) int32: how many each segment keeps
    K,
    HAS_NORM: tl.constexpr,
    PDL: tl.constexpr,
    K_POW2: tl.constexpr,
):
    """One program per segment: the mask of all K inputs, a prefix sum, the kept ones stored."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()  # x is the previous launch's output
    segment = tl.program_id(0)
    offs = tl.arange(0, K_POW2)  # (K_POW2,)
    ok = offs < K
    x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    start = segment * K
    list_segment(
        x, offs, ok, tl.load(tau_ptr + segment), norm_ptr + start, rows_ptr + start, vals_ptr + start,
        counts_ptr + segment, HAS_NORM,
    )  # fmt: skip


@triton.jit
def _listed_block(
    rows_ptr,
    vals_ptr,
    w_ptr,
    j,
    stop,
    offs_n,
    n_ok,
    N,
    EVEN_N: tl.constexpr,
    EVICT: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """List entries j .. j + BLOCK_K − 1 (those before `stop`): inputs (float32) and weight rows,
    (BLOCK_K,) and (BLOCK_K, BLOCK_N). Indices and inputs load side by side; only the rows wait."""
    offs = j + tl.arange(0, BLOCK_K)  # (BLOCK_K,)
    ok = offs < stop
    rows = tl.load(rows_ptr + offs, mask=ok, other=0)
    x = tl.load(vals_ptr + offs, mask=ok, other=0.0)
    return x, load_rows(w_ptr, rows, ok, offs_n, n_ok, N, EVEN_N, EVICT)


@triton.jit
def _listed_gemv_kernel(
    w_ptr,  # (K, N) input-major weight
    rows_ptr,  # (G, K) int32 kept indices per segment
    vals_ptr,  # (G, K) float32 their inputs
    counts_ptr,  # (G,) int32
    bias_ptr,  # (N,) or any pointer when HAS_BIAS is off
    out_ptr,  # (N,) output (no split)
    part_ptr,  # (N,) float32 zeros (split): the sums, cast and re-zeroed by the second kernel
    K,
    N,
    seg1,
    seg2,  # where the second and third segments start (N when absent)
    entries_per_program,
    HAS_BIAS: tl.constexpr,
    SPLIT: tl.constexpr,
    PREFETCH: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVICT: tl.constexpr,
    PDL: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Program (tile, slice): BLOCK_N outputs over its segment's list entries of this slice."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()  # the lists are the previous launch's output
    n_start = tl.program_id(0) * BLOCK_N
    offs_n = n_start + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    n_ok = offs_n < N
    segment = (n_start >= seg1).to(tl.int32) + (n_start >= seg2).to(tl.int32)  # tiles never straddle
    rows_ptr += segment * K
    vals_ptr += segment * K
    first = tl.program_id(1) * entries_per_program
    stop = tl.minimum(first + entries_per_program, tl.load(counts_ptr + segment))
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    x, w = _listed_block(rows_ptr, vals_ptr, w_ptr, first, stop, offs_n, n_ok, N, EVEN_N, EVICT, BLOCK_K)
    if PREFETCH:  # the next step's loads in flight while this one is added
        for j in range(first + BLOCK_K, stop + BLOCK_K, BLOCK_K):  # the last step's loads are all masked off
            x_next, w_next = _listed_block(rows_ptr, vals_ptr, w_ptr, j, stop, offs_n, n_ok, N, EVEN_N, EVICT, BLOCK_K)
            acc += w.to(tl.float32) * x[:, None]
            x, w = x_next, w_next
    else:
        acc += w.to(tl.float32) * x[:, None]
        for j in range(first + BLOCK_K, stop, BLOCK_K):
            x, w = _listed_block(rows_ptr, vals_ptr, w_ptr, j, stop, offs_n, n_ok, N, EVEN_N, EVICT, BLOCK_K)
            acc += w.to(tl.float32) * x[:, None]
    y = tl.sum(acc, axis=0)  # (BLOCK_N,)
    if SPLIT:
        if first < stop:  # a slice past the end of the list adds nothing: no atomics
            tl.atomic_add(part_ptr + offs_n, y, mask=n_ok, sem="relaxed")
    else:
        store_output(y, bias_ptr, out_ptr, offs_n, n_ok, HAS_BIAS)


def new_lists(n_in: int, groups: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Room for the lists of `groups` segments of n_in inputs: rows (G, K) int32, vals (G, K)
    float32, counts (G,) int32."""
    assert 1 <= groups <= MAX_SEGMENTS
    return (
        torch.empty((groups, n_in), device=device, dtype=torch.int32),
        torch.empty((groups, n_in), device=device, dtype=torch.float32),
        torch.empty(groups, device=device, dtype=torch.int32),
    )


def listing_launch(n_in: int, pdl: bool, device) -> dict:
    """Launch settings of a one-program listing kernel over n_in inputs: K_POW2, PDL, warps."""
    k_pow2 = triton.next_power_of_2(n_in)
    pdl = pdl and supports_pdl(device)
    return {"PDL": pdl, "K_POW2": k_pow2, "num_warps": max(4, min(16, k_pow2 // 1024))} | (
        {"launch_pdl": True} if pdl else {}
    )


def list_kept(
    x: torch.Tensor, tau: torch.Tensor, col_norm: torch.Tensor | None = None, pdl: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each segment's kept inputs, listed once: x (K,) float16/bfloat16, tau (G,) float32,
    col_norm (G, K) float32 or None -> rows (G, K) int32 (the first counts[g] of row g valid),
    vals (G, K) float32, counts (G,) int32."""
    (n_in,), groups = x.shape, tau.shape[0]
    assert x.is_contiguous()
    kept = new_lists(n_in, groups, x.device)
    _list_kept_kernel[(groups,)](
        x,
        tau,
        tau if col_norm is None else col_norm,
        *kept,
        n_in,
        HAS_NORM=col_norm is not None,
        **listing_launch(n_in, pdl, x.device),
    )
    return kept


def listed_sparse_gemv(
    x: torch.Tensor,
    weight_t: torch.Tensor,
    kept: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    bias: torch.Tensor | None = None,
    segments: tuple[int, ...] | None = None,
    config: GemvConfig | None = None,
    out: torch.Tensor | None = None,
    workspace: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = S(x) Wᵀ + b from the lists `kept` of `list_kept` (x gives the dtype only): weight_t
    (K, N) contiguous, bias (N,) or None, segments: the G output sizes (default one), config:
    block_n, block_k, k_per_program (list entries per program; fewer than K splits the list),
    num_warps, prefetch, evict, pdl; workspace (2N,) float32 zeros, left zero -> (N,) in x's dtype."""
    rows, vals, counts = kept
    n_in, n_out = weight_t.shape
    segments = tuple(segments or (n_out,))
    assert weight_t.is_contiguous() and rows.shape == (len(segments), n_in) and sum(segments) == n_out
    config = config or GemvConfig(1024, 16, 64, prefetch=True, atomic=True, finisher=True)
    block_n = config.block_n
    while any(size % block_n for size in segments[:-1]):  # output tiles must not straddle segments
        block_n //= 2
    starts = [sum(segments[:i]) for i in range(1, len(segments))] + [n_out] * (MAX_SEGMENTS - len(segments))
    split = config.split(n_in)
    out = torch.empty(n_out, device=x.device, dtype=x.dtype) if out is None else out
    if split > 1 and workspace is None:
        workspace = torch.zeros(2 * n_out, device=x.device, dtype=torch.float32)
    part = workspace[:n_out] if split > 1 else out
    pdl = config.pdl and supports_pdl(x.device)
    _listed_gemv_kernel[(triton.cdiv(n_out, block_n), split)](
        weight_t,
        rows,
        vals,
        counts,
        counts if bias is None else bias,
        out,
        part,
        n_in,
        n_out,
        starts[0],
        starts[1],
        config.inputs_per_program(n_in),
        HAS_BIAS=bias is not None,
        SPLIT=split > 1,
        PREFETCH=config.prefetch,
        EVEN_N=n_out % block_n == 0,
        EVICT=config.evict,
        PDL=pdl,
        BLOCK_K=config.block_k,
        BLOCK_N=block_n,
        num_warps=config.num_warps,
        **({"launch_pdl": True} if pdl else {}),
    )
    if split > 1:
        cast_sums(part, bias, out, pdl, counts)
    return out
