"""The sparse GEMV over ready lists of kept inputs: each segment's kept inputs are listed once
(their indices and values, in order, and how many), and the GEMV's programs split that list
evenly, so the work and the number of busy programs follow the kept rows, not K.

    lists = list_kept(x, tau)                          KeptLists: rows, vals (G, K), counts (G, C)
    y = listed_sparse_gemv(x, weight_t, lists, bias)   the same y as triton_sparse_gemv

Where the streamed kernel (`triton_gemv`) runs as many steps at sparsity 0.5 as at 0, each half
masked off, here each program takes P entries of its segment's list: at 0.5 half the programs
find the list ended and return at once, with no mask to build.

The lists are written chunk by chunk (C chunks of `chunk` inputs), so that many programs can
write them, each with a prefix sum over its own chunk: one program over all of K (v6) took
2–16 µs. Each chunk's list is split evenly in turn: program (tile, slice) takes P entries of one
chunk's list, so the programs stay balanced with no search for where an entry is stored (v7).
The lists are what a producer of x (RMSNorm, SiLU·up: `triton_producers`) writes as it makes x;
`list_kept` stands in for such a producer, as one launch more (docs/kernel_notes.md, v6 and v7).

Split sums go through float32 atomics that a second small kernel casts (`finisher`): slices with
nothing to add return without arriving, so no arrival counter can tell the last one.
Shapes: K inputs, N outputs, G ≤ 3 segments (as in `triton_gemv`); BLOCK_K list entries per
step, BLOCK_N outputs per program. Runs under TRITON_INTERPRET=1 on CPU tensors too.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .tiles import LIST_CHUNK, MAX_SEGMENTS, GemvConfig
from .triton_gemv import cast_sums, gdc_launch_dependents, gdc_wait, supports_pdl
from .triton_steps import keep_block, listed_entries, load_rows, store_output

LISTING_BLOCK = 512  # inputs per listing program (a chunk of more takes a program of its own)


class KeptLists(NamedTuple):
    """Each segment's kept inputs, chunk by chunk: those of inputs c·chunk .. (c+1)·chunk − 1, in
    order, at entries c·chunk .. c·chunk + counts[g, c] − 1 of row g (the rest unwritten)."""

    rows: torch.Tensor  # (G, K) int32 input indices
    vals: torch.Tensor  # (G, K) float32 their inputs
    counts: torch.Tensor  # (G, C) int32 how many each chunk keeps
    chunk: int  # a power of two


def list_chunk(chunk: int, n_in: int) -> int:
    """The chunk a list maker or a config asks for, as lists are written: a power of two, at most
    the inputs there are (rounded up)."""
    return min(triton.next_power_of_2(max(1, chunk)), triton.next_power_of_2(n_in))


def new_lists(n_in: int, groups: int, chunk: int, device) -> KeptLists:
    """Room for the lists of `groups` segments of n_in inputs in chunks of `chunk`."""
    assert 1 <= groups <= MAX_SEGMENTS
    chunk = list_chunk(chunk, n_in)
    return KeptLists(
        torch.empty((groups, n_in), device=device, dtype=torch.int32),
        torch.empty((groups, n_in), device=device, dtype=torch.float32),
        torch.empty((groups, triton.cdiv(n_in, chunk)), device=device, dtype=torch.int32),
        chunk,
    )


def listing_launch(lists: KeptLists, pdl: bool, device) -> tuple[int, dict]:
    """Programs of a listing kernel over `lists`' chunks, and its launch settings: CHUNK, ROWS
    (chunks per program), PDL, warps."""
    n_chunks, chunk = lists.counts.shape[1], lists.chunk
    rows = max(1, LISTING_BLOCK // chunk)
    pdl = pdl and supports_pdl(device)
    settings = {"CHUNK": chunk, "ROWS": rows, "PDL": pdl, "num_warps": max(4, min(16, rows * chunk // 512))}
    return triton.cdiv(n_chunks, rows), settings | ({"launch_pdl": True} if pdl else {})


@triton.jit
def chunk_offsets(program, K, ROWS: tl.constexpr, CHUNK: tl.constexpr):
    """Program `program`'s inputs, ROWS chunks of CHUNK: their indices (ROWS, CHUNK), which exist,
    and the chunks' numbers (ROWS,)."""
    chunks = program * ROWS + tl.arange(0, ROWS)  # (ROWS,)
    offs = chunks[:, None] * CHUNK + tl.arange(0, CHUNK)[None, :]  # (ROWS, CHUNK)
    return offs, offs < K, chunks


@triton.jit
def list_chunks(
    x, offs, ok, chunks, n_chunks, tau, norm_ptr, rows_ptr, vals_ptr, counts_ptr, HAS_NORM: tl.constexpr,
    CHUNK: tl.constexpr,
):  # fmt: skip
    """One segment's lists of the chunks of x (ROWS, CHUNK) float32 under threshold tau: each
    chunk's kept indices and values, in order, from its first entry, and how many."""
    keep = keep_block(x, tau, norm_ptr, offs, ok, HAS_NORM)  # (ROWS, CHUNK)
    position = tl.cumsum(keep.to(tl.int32), axis=1) - 1  # index among the chunk's kept
    entry = chunks[:, None] * CHUNK + position  # (ROWS, CHUNK)
    tl.store(rows_ptr + entry, offs, mask=keep)
    tl.store(vals_ptr + entry, x, mask=keep)
    tl.store(counts_ptr + chunks, tl.sum(keep.to(tl.int32), axis=1), mask=chunks < n_chunks)


@triton.jit
def _list_kept_kernel(
    x_ptr,  # (K,) input
    tau_ptr,  # (G,) float32 threshold per segment
    norm_ptr,  # (G, K) float32 column norms (wina), or any pointer when HAS_NORM is off
    rows_ptr,  # (G, K) int32
    vals_ptr,  # (G, K) float32
    counts_ptr,  # (G, C) int32
    K,
    n_chunks,
    HAS_NORM: tl.constexpr,
    PDL: tl.constexpr,
    ROWS: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """Program (segment, p): the lists of chunks p·ROWS .. p·ROWS + ROWS − 1 of one segment."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()  # x is the previous launch's output
    segment = tl.program_id(0)
    offs, ok, chunks = chunk_offsets(tl.program_id(1), K, ROWS, CHUNK)
    x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)  # (ROWS, CHUNK)
    start = segment * K
    list_chunks(
        x, offs, ok, chunks, n_chunks, tl.load(tau_ptr + segment), norm_ptr + start, rows_ptr + start,
        vals_ptr + start, counts_ptr + segment * n_chunks, HAS_NORM, CHUNK,
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
    rows, x, ok = listed_entries(rows_ptr, vals_ptr, j, stop, BLOCK_K)
    return x, load_rows(w_ptr, rows, ok, offs_n, n_ok, N, EVEN_N, EVICT)


@triton.jit
def _listed_gemv_kernel(
    w_ptr,  # (K, N) input-major weight
    rows_ptr,  # (G, K) int32 kept indices per segment, chunk by chunk
    vals_ptr,  # (G, K) float32 their inputs
    counts_ptr,  # (G, C) int32 how many each chunk keeps
    bias_ptr,  # (N,) or any pointer when HAS_BIAS is off
    out_ptr,  # (N,) output (no split)
    part_ptr,  # (N,) float32 zeros (split): the sums, cast and re-zeroed by the second kernel
    K,
    N,
    seg1,
    seg2,  # where the second and third segments start (N when absent)
    chunk,
    n_chunks,
    entries_per_program,
    slices_per_chunk,
    HAS_BIAS: tl.constexpr,
    SPLIT: tl.constexpr,
    PREFETCH: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVICT: tl.constexpr,
    PDL: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Program (tile, chunk · slices_per_chunk + slice): BLOCK_N outputs over entries slice·P ..
    slice·P + P − 1 of one chunk's list of its segment."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()  # the lists are the previous launch's output
    n_start = tl.program_id(0) * BLOCK_N
    offs_n = n_start + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    n_ok = offs_n < N
    segment = (n_start >= seg1).to(tl.int32) + (n_start >= seg2).to(tl.int32)  # tiles never straddle
    rows_ptr += segment * K
    vals_ptr += segment * K
    in_chunk = tl.program_id(1) // slices_per_chunk
    first_of_chunk = in_chunk * chunk
    first = first_of_chunk + (tl.program_id(1) % slices_per_chunk) * entries_per_program
    stop = tl.minimum(first + entries_per_program, first_of_chunk + tl.load(counts_ptr + segment * n_chunks + in_chunk))
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
        if first < stop:  # a slice past the end of its chunk's list adds nothing: no atomics
            tl.atomic_add(part_ptr + offs_n, y, mask=n_ok, sem="relaxed")
    else:
        store_output(y, bias_ptr, out_ptr, offs_n, n_ok, HAS_BIAS)


def list_kept(
    x: torch.Tensor, tau: torch.Tensor, chunk: int = LIST_CHUNK, col_norm: torch.Tensor | None = None, pdl: bool = False
) -> KeptLists:
    """Each segment's kept inputs, listed chunk by chunk: x (K,) float16/bfloat16, tau (G,)
    float32, chunk: inputs per chunk (rounded up to a power of two), col_norm (G, K) float32 or None."""
    (n_in,), groups = x.shape, tau.shape[0]
    assert x.is_contiguous()
    lists = new_lists(n_in, groups, chunk, x.device)
    programs, settings = listing_launch(lists, pdl, x.device)
    _list_kept_kernel[(groups, programs)](
        x, tau, tau if col_norm is None else col_norm, *lists[:3], n_in, lists.counts.shape[1],
        HAS_NORM=col_norm is not None, **settings,
    )  # fmt: skip
    return lists


def listed_sparse_gemv(
    x: torch.Tensor,
    weight_t: torch.Tensor,
    lists: KeptLists,
    bias: torch.Tensor | None = None,
    segments: tuple[int, ...] | None = None,
    config: GemvConfig | None = None,
    out: torch.Tensor | None = None,
    workspace: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = S(x) Wᵀ + b from `lists` (x gives the dtype only): weight_t (K, N) contiguous, bias
    (N,) or None, segments: the G output sizes (default one), config: block_n, block_k,
    k_per_program (list entries per program, at most a chunk: each chunk's list is split evenly),
    num_warps, prefetch, evict, pdl; workspace (2N,) float32 zeros, left zero -> (N,) in x's dtype."""
    rows, vals, counts, chunk = lists
    n_in, n_out = weight_t.shape
    segments = tuple(segments or (n_out,))
    assert weight_t.is_contiguous() and rows.shape == (len(segments), n_in) and sum(segments) == n_out
    config = config or GemvConfig(1024, 8, 32, prefetch=True, atomic=True, finisher=True)
    block_n = config.block_n
    while any(size % block_n for size in segments[:-1]):  # output tiles must not straddle segments
        block_n //= 2
    starts = [sum(segments[:i]) for i in range(1, len(segments))] + [n_out] * (MAX_SEGMENTS - len(segments))
    n_chunks, entries = counts.shape[1], min(config.inputs_per_program(n_in), chunk)
    slices_per_chunk = triton.cdiv(chunk, entries)
    split = n_chunks * slices_per_chunk
    out = torch.empty(n_out, device=x.device, dtype=x.dtype) if out is None else out
    if split > 1 and workspace is None:
        workspace = torch.zeros(2 * n_out, device=x.device, dtype=torch.float32)
    part = workspace[:n_out] if split > 1 else out
    pdl = config.pdl and supports_pdl(x.device)
    _listed_gemv_kernel[(triton.cdiv(n_out, block_n), split)](
        weight_t, rows, vals, counts, counts if bias is None else bias, out, part, n_in, n_out, starts[0],
        starts[1], chunk, n_chunks, entries, slices_per_chunk,
        HAS_BIAS=bias is not None, SPLIT=split > 1, PREFETCH=config.prefetch, EVEN_N=n_out % block_n == 0,
        EVICT=config.evict, PDL=pdl, BLOCK_K=config.block_k, BLOCK_N=block_n, num_warps=config.num_warps,
        **({"launch_pdl": True} if pdl else {}),
    )  # fmt: skip
    if split > 1:
        cast_sums(part, bias, out, pdl, counts)
    return out
