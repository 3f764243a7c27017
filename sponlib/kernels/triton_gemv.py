"""The sparse GEMV in Triton: one token's y = S(x) Wᵀ + b, reading only the weight rows of kept
inputs from the input-major weight Wᵀ (in, out).

Each program owns a tile of BLOCK_N outputs and a slice of the inputs. It loads BLOCK_K inputs
at a time, builds the mask in registers (score in float32, kept when not <= τ), and loads the
weight rows of kept inputs only: a masked load whose mask is constant along a row, so a dropped
input issues no memory transaction for its row. Products accumulate in float32. Variants, each
a field of `GemvConfig`:

- split: one slice per output tile (one launch, bias and store in the same program), or several
  slices summed either by float32 atomics into a workspace that the last slice to arrive reads,
  writes out and returns to zero (one launch, no zero-fill: `atomic`), or by float32 atomics
  that a second small kernel casts, adds the bias to and returns to zero (`atomic` and
  `finisher`: no arrival counter, so no program waits on a fence after its adds), or through
  partial sums and a second small kernel (deterministic, one launch more).
- `prefetch`: the next block's mask and weight loads are issued before the current block is
  consumed, two blocks in flight per program.
- `compact`: the slice's kept inputs are listed first (prefix sum, scratch memory), then every
  step loads BLOCK_K kept rows (with `prefetch`, the next step's rows in flight too).
- `select`: the same in registers: the next BLOCK_K kept inputs are picked from the slice by a
  one-hot match on their rank among the kept, with the next step's loads in flight (no scratch
  memory, no barrier).
- `evict`: cache hints: weight rows, read once, are evicted first; the input, read by every
  program, last.
- `pdl`: programmatic dependent launch (Hopper and later): the kernel may be scheduled while the
  one before it drains, and waits (griddepcontrol.wait) before it touches memory, so a chain of
  launches loses less time between kernels. The result is the same.

When the output tiles divide N exactly (EVEN_N), the weight loads carry no column mask, so a
row's piece is one run of 16-byte loads.

Projections that read the same input (q/k/v, gate/up) can run as one launch on their
concatenated weight ("segments"): each output tile lies in one segment and uses that segment's
threshold (and, for wina, its column norms).

Tiles come from `sponlib.kernels.tiles.gemv_config`: the table that the benchmark's sweep measured
for this GPU model (configs/<gpu>.json; docs/kernel_notes.md), else a heuristic. Everything here runs on CPU
tensors too under TRITON_INTERPRET=1, which the CPU tests use (it runs programs one after
another, so it cannot find races: the GPU tests do that).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .tiles import MAX_SEGMENTS, GemvConfig, device_name, gemv_config
from .triton_steps import dot_kept, dot_stream, finish, store_output

try:  # grid dependency control, Triton 3.4 and later
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover - depends on the installation
    gdc_launch_dependents = gdc_wait = None


@triton.jit
def _sparse_gemv_kernel(
    x_ptr,  # (K,) input, float16 or bfloat16
    w_ptr,  # (K, N) input-major weight, row-major
    tau_ptr,  # (G,) float32 threshold per segment
    norm_ptr,  # (G, K) float32 column norms per segment (wina), or any pointer when HAS_NORM is off
    bias_ptr,  # (N,) bias, or any pointer when HAS_BIAS is off
    out_ptr,  # (N,) output
    part_ptr,  # SPLIT_MODE 1: (split, N) float32 partial sums; 2, 3: (N,) float32 zeros, left zero
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
    SELECT: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVICT: tl.constexpr,
    PDL: tl.constexpr,
    K_POW2: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One program: BLOCK_N outputs of one input slice (program id 1) of K_PER_PROGRAM inputs."""
    if PDL:
        # let the next launch be scheduled as soon as every program here has started, and touch
        # no memory before the previous launch has finished (its output may be this input)
        gdc_launch_dependents()
        gdc_wait()
    n_start = tl.program_id(0) * BLOCK_N
    offs_n = n_start + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    n_ok = offs_n < N
    segment = (n_start >= seg1).to(tl.int32) + (n_start >= seg2).to(tl.int32)  # tiles never straddle
    tau = tl.load(tau_ptr + segment)
    norm_ptr += segment * K
    k_begin = tl.program_id(1) * k_per_program  # k_per_program is a multiple of BLOCK_K: slices never overlap
    k_stop = tl.minimum(k_begin + k_per_program, K)
    if COMPACT or SELECT:
        acc = dot_kept(
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
            EVEN_N,
            EVICT,
            COMPACT,
            PREFETCH,
            K_POW2,
            BLOCK_K,
            BLOCK_N,
        )
    else:
        acc = dot_stream(
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
            EVEN_N,
            EVICT,
            PREFETCH,
            BLOCK_K,
            BLOCK_N,
        )
    # reduced over K once, at the end
    finish(tl.sum(acc, axis=0), bias_ptr, out_ptr, part_ptr, count_ptr, offs_n, n_ok, N, split, HAS_BIAS, SPLIT_MODE)


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
    store_output(tl.sum(parts, axis=0), bias_ptr, out_ptr, offs_n, n_ok, HAS_BIAS)


@triton.jit
def _cast_sums_kernel(
    part_ptr,  # (N,) float32 sums, returned to zero
    bias_ptr,  # (N,) or any pointer when HAS_BIAS is off
    out_ptr,  # (N,)
    N,
    HAS_BIAS: tl.constexpr,
    PDL: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """SPLIT_MODE 3's second kernel: BLOCK_N of the workspace's sums to the output, the workspace
    left zero."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()  # the sums are complete only when the main launch has finished
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    n_ok = offs_n < N
    # Read at L2, where the atomics landed, by an atomic add of zero: a plain load here read stale
    # values on the H200 (docs/kernel_notes.md, v4), even with the launches in stream order.
    y = tl.atomic_add(part_ptr + offs_n, tl.zeros((BLOCK_N,), tl.float32), mask=n_ok, sem="relaxed")
    tl.store(part_ptr + offs_n, tl.zeros_like(y), mask=n_ok)
    store_output(y, bias_ptr, out_ptr, offs_n, n_ok, HAS_BIAS)


def cast_sums(part: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor, pdl: bool, dummy) -> None:
    """SPLIT_MODE 3's second launch: out = the workspace's sums (+ bias), and the workspace zero again."""
    n_out, block = out.shape[0], 1024
    _cast_sums_kernel[(triton.cdiv(n_out, block),)](
        part,
        dummy if bias is None else bias,
        out,
        n_out,
        HAS_BIAS=bias is not None,
        PDL=pdl,
        BLOCK_N=block,
        num_warps=4,
        **({"launch_pdl": True} if pdl else {}),
    )


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


@functools.lru_cache(maxsize=None)
def supports_pdl(device: torch.device) -> bool:
    """Programmatic dependent launch needs a real GPU of compute capability 9.0 or later (not
    Triton's CPU interpreter)."""
    return gdc_wait is not None and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


def _kept_scratch(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """COMPACT's scratch: int32 indices and float32 inputs of each program's kept rows."""
    return torch.empty(size, device=device, dtype=torch.int32), torch.empty(size, device=device, dtype=torch.float32)


def _split_buffers(mode: int, split: int, out: torch.Tensor, workspace: torch.Tensor | None):
    """Where the slices of a split-K launch meet: (partial sums, per-tile arrival counters) for
    SPLIT_MODE 1 (rows of partial sums, no counters) and 2 and 3 (the zeroed float32 workspace:
    sums, then counters, which 3 leaves unused); the output itself, unread, without a split."""
    n_out = out.shape[0]
    if mode == 1:
        part = torch.empty((split, n_out), device=out.device, dtype=torch.float32)
        return part, part
    if mode in (2, 3):
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
    sparsity: float = 0.0,
) -> torch.Tensor:
    """One token through the sparse GEMV. x (K,) float16/bfloat16, weight_t (K, N) contiguous in
    x's dtype, tau (G,) float32, bias (N,) or None, col_norm (G, K) float32 or None, segments:
    the G output sizes (default one segment of N), out (N,) to write into, workspace (2N,)
    float32 zeros that the atomic split leaves zero (`ops.new_workspace`; zeroed per call when
    None), sparsity: the share of inputs τ is expected to zero, which picks the tiles when
    `config` is None -> (N,) in x's dtype.

    Arguments are assumed checked (`sponlib.kernels.ops` checks them); shapes are asserted."""
    n_in, n_out = weight_t.shape
    segments = tuple(segments or (n_out,))
    assert x.shape == (n_in,) and weight_t.is_contiguous() and x.is_contiguous()
    assert len(segments) <= MAX_SEGMENTS and sum(segments) == n_out and tau.shape == (len(segments),)
    config = config or gemv_config(n_in, n_out, device_name(x.device), sparsity)
    block_n = config.block_n
    while any(size % block_n for size in segments[:-1]):  # output tiles must not straddle segments
        block_n //= 2
    starts = [sum(segments[:i]) for i in range(1, len(segments))] + [n_out] * (MAX_SEGMENTS - len(segments))
    split = config.split(n_in)
    mode = 0 if split == 1 else (3 if config.finisher else 2) if config.atomic else 1
    if out is None:
        out = torch.empty(n_out, device=x.device, dtype=x.dtype)
    assert out.shape == (n_out,) and out.dtype == x.dtype
    part, counts = _split_buffers(mode, split, out, workspace)
    dummy = tau  # a valid pointer for arguments the kernel does not read
    grid = (triton.cdiv(n_out, block_n), split)
    k_pow2 = triton.next_power_of_2(config.inputs_per_program(n_in))
    rows, vals = _kept_scratch(grid[0] * grid[1] * k_pow2, x.device) if config.compact else (dummy, dummy)
    pdl = config.pdl and supports_pdl(x.device)
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
        SELECT=config.select,
        EVEN_N=n_out % block_n == 0,
        EVICT=config.evict,
        PDL=pdl,
        K_POW2=k_pow2 if config.compact or config.select else 1,
        BLOCK_K=config.block_k,
        BLOCK_N=block_n,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
        **({"launch_pdl": True} if pdl else {}),
    )
    if mode == 1:
        _sum_partials(part, bias, out, split, dummy)
    elif mode == 3:
        cast_sums(part, bias, out, pdl, dummy)
    return out
