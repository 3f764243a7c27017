"""The physical limits every sparse-GEMV row is read against (a part of benchmarks/kernels_h200.py):

- compacted ceilings: cuBLAS on the *compacted* weight, only the kept share of the input rows,
  stored contiguously. A perfect gather at no cost: the best one launch can do at a sparsity,
  with the fixed costs of a real launch included.
- gather efficiency: reading pieces of P contiguous bytes at random places, against reading the
  same number of bytes as consecutive pieces, with the same kernel. A sparse GEMV on Wᵀ reads, per
  kept input row, one piece as long as its output tile is wide (BLOCK_N x 2 bytes in bf16).

Needs CUDA and Triton.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from sponlib.kernels.timing import graph_time

from kernel_parts import GemvData

CEILING_LEVELS = (0.25, 0.5, 0.7)
PIECE_BYTES = (128, 256, 512, 1024, 2048, 4096, 8192)


def compacted_ceilings(shapes, levels=CEILING_LEVELS, dtype=torch.bfloat16) -> list[dict]:
    """Per (model, roles, in, out) shape: dense cuBLAS against cuBLAS on the kept share of the
    input rows, contiguous, at each level."""
    gen = torch.Generator(device="cuda").manual_seed(3)
    rows = []
    for model, roles, n_in, n_out in shapes:
        data = GemvData(n_in, n_out, gen, dtype, cap=256)  # the weight copies, inputs and dense time
        weight_bytes, dense_s = data.weight_bytes, data.dense_s
        for level in levels:
            kept = round(n_in * (1 - level))
            compact = [w[:, :kept].contiguous() for w in data.weights]  # (out, kept) each
            inputs = [x[:, :kept].contiguous() for x in data.xs]  # (1, kept) each
            compact_s = graph_time([lambda x=x, w=w: F.linear(x, w) for x, w in zip(inputs, compact)])
            rows.append(
                {
                    "model": model,
                    "roles": roles,
                    "in": n_in,
                    "out": n_out,
                    "sparsity": level,
                    "dense_us": round(dense_s * 1e6, 2),
                    "compacted_us": round(compact_s * 1e6, 2),
                    "dense_GBps": round(weight_bytes / dense_s / 1e9, 1),
                    "compacted_GBps": round(kept * n_out * 2 / compact_s / 1e9, 1),
                    "ceiling_speedup": round(dense_s / compact_s, 3),
                    "ideal": round(1 / (1 - level), 3),
                }
            )
            print(
                f"ceiling {model:10s} {roles:8s} {n_in:6d}->{n_out:<6d} s={level:<4} dense {dense_s * 1e6:7.2f} us"
                f" | compacted {compact_s * 1e6:7.2f} us x{dense_s / compact_s:.2f} (ideal x{1 / (1 - level):.2f})",
                flush=True,
            )
            compact = inputs = None
        data = None  # its weights go before the next shape's
        torch.cuda.empty_cache()
    return rows


@triton.jit
def _read_pieces(src_ptr, starts_ptr, out_ptr, PIECES: tl.constexpr, PIECE: tl.constexpr):
    """One program: PIECES pieces of PIECE elements, starting at the given offsets (multiples of
    PIECE), summed into one float so that no read can be skipped."""
    pid = tl.program_id(0)
    starts = tl.load(starts_ptr + pid * PIECES + tl.arange(0, PIECES))  # (PIECES,)
    starts = tl.multiple_of(starts, PIECE)
    values = tl.load(src_ptr + starts[:, None] + tl.arange(0, PIECE)[None, :])  # (PIECES, PIECE)
    tl.store(out_ptr + pid, tl.sum(values.to(tl.float32)))


def gather_efficiency(piece_bytes=PIECE_BYTES, buffer_gib: float = 2.0, read_mb: int = 256) -> list[dict]:
    """Per piece length: GB/s reading `read_mb` MB as random pieces of a `buffer_gib` GiB bf16
    buffer, and as consecutive pieces, each call its own pieces; efficiency = random / contiguous."""
    elements = int(buffer_gib * 2**30) // 2
    source = torch.randn(elements, device="cuda", dtype=torch.bfloat16)
    gen = torch.Generator(device="cuda").manual_seed(4)
    calls_per_time = 4
    rows = []
    for size in piece_bytes:
        piece = size // 2
        pieces_per_program = max(1, 8192 // piece)
        pieces = read_mb * 2**20 // size // pieces_per_program * pieces_per_program
        slots = elements // piece
        out = torch.empty(pieces // pieces_per_program, device="cuda", dtype=torch.float32)

        def launch(starts):
            return lambda: _read_pieces[(pieces // pieces_per_program,)](
                source, starts, out, PIECES=pieces_per_program, PIECE=piece, num_warps=4
            )

        scattered = [
            (torch.randperm(slots, device="cuda", generator=gen)[:pieces] * piece).to(torch.int32)
            for _ in range(calls_per_time)
        ]
        consecutive = [
            ((torch.arange(pieces, device="cuda") + c * pieces) % slots * piece).to(torch.int32)
            for c in range(calls_per_time)
        ]
        random_s = graph_time([launch(s) for s in scattered], replays=10)
        contiguous_s = graph_time([launch(s) for s in consecutive], replays=10)
        bytes_read = pieces * size
        row = {
            "piece_bytes": size,
            "read_MB": round(bytes_read / 1e6, 1),
            "random_GBps": round(bytes_read / random_s / 1e9, 1),
            "contiguous_GBps": round(bytes_read / contiguous_s / 1e9, 1),
            "efficiency": round(contiguous_s / random_s, 3),
        }
        rows.append(row)
        print(
            f"gather {size:5d} B pieces: random {row['random_GBps']:7.1f} GB/s, consecutive "
            f"{row['contiguous_GBps']:7.1f} GB/s: {row['efficiency']:.0%}",
            flush=True,
        )
        scattered = consecutive = None
    source = None
    torch.cuda.empty_cache()
    return rows
