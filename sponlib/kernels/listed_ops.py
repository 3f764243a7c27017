"""Custom ops of the listed path, so that torch.compile traces through them and CUDA graphs capture
them: `sponlib::rmsnorm_list`, a Llama-family RMSNorm that lists its output's kept entries for
each threshold as it makes it, and `sponlib::listed_gemv`, the sparse GEMV over those lists.

    y, rows, vals, counts = torch.ops.sponlib.rmsnorm_list(h, weight, eps, tau, chunk)
    out = torch.ops.sponlib.listed_gemv(x, weight_t, rows, vals, counts, chunk, bias, segments, workspace)

On CUDA with fp16/bf16 the Triton kernels run (`triton_producers`, `triton_listed`); elsewhere the
torch reference below, which writes the same lists (`KeptLists`: chunk by chunk, in order) and sums
the same products in float32 (float64 for a float64 model). `chunk` is a power of two.
Shapes: h, x (K,), tau (G,), weight_t (K, N).
"""

from __future__ import annotations

from typing import Optional

import torch

from .reference import keep_mask

try:  # Triton is optional: without it every device takes the torch reference
    from .triton_listed import KeptLists, list_chunk, listed_sparse_gemv
    from .triton_producers import rmsnorm_list
except ImportError:  # pragma: no cover - depends on the installation
    listed_sparse_gemv = rmsnorm_list = None

TRITON_DTYPES = (torch.float16, torch.bfloat16)


def _vals_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype lists hold inputs in: float32, which holds fp16/bf16 exactly (float64 stays float64)."""
    return torch.promote_types(x.dtype, torch.float32)


def rmsnorm_reference(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm as Llama-family models compute it: the normed input rounded to h's dtype, then
    scaled by the weight in that dtype."""
    h32 = h.float()
    return weight * (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + eps)).to(h.dtype)


def kept_lists_reference(x: torch.Tensor, tau: torch.Tensor, chunk: int) -> tuple[torch.Tensor, ...]:
    """The lists of x (K,) for thresholds tau (G,) in chunks of `chunk` inputs: rows, vals (G, K)
    (unused entries zero; vals in float32, or float64 for a float64 x), counts (G, C)."""
    (n_in,), groups = x.shape, tau.shape[0]
    n_chunks = -(-n_in // chunk)
    rows = torch.zeros((groups, n_in), dtype=torch.int32, device=x.device)
    vals = torch.zeros((groups, n_in), dtype=_vals_dtype(x), device=x.device)
    counts = torch.zeros((groups, n_chunks), dtype=torch.int32, device=x.device)
    for g in range(groups):
        keep = keep_mask(x, tau[g])  # (K,)
        for c, start in enumerate(range(0, n_in, chunk)):
            kept = start + torch.nonzero(keep[start : start + chunk]).flatten()
            rows[g, start : start + len(kept)] = kept.to(torch.int32)
            vals[g, start : start + len(kept)] = x[kept].to(vals.dtype)
            counts[g, c] = len(kept)
    return rows, vals, counts


def _rmsnorm_list_torch(h, weight, eps, tau, chunk):
    y = rmsnorm_reference(h, weight, eps)
    return (y, *kept_lists_reference(y, tau, chunk))


@torch.library.custom_op("sponlib::rmsnorm_list", mutates_args=())
def _rmsnorm_list_op(
    h: torch.Tensor, weight: torch.Tensor, eps: float, tau: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _rmsnorm_list_torch(h, weight, eps, tau, chunk)


@_rmsnorm_list_op.register_kernel("cuda")
def _rmsnorm_list_cuda(h, weight, eps, tau, chunk):
    if rmsnorm_list is None or h.dtype not in TRITON_DTYPES:
        return _rmsnorm_list_torch(h, weight, eps, tau, chunk)
    y, lists = rmsnorm_list(h.contiguous(), weight, eps, tau.float(), chunk, pdl=True)
    return y, lists.rows, lists.vals, lists.counts


@_rmsnorm_list_op.register_fake
def _rmsnorm_list_fake(h, weight, eps, tau, chunk):
    (n_in,), groups = h.shape, tau.shape[0]
    n_chunks = -(-n_in // chunk)
    return (
        torch.empty_like(h),
        h.new_empty((groups, n_in), dtype=torch.int32),
        h.new_empty((groups, n_in), dtype=_vals_dtype(h)),
        h.new_empty((groups, n_chunks), dtype=torch.int32),
    )


def _listed_gemv_torch(x, weight_t, rows, vals, counts, chunk, bias, segments):
    """Per segment, the listed entries' products with their weight rows, in the lists' dtype."""
    outputs, start = [], 0
    for g, size in enumerate(segments):
        spans = [slice(c * chunk, c * chunk + n) for c, n in enumerate(counts[g].tolist())]
        kept = torch.cat([rows[g, span] for span in spans]).long()  # (kept,)
        values = torch.cat([vals[g, span] for span in spans])  # (kept,)
        outputs.append(values @ weight_t[kept, start : start + size].to(values.dtype))  # (size,)
        start += size
    y = torch.cat(outputs)
    return (y if bias is None else y + bias.to(y.dtype)).to(x.dtype)


@torch.library.custom_op("sponlib::listed_gemv", mutates_args=())
def _listed_gemv_op(
    x: torch.Tensor,
    weight_t: torch.Tensor,
    rows: torch.Tensor,
    vals: torch.Tensor,
    counts: torch.Tensor,
    chunk: int,
    bias: Optional[torch.Tensor],
    segments: list[int],
    workspace: Optional[torch.Tensor],
) -> torch.Tensor:
    return _listed_gemv_torch(x, weight_t, rows, vals, counts, chunk, bias, segments)


@_listed_gemv_op.register_kernel("cuda")
def _listed_gemv_cuda(x, weight_t, rows, vals, counts, chunk, bias, segments, workspace):
    if listed_sparse_gemv is None or x.dtype not in TRITON_DTYPES or weight_t.numel() >= 2**31:
        return _listed_gemv_torch(x, weight_t, rows, vals, counts, chunk, bias, segments)
    lists = KeptLists(rows, vals, counts, list_chunk(chunk, x.shape[0]))
    return listed_sparse_gemv(x, weight_t, lists, bias, tuple(segments), workspace=workspace)


@_listed_gemv_op.register_fake
def _listed_gemv_fake(x, weight_t, rows, vals, counts, chunk, bias, segments, workspace):
    return x.new_empty(weight_t.shape[1])
