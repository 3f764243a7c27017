"""The building blocks of the Triton sparse GEMV (`triton_gemv`), as @triton.jit helpers: the
mask rule, a block of inputs with the weight rows of its kept ones, the two loop variants over a
program's slice of inputs (streamed blocks, or the kept rows listed first) and the epilogue that
adds a slice's sums into the output. Shapes: BLOCK_K inputs per step, BLOCK_N outputs per program.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def keep_block(x, tau, norm_ptr, offs_k, ok, HAS_NORM: tl.constexpr):
    """Mask of one block of inputs x (float32): score > τ, a NaN kept (it is not <= τ), nothing
    outside `ok`."""
    score = tl.abs(x)
    if HAS_NORM:
        score = score * tl.load(norm_ptr + offs_k, mask=ok, other=0.0)
    return ((score > tau) | (score != score)) & ok


@triton.jit
def _pick(offs, x_all, position, kept, first, BLOCK_K: tl.constexpr):
    """Kept rows number first .. first + BLOCK_K − 1 of a slice, picked in registers by a one-hot
    match on their positions among the kept (position −1: dropped): row indices, inputs (float32)
    and which of the BLOCK_K exist, (BLOCK_K,) each."""
    j = first + tl.arange(0, BLOCK_K)  # (BLOCK_K,)
    hit = position[None, :] == j[:, None]  # (BLOCK_K, K_POW2)
    rows = tl.sum(tl.where(hit, offs[None, :], 0), axis=1)
    x = tl.sum(tl.where(hit, x_all[None, :], 0.0), axis=1)
    return rows, x, j < kept


@triton.jit
def listed_entries(rows_ptr, vals_ptr, first, kept, BLOCK_K: tl.constexpr):
    """Entries first .. first + BLOCK_K − 1 of a program's list of kept rows in scratch memory: row
    indices, inputs (float32) and which of the BLOCK_K exist, (BLOCK_K,) each."""
    j = first + tl.arange(0, BLOCK_K)  # (BLOCK_K,)
    ok = j < kept
    return tl.load(rows_ptr + j, mask=ok, other=0), tl.load(vals_ptr + j, mask=ok, other=0.0), ok


@triton.jit
def dot_kept(
    x_ptr,
    w_ptr,
    norm_ptr,
    rows_ptr,
    vals_ptr,
    tau,
    offs_n,
    n_ok,
    k_begin,
    k_stop,
    k_per_program,
    N,
    HAS_NORM: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVICT: tl.constexpr,
    SCRATCH: tl.constexpr,
    PREFETCH: tl.constexpr,
    K_POW2: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """The slice's products over its kept rows only: every loop step loads BLOCK_K kept rows, so
    the steps scale with 1 − s, where masked loads of consecutive rows would wait as long for
    half-empty blocks as for full ones. The kept rows are either listed in order in scratch memory
    first (SCRATCH), or picked in registers step by step (no scratch, no barrier), with the next
    step's loads issued before the current one is used. -> (BLOCK_K, BLOCK_N) float32."""
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    offs = k_begin + tl.arange(0, K_POW2)  # (K_POW2,)
    ok = (offs < k_stop) & (tl.arange(0, K_POW2) < k_per_program)
    x_all = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    keep_all = keep_block(x_all, tau, norm_ptr, offs, ok, HAS_NORM)
    position = tl.cumsum(keep_all.to(tl.int32), axis=0) - 1  # index among the kept
    kept = tl.sum(keep_all.to(tl.int32), axis=0)
    if SCRATCH:
        slot = (tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)) * K_POW2  # this program's scratch
        tl.store(rows_ptr + slot + position, offs, mask=keep_all)
        tl.store(vals_ptr + slot + position, x_all, mask=keep_all)
        tl.debug_barrier()  # the lists are written by all threads, read by all threads
        if PREFETCH:
            rows, x, ok_j = listed_entries(rows_ptr + slot, vals_ptr + slot, 0, kept, BLOCK_K)
            w = load_rows(w_ptr, rows, ok_j, offs_n, n_ok, N, EVEN_N, EVICT)  # (BLOCK_K, BLOCK_N)
            for start in range(BLOCK_K, kept + BLOCK_K, BLOCK_K):  # the last step's loads are all masked off
                rows, x_next, ok_j = listed_entries(rows_ptr + slot, vals_ptr + slot, start, kept, BLOCK_K)
                w_next = load_rows(w_ptr, rows, ok_j, offs_n, n_ok, N, EVEN_N, EVICT)
                acc += w.to(tl.float32) * x[:, None]
                x, w = x_next, w_next
        else:
            for start in range(0, kept, BLOCK_K):
                rows, x, ok_j = listed_entries(rows_ptr + slot, vals_ptr + slot, start, kept, BLOCK_K)
                w = load_rows(w_ptr, rows, ok_j, offs_n, n_ok, N, EVEN_N, EVICT)  # (BLOCK_K, BLOCK_N)
                acc += w.to(tl.float32) * x[:, None]
    else:
        position = tl.where(keep_all, position, -1)
        rows, x, ok_j = _pick(offs, x_all, position, kept, 0, BLOCK_K)
        w = load_rows(w_ptr, rows, ok_j, offs_n, n_ok, N, EVEN_N, EVICT)  # (BLOCK_K, BLOCK_N)
        for step in range(1, tl.cdiv(kept, BLOCK_K) + 1):  # the last step's loads are all masked off
            rows, x_next, ok_j = _pick(offs, x_all, position, kept, step * BLOCK_K, BLOCK_K)
            w_next = load_rows(w_ptr, rows, ok_j, offs_n, n_ok, N, EVEN_N, EVICT)
            acc += w.to(tl.float32) * x[:, None]
            x, w = x_next, w_next
    return acc


@triton.jit
def load_rows(w_ptr, rows, keep, offs_n, n_ok, N, EVEN_N: tl.constexpr, EVICT: tl.constexpr):
    """The weight rows `rows` (BLOCK_K,) where `keep`, columns offs_n -> (BLOCK_K, BLOCK_N); a
    dropped row issues no load. Without a column mask (EVEN_N) the mask is constant along a row."""
    ptrs = w_ptr + rows[:, None] * N + offs_n[None, :]
    mask = keep[:, None] if EVEN_N else keep[:, None] & n_ok[None, :]
    if EVICT:
        return tl.load(ptrs, mask=mask, other=0.0, eviction_policy="evict_first")
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def _block(
    x_ptr,
    w_ptr,
    norm_ptr,
    tau,
    offs_k,
    k_stop,
    offs_n,
    n_ok,
    N,
    HAS_NORM: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVICT: tl.constexpr,
):
    """One block of inputs (float32) and the weight rows of its kept ones, a dropped row issuing no
    load: (BLOCK_K,), (BLOCK_K, BLOCK_N)."""
    ok = offs_k < k_stop
    if EVICT:
        x = tl.load(x_ptr + offs_k, mask=ok, other=0.0, eviction_policy="evict_last").to(tl.float32)
    else:
        x = tl.load(x_ptr + offs_k, mask=ok, other=0.0).to(tl.float32)
    keep = keep_block(x, tau, norm_ptr, offs_k, ok, HAS_NORM)
    return x, load_rows(w_ptr, offs_k, keep, offs_n, n_ok, N, EVEN_N, EVICT)


@triton.jit
def dot_stream(
    x_ptr,
    w_ptr,
    norm_ptr,
    tau,
    offs_n,
    n_ok,
    k_begin,
    k_stop,
    k_per_program,
    N,
    HAS_NORM: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVICT: tl.constexpr,
    PREFETCH: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """The slice's products one block of inputs after the other. With PREFETCH two blocks are in
    flight: the next block's mask and weight loads are issued before the current block is
    consumed, so their latency overlaps instead of adding up. -> (BLOCK_K, BLOCK_N) float32."""
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    offs_k = k_begin + tl.arange(0, BLOCK_K)  # (BLOCK_K,)
    if PREFETCH:
        x, w = _block(x_ptr, w_ptr, norm_ptr, tau, offs_k, k_stop, offs_n, n_ok, N, HAS_NORM, EVEN_N, EVICT)
        for _ in range(0, k_per_program, BLOCK_K):
            offs_next = offs_k + BLOCK_K
            x_next, w_next = _block(
                x_ptr, w_ptr, norm_ptr, tau, offs_next, k_stop, offs_n, n_ok, N, HAS_NORM, EVEN_N, EVICT
            )
            acc += w.to(tl.float32) * x[:, None]
            x, w, offs_k = x_next, w_next, offs_next
    else:
        for k_start in range(0, k_per_program, BLOCK_K):
            x, w = _block(
                x_ptr, w_ptr, norm_ptr, tau, offs_k + k_start, k_stop, offs_n, n_ok, N, HAS_NORM, EVEN_N, EVICT
            )
            acc += w.to(tl.float32) * x[:, None]
    return acc


@triton.jit
def store_output(y, bias_ptr, out_ptr, offs_n, n_ok, HAS_BIAS: tl.constexpr):
    """The finished float32 sums y (BLOCK_N,) plus the bias, cast to the output's dtype and stored."""
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs_n, y.to(out_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def finish(
    y, bias_ptr, out_ptr, part_ptr, count_ptr, offs_n, n_ok, N, split, HAS_BIAS: tl.constexpr, SPLIT_MODE: tl.constexpr
):
    """Where a slice's sums y (BLOCK_N,) go: its row of partial sums (SPLIT_MODE 1), the output
    with the bias (no split), or the float32 workspace by atomics, the last slice to arrive
    finishing the tile (SPLIT_MODE 2) or a second kernel finishing them all (SPLIT_MODE 3)."""
    pid_n = tl.program_id(0)
    if SPLIT_MODE == 1:
        tl.store(part_ptr + tl.program_id(1) * N + offs_n, y, mask=n_ok)
    elif SPLIT_MODE == 3:
        # fire and forget: no arrival count, so no fence holds the program after its adds
        tl.atomic_add(part_ptr + offs_n, y, mask=n_ok, sem="relaxed")
    else:
        if SPLIT_MODE == 2:
            # Add into the float32 workspace; the last slice to arrive for this tile takes the sum
            # and leaves workspace and counter at zero for the next call: one launch, no memset.
            tl.atomic_add(part_ptr + offs_n, y, mask=n_ok, sem="relaxed")
            tl.debug_barrier()  # every thread's adds happen before the one thread's release below
            arrived = tl.atomic_add(count_ptr + pid_n, 1, sem="acq_rel")
            if arrived == split - 1:
                y = tl.atomic_add(part_ptr + offs_n, tl.zeros_like(y), mask=n_ok, sem="relaxed")  # read at L2
                tl.store(part_ptr + offs_n, tl.zeros_like(y), mask=n_ok)
                tl.atomic_xchg(count_ptr + pid_n, 0, sem="relaxed")
                store_output(y, bias_ptr, out_ptr, offs_n, n_ok, HAS_BIAS)
        else:
            store_output(y, bias_ptr, out_ptr, offs_n, n_ok, HAS_BIAS)
