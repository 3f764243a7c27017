"""Kernels that make a projection's input and list its kept entries in the same pass, so that the
GEMV over ready lists (`triton_listed`) needs no listing launch of its own: the producers of the
inputs of q/k/v and gate/up (a block's RMSNorm) and of down (SiLU(gate) · up).

    y, lists = rmsnorm_list(h, weight, eps, tau)     y = RMSNorm(h), as Llama-family models compute it
    a, lists = silu_mul_list(gate, up, tau)          a = SiLU(gate) · up, rounded as in the model's dtype

Each returns the input in the model's dtype and its `KeptLists` for thresholds tau (G,), chunk by
chunk, the same lists `triton_listed.list_kept` makes from it: the mask is taken on the rounded
values the GEMV reads. Many programs share the work, each making and listing its own chunks (every
RMSNorm program also reads all of h for the mean square: K·2 bytes, from L2). One token vector
(batch-1 decoding). Runs under TRITON_INTERPRET=1 on CPU tensors too.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_gemv import gdc_launch_dependents, gdc_wait
from .triton_listed import LIST_CHUNK, KeptLists, chunk_offsets, list_chunks, listing_launch, new_lists


@triton.jit
def _write_list(
    x, offs, ok, chunks, n_chunks, segment, tau_ptr, rows_ptr, vals_ptr, counts_ptr, K, CHUNK: tl.constexpr
):  # fmt: skip
    """Segment `segment`'s lists of this program's chunks of x (ROWS, CHUNK) float32."""
    list_chunks(
        x, offs, ok, chunks, n_chunks, tl.load(tau_ptr + segment), tau_ptr, rows_ptr + segment * K,
        vals_ptr + segment * K, counts_ptr + segment * n_chunks, False, CHUNK,
    )  # fmt: skip


@triton.jit
def _write_lists(
    x, offs, ok, chunks, n_chunks, tau_ptr, rows_ptr, vals_ptr, counts_ptr, K, G: tl.constexpr, CHUNK: tl.constexpr
):  # fmt: skip
    """The lists of this program's chunks of x (ROWS, CHUNK) float32 for each of the G thresholds."""
    for segment in tl.static_range(G):
        _write_list(x, offs, ok, chunks, n_chunks, segment, tau_ptr, rows_ptr, vals_ptr, counts_ptr, K, CHUNK)


@triton.jit
def _mean_square(h_ptr, K, BLOCK: tl.constexpr):
    """mean(h²) over all K entries of h, in float32."""
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, K, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        h = tl.load(h_ptr + offs, mask=offs < K, other=0.0).to(tl.float32)
        total += h * h
    return tl.sum(total, axis=0) / K


@triton.jit
def _rmsnorm_list_kernel(
    h_ptr, w_ptr, y_ptr, tau_ptr, rows_ptr, vals_ptr, counts_ptr, K, n_chunks, eps, G: tl.constexpr,
    PDL: tl.constexpr, ROWS: tl.constexpr, CHUNK: tl.constexpr, SQUARES_BLOCK: tl.constexpr,
    SEGMENT_PROGRAMS: tl.constexpr,
):  # fmt: skip
    """This program's chunks of y = w · (h / sqrt(mean(h²) + eps)), the product rounded to y's
    dtype, and their lists: every segment's, or (SEGMENT_PROGRAMS) segment program_id(1)'s only,
    the first segment's programs storing y."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()  # h is the previous launch's output
    inverse_rms = tl.rsqrt(_mean_square(h_ptr, K, SQUARES_BLOCK) + eps)
    offs, ok, chunks = chunk_offsets(tl.program_id(0), K, ROWS, CHUNK)  # (ROWS, CHUNK)
    h = tl.load(h_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    normed = (h * inverse_rms).to(y_ptr.dtype.element_ty)  # rounded, as the model does
    weight = tl.load(w_ptr + offs, mask=ok, other=0.0)
    y = (weight.to(tl.float32) * normed.to(tl.float32)).to(y_ptr.dtype.element_ty)
    if SEGMENT_PROGRAMS:
        segment = tl.program_id(1)
        if segment == 0:
            tl.store(y_ptr + offs, y, mask=ok)
        _write_list(
            y.to(tl.float32), offs, ok, chunks, n_chunks, segment, tau_ptr, rows_ptr, vals_ptr, counts_ptr, K, CHUNK
        )
    else:
        tl.store(y_ptr + offs, y, mask=ok)
        _write_lists(y.to(tl.float32), offs, ok, chunks, n_chunks, tau_ptr, rows_ptr, vals_ptr, counts_ptr, K, G, CHUNK)


@triton.jit
def _silu_mul_list_kernel(
    gate_ptr, up_ptr, a_ptr, tau_ptr, rows_ptr, vals_ptr, counts_ptr, K, n_chunks, G: tl.constexpr,
    PDL: tl.constexpr, ROWS: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """This program's chunks of a = SiLU(gate) · up, each rounded to a's dtype as two tensor
    operations would be, and their lists."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    offs, ok, chunks = chunk_offsets(tl.program_id(0), K, ROWS, CHUNK)  # (ROWS, CHUNK)
    gate = tl.load(gate_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    up = tl.load(up_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    silu = (gate / (1.0 + tl.exp(-gate))).to(a_ptr.dtype.element_ty)
    a = (silu.to(tl.float32) * up).to(a_ptr.dtype.element_ty)
    tl.store(a_ptr + offs, a, mask=ok)
    _write_lists(a.to(tl.float32), offs, ok, chunks, n_chunks, tau_ptr, rows_ptr, vals_ptr, counts_ptr, K, G, CHUNK)


def rmsnorm_list(
    h: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    tau: torch.Tensor,
    chunk: int = LIST_CHUNK,
    pdl: bool = False,
    segment_programs: bool = False,
) -> tuple[torch.Tensor, KeptLists]:
    """h (K,) and weight (K,) in one dtype, tau (G,) float32, chunk: inputs per list chunk ->
    y (K,) in h's dtype and its lists. segment_programs: each segment's lists written by programs
    of their own (G times the programs, each making its chunks of y again) rather than one
    program writing every segment's lists of its chunks."""
    (n,) = h.shape
    assert h.is_contiguous() and weight.shape == (n,) and weight.dtype == h.dtype
    y = torch.empty_like(h)
    lists = new_lists(n, tau.shape[0], chunk, h.device)
    programs, settings = listing_launch(lists, pdl, h.device)
    # the mean square in one load where it fits (one trip to L2 instead of one per 1024 inputs)
    squares_block = min(triton.next_power_of_2(n), 8192)
    grid = (programs, tau.shape[0]) if segment_programs else (programs,)
    _rmsnorm_list_kernel[grid](
        h, weight, y, tau, *lists[:3], n, lists.counts.shape[1], eps, G=tau.shape[0], SQUARES_BLOCK=squares_block,
        SEGMENT_PROGRAMS=segment_programs, **settings,
    )  # fmt: skip
    return y, lists


def silu_mul_list(
    gate: torch.Tensor, up: torch.Tensor, tau: torch.Tensor, chunk: int = LIST_CHUNK, pdl: bool = False
) -> tuple[torch.Tensor, KeptLists]:
    """gate (K,) and up (K,) in one dtype, tau (G,) float32, chunk: inputs per list chunk ->
    SiLU(gate) · up (K,) and its lists."""
    (n,) = gate.shape
    assert gate.is_contiguous() and up.is_contiguous() and up.shape == (n,) and up.dtype == gate.dtype
    a = torch.empty_like(gate)
    lists = new_lists(n, tau.shape[0], chunk, gate.device)
    programs, settings = listing_launch(lists, pdl, gate.device)
    _silu_mul_list_kernel[(programs,)](
        gate, up, a, tau, *lists[:3], n, lists.counts.shape[1], G=tau.shape[0], **settings
    )
    return a, lists
