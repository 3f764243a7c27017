"""The sparse GEMV in Triton: one token's y = S(x) Wᵀ + b, reading only the weight rows of kept
inputs from the input-major weight Wᵀ (in, out).

Each program owns a tile of BLOCK_N outputs and a slice of the inputs. It loads BLOCK_K inputs
at a time, builds the mask in registers (score in float32, kept when not <= τ), and loads the
weight rows of kept inputs only: a masked load whose mask is constant along a row, so a dropped
input issues no memory transaction for its row. Products accumulate in float32. Variants, each
a field of `GemvConfig`:

- split: one slice per output tile (one launch, bias and store in the same program), or several
  slices summed either by float32 atomics into a workspace that the last slice to arrive reads,
  writes out and returns to zero (one launch, no zero-fill: `atomic`), or through partial sums
  and a second small kernel (deterministic, one launch more).
- `prefetch`: the next block's mask and weight loads are issued before the current block is
  consumed, two blocks in flight per program.
- `compact`: the slice's kept inputs are listed first (prefix sum, scratch memory), then every
  step loads BLOCK_K kept rows.

Projections that read the same input (q/k/v, gate/up) can run as one launch on their
concatenated weight ("segments"): each output tile lies in one segment and uses that segment's
threshold (and, for wina, its column norms).

Tiles come from `sponlib.kernels.tiles.gemv_config`: the table that the benchmark's sweep measured
for this GPU model (configs/<gpu>.json; docs/kernel_notes.md), else a heuristic. Everything here runs on CPU
tensors too under TRITON_INTERPRET=1, which the CPU tests use (it runs programs one after
another, so it cannot find races: the GPU tests do that).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .tiles import MAX_SEGMENTS, GemvConfig, device_name, gemv_config


@triton.jit
def _keep(x, tau, norm_ptr, offs_k, ok, HAS_NORM: tl.constexpr):
    """Mask of one block of inputs x (float32): score > τ, a NaN kept (it is not <= τ), nothing
    outside `ok`."""
    score = tl.abs(x)
    if HAS_NORM:
        score = score * tl.load(norm_ptr + offs_k, mask=ok, other=0.0)
    return ((score > tau) | (score != score)) & ok


@triton.jit
def _dot_compact(
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
    K_POW2: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """The slice's products, gathered first: the kept inputs of the whole slice are listed in order
    in scratch memory, then every loop step loads BLOCK_K kept rows. Steps scale with 1 − s, where
    masked loads of consecutive rows would wait as long for half-empty blocks as for full ones.
    -> (BLOCK_K, BLOCK_N) float32, to be summed over K."""
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    offs = k_begin + tl.arange(0, K_POW2)  # (K_POW2,)
    ok = (offs < k_stop) & (tl.arange(0, K_POW2) < k_per_program)
    x_all = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    keep_all = _keep(x_all, tau, norm_ptr, offs, ok, HAS_NORM)
    slot = (tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)) * K_POW2  # this program's scratch
    position = tl.cumsum(keep_all.to(tl.int32), axis=0) - 1  # index among the kept
    kept = tl.sum(keep_all.to(tl.int32), axis=0)
    tl.store(rows_ptr + slot + position, offs, mask=keep_all)
    tl.store(vals_ptr + slot + position, x_all, mask=keep_all)
    tl.debug_barrier()  # the lists are written by all threads, read by all threads
    for start in range(0, kept, BLOCK_K):
        j = start + tl.arange(0, BLOCK_K)  # (BLOCK_K,)
        ok_j = j < kept
        rows = tl.load(rows_ptr + slot + j, mask=ok_j, other=0)
        x = tl.load(vals_ptr + slot + j, mask=ok_j, other=0.0)
        w = tl.load(
            w_ptr + rows[:, None] * N + offs_n[None, :], mask=ok_j[:, None] & n_ok[None, :], other=0.0
        )  # (BLOCK_K, BLOCK_N)
        acc += w.to(tl.float32) * x[:, None]
    return acc


@triton.jit
def _block(x_ptr, w_ptr, norm_ptr, tau, offs_k, k_stop, offs_n, n_ok, N, HAS_NORM: tl.constexpr):
    """One block of inputs (float32) and the weight rows of its kept ones, a dropped row issuing no
    load: (BLOCK_K,), (BLOCK_K, BLOCK_N)."""
    ok = offs_k < k_stop
    x = tl.load(x_ptr + offs_k, mask=ok, other=0.0).to(tl.float32)
    keep = _keep(x, tau, norm_ptr, offs_k, ok, HAS_NORM)
    w = tl.load(w_ptr + offs_k[:, None] * N + offs_n[None, :], mask=keep[:, None] & n_ok[None, :], other=0.0)
    return x, w


@triton.jit
def _dot_stream(
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
        x, w = _block(x_ptr, w_ptr, norm_ptr, tau, offs_k, k_stop, offs_n, n_ok, N, HAS_NORM)
        for _ in range(0, k_per_program, BLOCK_K):
            offs_next = offs_k + BLOCK_K
            x_next, w_next = _block(x_ptr, w_ptr, norm_ptr, tau, offs_next, k_stop, offs_n, n_ok, N, HAS_NORM)
            acc += w.to(tl.float32) * x[:, None]
            x, w, offs_k = x_next, w_next, offs_next
    else:
        for k_start in range(0, k_per_program, BLOCK_K):
            x, w = _block(x_ptr, w_ptr, norm_ptr, tau, offs_k + k_start, k_stop, offs_n, n_ok, N, HAS_NORM)
            acc += w.to(tl.float32) * x[:, None]
    return acc


@triton.jit
def _finish(
    y, bias_ptr, out_ptr, part_ptr, count_ptr, offs_n, n_ok, N, split, HAS_BIAS: tl.constexpr, SPLIT_MODE: tl.constexpr
):
    """Where a slice's sums y (BLOCK_N,) go: its row of partial sums (SPLIT_MODE 1), the output
    with the bias (no split), or the float32 workspace by atomics (SPLIT_MODE 2)."""
    pid_n = tl.program_id(0)
    if SPLIT_MODE == 1:
        tl.store(part_ptr + tl.program_id(1) * N + offs_n, y, mask=n_ok)
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
                if HAS_BIAS:
                    y += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
                tl.store(out_ptr + offs_n, y.to(out_ptr.dtype.element_ty), mask=n_ok)
        else:
            if HAS_BIAS:
                y += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
            tl.store(out_ptr + offs_n, y.to(out_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def _sparse_gemv_kernel(
    x_ptr,  # (K,) input, float16 or bfloat16
    w_ptr,  # (K, N) input-major weight, row-major
    tau_ptr,  # (G,) float32 threshold per segment
    norm_ptr,  # (G, K) float32 column norms per segment (wina), or any pointer when HAS_NORM is off
    bias_ptr,  # (N,) bias, or any pointer when HAS_BIAS is off
    out_ptr,  # (N,) output
    part_ptr,  # SPLIT_MODE 1: (split, N) float32 partial sums; 2: (N,) float32 zeros, left zero
    count_ptr,  # SPLIT_MODE 2: (tiles,) int32 zeros, left zero
    rows_ptr,  # COMPACT: (split * tiles * K_POW2,) int32 scratch for the kept rows' indices
    vals_ptr,  # COMPACT: same shape, float32 scratch for their inputs
    K,
    N,
    seg1,
    seg2,  # seg1, seg2: where the second and third segments start (N when absent)
    k_per_program,
    split,
    HAS_NORM: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SPLIT_MODE: tl.constexpr,
    PREFETCH: tl.constexpr,
    COMPACT: tl.constexpr,
    K_POW2: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One program: BLOCK_N outputs of one input slice (program id 1) of K_PER_PROGRAM inputs."""
    n_start = tl.program_id(0) * BLOCK_N
    offs_n = n_start + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    n_ok = offs_n < N
    segment = (n_start >= seg1).to(tl.int32) + (n_start >= seg2).to(tl.int32)  # tiles never straddle
    tau = tl.load(tau_ptr + segment)
    norm_ptr += segment * K
    k_begin = tl.program_id(1) * k_per_program  # k_per_program is a multiple of BLOCK_K: slices never overlap
    k_stop = tl.minimum(k_begin + k_per_program, K)
    if COMPACT:
        acc = _dot_compact(
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
            HAS_NORM,
            K_POW2,
            BLOCK_K,
            BLOCK_N,
        )
    else:
        acc = _dot_stream(
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
            HAS_NORM,
            PREFETCH,
            BLOCK_K,
            BLOCK_N,
        )
    # reduced over K once, at the end
    _finish(tl.sum(acc, axis=0), bias_ptr, out_ptr, part_ptr, count_ptr, offs_n, n_ok, N, split, HAS_BIAS, SPLIT_MODE)


@triton.jit
def _sum_partials_kernel(
    part_ptr,  # (split, N) float32
    bias_ptr,  # (N,) or any pointer when HAS_BIAS is off
    out_ptr,  # (N,)
    N,
    split,
    HAS_BIAS: tl.constexpr,
    SPLIT_POW2: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    offs_s = tl.arange(0, SPLIT_POW2)  # (SPLIT_POW2,)
    n_ok = offs_n < N
    parts = tl.load(
        part_ptr + offs_s[:, None] * N + offs_n[None, :], mask=(offs_s < split)[:, None] & n_ok[None, :], other=0.0
    )  # (SPLIT_POW2, BLOCK_N)
    y = tl.sum(parts, axis=0)
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs_n, y.to(out_ptr.dtype.element_ty), mask=n_ok)


def _sum_partials(part: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor, split: int, dummy) -> None:
    """SPLIT_MODE 1's second launch: out = the sum of the `split` rows of partial sums (+ bias)."""
    n_out, reduce_block = out.shape[0], 128
    _sum_partials_kernel[(triton.cdiv(n_out, reduce_block),)](
        part,
        dummy if bias is None else bias,
        out,
        n_out,
        split,
        HAS_BIAS=bias is not None,
        SPLIT_POW2=triton.next_power_of_2(split),
        BLOCK_N=reduce_block,
        num_warps=4,
    )


def _split_buffers(mode: int, split: int, out: torch.Tensor, workspace: torch.Tensor | None):
    """Where the slices of a split-K launch meet: (partial sums, per-tile arrival counters) for
    SPLIT_MODE 1 (rows of partial sums, no counters) and 2 (the zeroed float32 workspace: sums,
    then counters); the output itself, unread, without a split."""
    n_out = out.shape[0]
    if mode == 1:
        part = torch.empty((split, n_out), device=out.device, dtype=torch.float32)
        return part, part
    if mode == 2:
        if workspace is None:
            workspace = torch.zeros(2 * n_out, device=out.device, dtype=torch.float32)
        assert workspace.shape == (2 * n_out,) and workspace.dtype == torch.float32
        return workspace[:n_out], workspace[n_out:].view(torch.int32)
    return out, out


def triton_sparse_gemv(
    x: torch.Tensor,
    weight_t: torch.Tensor,
    tau: torch.Tensor,
    bias: torch.Tensor | None = None,
    col_norm: torch.Tensor | None = None,
    segments: tuple[int, ...] | None = None,
    config: GemvConfig | None = None,
    out: torch.Tensor | None = None,
    workspace: torch.Tensor | None = None,
) -> torch.Tensor:
    """One token through the sparse GEMV. x (K,) float16/bfloat16, weight_t (K, N) contiguous in
    x's dtype, tau (G,) float32, bias (N,) or None, col_norm (G, K) float32 or None, segments:
    the G output sizes (default one segment of N), out (N,) to write into, workspace (2N,)
    float32 zeros that the atomic split leaves zero (`ops.new_workspace`; zeroed per call when
    None) -> (N,) in x's dtype.

    Arguments are assumed checked (`sponlib.kernels.ops` checks them); shapes are asserted."""
    n_in, n_out = weight_t.shape
    segments = tuple(segments or (n_out,))
    assert x.shape == (n_in,) and weight_t.is_contiguous() and x.is_contiguous()
    assert len(segments) <= MAX_SEGMENTS and sum(segments) == n_out and tau.shape == (len(segments),)
    config = config or gemv_config(n_in, n_out, device_name(x.device))
    block_n = config.block_n
    while any(size % block_n for size in segments[:-1]):  # output tiles must not straddle segments
        block_n //= 2
    starts = [sum(segments[:i]) for i in range(1, len(segments))] + [n_out] * (MAX_SEGMENTS - len(segments))
    split = config.split(n_in)
    mode = 0 if split == 1 else 2 if config.atomic else 1
    if out is None:
        out = torch.empty(n_out, device=x.device, dtype=x.dtype)
    assert out.shape == (n_out,) and out.dtype == x.dtype
    part, counts = _split_buffers(mode, split, out, workspace)
    dummy = tau  # a valid pointer for arguments the kernel does not read
    grid = (triton.cdiv(n_out, block_n), split)
    k_pow2 = triton.next_power_of_2(config.inputs_per_program(n_in))
    if config.compact:  # int32 indices and float32 inputs of each program's kept rows
        rows = torch.empty(grid[0] * grid[1] * k_pow2, device=x.device, dtype=torch.int32)
        vals = torch.empty(grid[0] * grid[1] * k_pow2, device=x.device, dtype=torch.float32)
    else:
        rows = vals = dummy
    _sparse_gemv_kernel[grid](
        x,
        weight_t,
        tau,
        dummy if col_norm is None else col_norm,
        dummy if bias is None else bias,
        out,
        part,
        counts,
        rows,
        vals,
        n_in,
        n_out,
        starts[0],
        starts[1],
        config.inputs_per_program(n_in),
        split,
        HAS_NORM=col_norm is not None,
        HAS_BIAS=bias is not None,
        SPLIT_MODE=mode,
        PREFETCH=config.prefetch,
        COMPACT=config.compact,
        K_POW2=k_pow2 if config.compact else 1,
        BLOCK_K=config.block_k,
        BLOCK_N=block_n,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    if mode == 1:
        _sum_partials(part, bias, out, split, dummy)
    return out
