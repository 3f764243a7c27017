"""Sparse forward passes of one projection: what a kernel computes, and implementations of it.

    reference     the torch reference of the sparse GEMV, on any device (the ground truth)
    triton_gemv   the Triton kernel for one token on the GPU (needs triton), and its launch
    triton_steps  the kernel's building blocks: the mask, the loops over a slice, the epilogue
    triton_listed the kept inputs listed once, and a GEMV that splits that list evenly
    triton_producers  RMSNorm and SiLU·up that list their outputs' kept entries as they make them
    listed_ops    `sponlib::rmsnorm_list` and `sponlib::listed_gemv`, custom ops over those kernels
    listing       norms that hand fused groups the lists of their input (list_in, list_out)
    tiles         its tile shapes: the tables tuned per GPU model, and a heuristic
    ops           `sparse_gemv`, the dispatching entry point, a torch.library custom op
    module        `SparseLinear`, and swapping it into a Hugging Face model and back
    decoding      `StaticDecoder`: batch-1 greedy decoding with a static KV cache, captured whole
    timing        timing kernels as a captured decoder runs them (CUDA graphs over weight copies)

A projection y = W x + b under activation sparsity reads only the weight rows of its kept inputs
when W is stored input-major (Wᵀ, shape (in, out)): a zeroed input skips one contiguous row.
"""

from .decoding import StaticDecoder
from .module import FusedSparseLinear, SegmentOf, SparseLinear, set_thresholds, sparse_linears, swap_in, swap_out
from .ops import new_workspace, sparse_gemv
from .reference import input_major, keep_mask, sparse_gemv_reference, sparse_gemv_rows

__all__ = [
    "FusedSparseLinear",
    "StaticDecoder",
    "SegmentOf",
    "SparseLinear",
    "input_major",
    "keep_mask",
    "new_workspace",
    "set_thresholds",
    "sparse_gemv",
    "sparse_gemv_reference",
    "sparse_gemv_rows",
    "sparse_linears",
    "swap_in",
    "swap_out",
]
