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

For decoding, `TealLinear` runs a projection through TEAL's kernel (a custom op, so that
torch.compile and CUDA graphs take it whole) and `teal_swap_in` puts one in place of every
projection of a float16 model: seven launches per block, TEAL's kernel as a Hugging Face model
would call it per projection.
"""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


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


_CONTENDER: list[TealKernels] = []  # the checkout the op calls, set by teal_swap_in


@torch.library.custom_op("sponlib_bench::teal_gemv", mutates_args=())
def _teal_gemv(x: torch.Tensor, weight_t: torch.Tensor, tau: float, level: float) -> torch.Tensor:
    """x (..., in) float16, one token; weight_t (in, out) contiguous -> (..., out)."""
    y = _CONTENDER[-1].module.splitk_sparse_gemv(x.reshape(1, 1, -1), weight_t.t(), tau, _bin(level))
    return y.reshape(*x.shape[:-1], weight_t.shape[1])


@_teal_gemv.register_fake
def _teal_gemv_fake(x, weight_t, tau, level):
    return x.new_empty((*x.shape[:-1], weight_t.shape[1]))


class TealLinear(nn.Module):
    """A bias-free projection under TEAL's rule |x| > τ: its kernel for one token, otherwise the
    masked dense product (the prompt). τ and the level are constants of a compiled graph."""

    def __init__(self, linear: nn.Linear, tau: float, level: float):
        super().__init__()
        assert linear.bias is None, "TEAL's kernel has no bias"
        # (in, out): TEAL's kernel takes the (out, in) weight as a view of this, input-major
        self.register_buffer("weight_t", linear.weight.detach().t().contiguous())
        self.tau, self.level, self.linear = tau, level, linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == x.shape[-1]:
            return torch.ops.sponlib_bench.teal_gemv(x, self.weight_t, self.tau, self.level)
        return F.linear(x * (x.abs() > self.tau), self.weight_t.t())


def teal_swap_in(model: nn.Module, thresholds, teal: TealKernels) -> nn.Module:
    """In place: every projection of `model` a TealLinear with its threshold. Returns `model`."""
    from sponlib.models import iter_projections

    _CONTENDER.append(teal)
    for p in list(iter_projections(model)):
        parent, _, child = p.name.rpartition(".")
        level = thresholds.levels.get(p.name, thresholds.target)
        setattr(model.get_submodule(parent), child, TealLinear(p.module, thresholds.taus[p.name], level))
    return model


def teal_swap_out(model: nn.Module) -> nn.Module:
    """In place: every TealLinear back to the nn.Linear it stands in for. Returns `model`."""
    for name, module in list(model.named_modules()):
        if isinstance(module, TealLinear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.linear)
    return model
