"""Sparse forward passes of one projection: what a kernel computes, and implementations of it.

    reference   the torch reference of the sparse GEMV, on any device (the ground truth)

A projection y = W x + b under activation sparsity reads only the weight rows of its kept inputs
when W is stored input-major (Wᵀ, shape (in, out)): a zeroed input skips one contiguous row.
"""

from .reference import input_major, sparse_gemv_rows, sparse_gemv_reference

__all__ = ["input_major", "sparse_gemv_rows", "sparse_gemv_reference"]
