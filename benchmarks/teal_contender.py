"""TEAL's published sparse GEMV (FasterDecoding/TEAL, `kernels/sparse_gemv.py`, MIT) as a contender
in benchmarks/kernels_h200.py, loaded from a checkout the user provides; nothing of it is copied
into this project.

    git clone https://github.com/FasterDecoding/TEAL .peers/TEAL        (.peers/ is git-ignored)
    python benchmarks/kernels_h200.py --teal .peers/TEAL --json ...

TEAL's kernel takes float16 only and the weight as (out, in) with the input dimension contiguous
(our input-major Wᵀ, transposed as a view), keeps |x| > τ, adds the slices of its split-K into an
output that an autotuning pre-hook zeroes before each call (a memset launch), and is tuned per
(shape, sparsity bin) on its first call. Its fused q/k/v kernel takes three thresholds. The
module ends by importing TEAL's torch.compile wrapper, which needs `msgspec`; the kernels do not,
so where that import fails a stand-in base class takes its place.
"""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import torch


class TealKernels:
    """TEAL's `splitk_sparse_gemv` and `qkv_gemv`, called with this project's argument layout."""

    def __init__(self, checkout: str | Path):
        self.checkout = Path(checkout)
        source = self.checkout / "kernels" / "sparse_gemv.py"
        if not source.is_file():
            raise SystemExit(
                f"--teal {checkout}: no kernels/sparse_gemv.py there; clone "
                "https://github.com/FasterDecoding/TEAL and pass the folder of the clone"
            )
        self.module = _load(source)
        self.provenance = {
            "source": "FasterDecoding/TEAL kernels/sparse_gemv.py (MIT)",
            "commit": _commit(self.checkout),
            "sparse_gemv_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        }

    def gemv(self, x: torch.Tensor, weight_t: torch.Tensor, tau: float, level: float) -> torch.Tensor:
        """x (1, in) float16, weight_t (in, out) contiguous -> (1, 1, out) float16."""
        return self.module.splitk_sparse_gemv(x.view(1, 1, -1), weight_t.t(), tau, _bin(level))

    def qkv(self, x: torch.Tensor, weight_t: torch.Tensor, taus: tuple, kv_size: int, level: float) -> torch.Tensor:
        """x (1, in) float16, weight_t (in, q + 2 kv) -> (1, 1, q + 2 kv) float16; taus (q, k, v)."""
        return self.module.qkv_gemv(x.view(1, 1, -1), weight_t.t(), *taus, _bin(level), kv_size)


def _bin(level: float) -> int:
    """TEAL's autotuning key for a sparsity: one tuning per level."""
    return int(round(level * 100))


def _load(source: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("teal_sparse_gemv", source)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as error:  # its torch.compile wrapper needs msgspec; the kernels do not
        if "compile_wrapper" in sys.modules or error.name not in ("msgspec", "compile_wrapper"):
            raise
        stand_in = types.ModuleType("compile_wrapper")
        stand_in.BaseKernel = object
        sys.modules["compile_wrapper"] = stand_in
        spec.loader.exec_module(module)
    return module


def _commit(checkout: Path) -> str | None:
    """The checkout's commit, when it is a git clone of its own (not a folder inside another one)."""
    if not (checkout / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    except OSError:
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None
