"""Kernels that make a projection's input and list its kept entries in the same pass, so that the
GEMV over a ready list (`triton_listed`) needs no listing launch of its own: the producers of the
inputs of q/k/v and gate/up (a block's RMSNorm) and of down (SiLU(gate) · up).

    y, kept = rmsnorm_list(h, weight, eps, tau)       y = RMSNorm(h), as Llama-family models compute it
    a, kept = silu_mul_list(gate, up, tau)            a = SiLU(gate) · up, rounded as in the model's dtype

Each returns the input in the model's dtype and `kept` = (rows (G, K), vals (G, K), counts (G,))
for thresholds tau (G,), the same lists `triton_listed.list_kept` makes from it: the mask is taken
on the rounded values the GEMV reads. One program per token vector (batch-1 decoding; K up to
16384). Runs under TRITON_INTERPRET=1 on CPU tensors too.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_gemv import gdc_launch_dependents, gdc_wait
from .triton_listed import list_segment, listing_launch, new_lists


@triton.jit
def _write_lists(x, offs, ok, tau_ptr, rows_ptr, vals_ptr, counts_ptr, K, G: tl.constexpr):
    """The lists of x (K_POW2,) float32 for each of the G thresholds."""
    for segment in tl.static_range(G):
        start = segment * K
        list_segment(
            x, offs, ok, tl.load(tau_ptr + segment), tau_ptr, rows_ptr + start, vals_ptr + start,
            counts_ptr + segment, False,
        )  # fmt: skip


@triton.jit
def _rmsnorm_list_kernel(
    h_ptr, w_ptr, y_ptr, tau_ptr, rows_ptr, vals_ptr, counts_ptr, K, eps, G: tl.constexpr, PDL: tl.constexpr,
    K_POW2: tl.constexpr,
):  # fmt: skip
    """y = w · (h / sqrt(mean(h²) + eps)), the product rounded to y's dtype, then its lists."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()  # h is the previous launch's output
    offs = tl.arange(0, K_POW2)  # (K_POW2,)
    ok = offs < K
    h = tl.load(h_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    normed = (h * tl.rsqrt(tl.sum(h * h, axis=0) / K + eps)).to(y_ptr.dtype.element_ty)  # rounded, as the model does
    weight = tl.load(w_ptr + offs, mask=ok, other=0.0)
    y = (weight.to(tl.float32) * normed.to(tl.float32)).to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + offs, y, mask=ok)
    _write_lists(y.to(tl.float32), offs, ok, tau_ptr, rows_ptr, vals_ptr, counts_ptr, K, G)


@triton.jit
def _silu_mul_list_kernel(
    gate_ptr, up_ptr, a_ptr, tau_ptr, rows_ptr, vals_ptr, counts_ptr, K, G: tl.constexpr, PDL: tl.constexpr,
    K_POW2: tl.constexpr,
):  # fmt: skip
    """a = SiLU(gate) · up, each rounded to a's dtype as two tensor operations would be, then its lists."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    offs = tl.arange(0, K_POW2)  # (K_POW2,)
    ok = offs < K
    gate = tl.load(gate_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    up = tl.load(up_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    silu = (gate / (1.0 + tl.exp(-gate))).to(a_ptr.dtype.element_ty)
    a = (silu.to(tl.float32) * up).to(a_ptr.dtype.element_ty)
    tl.store(a_ptr + offs, a, mask=ok)
    _write_lists(a.to(tl.float32), offs, ok, tau_ptr, rows_ptr, vals_ptr, counts_ptr, K, G)


def rmsnorm_list(h: torch.Tensor, weight: torch.Tensor, eps: float, tau: torch.Tensor, pdl: bool = False):
    """h (K,) and weight (K,) in one dtype, tau (G,) float32 -> y (K,) in h's dtype and its lists."""
    (n,) = h.shape
    assert h.is_contiguous() and weight.shape == (n,) and weight.dtype == h.dtype
    y = torch.empty_like(h)
    kept = new_lists(n, tau.shape[0], h.device)
    _rmsnorm_list_kernel[(1,)](h, weight, y, tau, *kept, n, eps, G=tau.shape[0], **listing_launch(n, pdl, h.device))
    return y, kept


def silu_mul_list(gate: torch.Tensor, up: torch.Tensor, tau: torch.Tensor, pdl: bool = False):
    """gate (K,) and up (K,) in one dtype, tau (G,) float32 -> SiLU(gate) · up (K,) and its lists."""
    (n,) = gate.shape
    assert gate.is_contiguous() and up.is_contiguous() and up.shape == (n,) and up.dtype == gate.dtype
    a = torch.empty_like(gate)
    kept = new_lists(n, tau.shape[0], gate.device)
    _silu_mul_list_kernel[(1,)](gate, up, a, tau, *kept, n, G=tau.shape[0], **listing_launch(n, pdl, gate.device))
    return a, kept
