"""`sparse_gemv`: the one entry point for a sparse projection, registered as the torch.library
custom op `sponlib::sparse_gemv`, so that torch.compile traces through it (with a fake
implementation for shapes) and CUDA graphs capture it.

Which implementation runs:

    device  tokens  dtype         path                            weight bytes read
    cuda    1       fp16 / bf16   Triton kernel (< 2^31 weights)  rows of kept inputs, (1 − s)
    cuda    > 1     any           mask, then cuBLAS matmul        all (dense GEMM + a pass over x)
    cpu     1       any           rows of kept inputs             rows of kept inputs (embedding_bag)
    cpu     > 1     any           mask, then dense matmul         all

With more than one token (batched decoding, prefill) the masks of the tokens differ, and their
union covers a share 1 − s^B of the rows (94% for B = 4 at s = 0.5), so a union kernel would
save little; the masked dense product is exact and costs what dense costs.

Thresholds are tensors (one per output segment), so changing them needs no recompilation and
a captured CUDA graph sees the new values.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..errors import InvalidArgumentError
from .reference import keep_mask, sparse_gemv_rows
from .tiles import MAX_SEGMENTS

try:  # Triton is optional: without it every device takes the torch paths
    from .triton_gemv import triton_sparse_gemv
except ImportError:  # pragma: no cover - depends on the installation
    triton_sparse_gemv = None

TRITON_DTYPES = (torch.float16, torch.bfloat16)


def _torch_path(
    x: torch.Tensor,
    weight_t: torch.Tensor,
    tau: torch.Tensor,
    bias: Optional[torch.Tensor],
    col_norm: Optional[torch.Tensor],
    segments: Sequence[int],
) -> torch.Tensor:
    """The reference on any device: per segment, mask the input and multiply. On the CPU a single
    token reads only its kept rows (faster than dense there: data/results/gemv_cpu.json)."""
    tokens = x.reshape(-1, x.shape[-1])  # (T, K)
    if x.device.type == "cpu" and tokens.shape[0] == 1 and len(segments) == 1:
        return sparse_gemv_rows(x, weight_t, bias, tau[0], None if col_norm is None else col_norm[0])
    outputs = []
    start = 0
    for g, size in enumerate(segments):
        keep = keep_mask(tokens, tau[g], None if col_norm is None else col_norm[g])  # (T, K)
        outputs.append((tokens * keep) @ weight_t[:, start : start + size])  # (T, size)
        start += size
    y = torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]  # (T, N)
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], weight_t.shape[1])


# `workspace` is scratch that the kernel returns to zero before it ends: not a mutation as far as
# the result and torch.compile are concerned.
@torch.library.custom_op("sponlib::sparse_gemv", mutates_args=())
def _sparse_gemv_op(
    x: torch.Tensor,
    weight_t: torch.Tensor,
    tau: torch.Tensor,
    bias: Optional[torch.Tensor],
    col_norm: Optional[torch.Tensor],
    segments: list[int],
    workspace: Optional[torch.Tensor],
    sparsity: float,
) -> torch.Tensor:
    return _torch_path(x, weight_t, tau, bias, col_norm, segments)


@_sparse_gemv_op.register_kernel("cuda")
def _sparse_gemv_cuda(x, weight_t, tau, bias, col_norm, segments, workspace, sparsity):
    if (
        triton_sparse_gemv is None
        or x.numel() != x.shape[-1]
        or x.dtype not in TRITON_DTYPES
        or weight_t.numel() >= 2**31
    ):  # the kernel's offsets are 32-bit
        return _torch_path(x, weight_t, tau, bias, col_norm, segments)
    y = triton_sparse_gemv(
        x.reshape(-1).contiguous(),
        weight_t,
        tau.float(),
        bias,
        None if col_norm is None else col_norm.float(),
        tuple(segments),
        workspace=workspace,
        sparsity=sparsity,
    )  # (N,)
    return y.reshape(*x.shape[:-1], weight_t.shape[1])


@_sparse_gemv_op.register_fake
def _sparse_gemv_fake(x, weight_t, tau, bias, col_norm, segments, workspace, sparsity):
    return x.new_empty((*x.shape[:-1], weight_t.shape[1]))


def check_level(sparsity: float, what: str) -> float:
    """The sparsity thresholds were calibrated for, as a float in [0, 1) (it picks the GPU kernel's
    tiles only), or a clear error naming `what` it was given to."""
    value = float(sparsity)
    if not 0.0 <= value < 1.0:  # NaN too
        raise InvalidArgumentError(
            f"calibrated sparsity of {what} is the share of inputs its thresholds zero, in [0, 1); got "
            f"{sparsity!r} (it only picks the kernel's tiles: pass the calibration's target level)"
        )
    return value


def check_gemv_arguments(
    x: torch.Tensor,
    weight_t: torch.Tensor,
    tau: torch.Tensor,
    bias: torch.Tensor | None,
    col_norm: torch.Tensor | None,
    segments: Sequence[int],
    workspace: torch.Tensor | None = None,
    sparsity: float = 0.0,
) -> None:
    """Shapes, dtypes and devices, with what to do when they are wrong (no device sync)."""
    check_level(sparsity, "sparse_gemv")
    n_in, n_out = weight_t.shape if weight_t.dim() == 2 else (None, None)
    if n_in is None or x.shape[-1] != n_in:
        raise InvalidArgumentError(
            f"input has {x.shape[-1]} features but the input-major weight has shape "
            f"{tuple(weight_t.shape)}; pass weight_t = input_major(linear.weight)"
        )
    if not weight_t.is_contiguous():
        raise InvalidArgumentError("weight_t must be contiguous (in, out): make it with input_major(linear.weight)")
    if x.dtype != weight_t.dtype:
        raise InvalidArgumentError(f"input is {x.dtype} but the weight is {weight_t.dtype}; cast one to the other")
    if not 1 <= len(segments) <= MAX_SEGMENTS or sum(segments) != n_out or min(segments) < 1:
        raise InvalidArgumentError(
            f"segments {list(segments)} must be 1 to {MAX_SEGMENTS} positive output sizes "
            f"summing to the weight's {n_out} outputs"
        )
    if tau.shape != (len(segments),) or not tau.is_floating_point():
        raise InvalidArgumentError(
            f"tau must be a float tensor with one threshold per segment, shape "
            f"({len(segments)},); got {tuple(tau.shape)} {tau.dtype}"
        )
    # Threshold values are checked where they are set (SparseLinear, set_thresholds); here only
    # eagerly on the CPU, where reading them costs no device sync and no graph break.
    if tau.device.type == "cpu" and not torch.compiler.is_compiling() and not bool((tau >= 0).all()):  # NaN too
        raise InvalidArgumentError(f"thresholds must be numbers >= 0; got {tau.tolist()}")
    if bias is not None and bias.shape != (n_out,):
        raise InvalidArgumentError(f"bias has shape {tuple(bias.shape)}; the projection has {n_out} outputs")
    if col_norm is not None and col_norm.shape != (len(segments), n_in):
        raise InvalidArgumentError(
            f"col_norm must be (segments, in) = ({len(segments)}, {n_in}); got {tuple(col_norm.shape)}"
        )
    if workspace is not None and (workspace.shape != (2 * n_out,) or workspace.dtype != torch.float32):
        raise InvalidArgumentError(
            f"workspace must be float32 zeros of shape ({2 * n_out},), from "
            "sponlib.kernels.new_workspace(out_features, device)"
        )
    for name, t in (
        ("weight_t", weight_t),
        ("tau", tau),
        ("bias", bias),
        ("col_norm", col_norm),
        ("workspace", workspace),
    ):
        if t is not None and t.device != x.device:
            raise InvalidArgumentError(f"{name} is on {t.device} but the input is on {x.device}; move them together")


def sparse_gemv(
    x: torch.Tensor,
    weight_t: torch.Tensor,
    tau: torch.Tensor,
    bias: torch.Tensor | None = None,
    col_norm: torch.Tensor | None = None,
    segments: Sequence[int] | None = None,
    workspace: torch.Tensor | None = None,
    sparsity: float = 0.0,
) -> torch.Tensor:
    """y = S(x) Wᵀ + b on whatever path suits the device and the number of tokens (module
    docstring). x (..., in), weight_t (in, out) input-major, tau (G,) thresholds per output
    segment, bias (out,), col_norm (G, in) for the wina rule, segments: the G output sizes of
    projections sharing x (default: one), workspace: `new_workspace(out, device)`, kept by the
    caller so that the GPU kernel needs no zero-fill per call, sparsity: the share of inputs the
    thresholds were calibrated to zero, which picks the GPU kernel's tiles for that sparsity band
    (`tiles.TILE_BANDS`; the result does not depend on it) -> (..., out)."""
    segments = [weight_t.shape[-1]] if segments is None else [int(s) for s in segments]
    sparsity = float(sparsity)
    check_gemv_arguments(x, weight_t, tau, bias, col_norm, segments, workspace, sparsity)
    return torch.ops.sponlib.sparse_gemv(x, weight_t, tau, bias, col_norm, segments, workspace, sparsity)


def new_workspace(n_out: int, device: torch.device | str) -> torch.Tensor:
    """Scratch for the GPU kernel's split-K sums of an n_out-output projection: float32 zeros,
    which every call leaves zero. One per projection, used on one stream at a time."""
    return torch.zeros(2 * n_out, device=device, dtype=torch.float32)
