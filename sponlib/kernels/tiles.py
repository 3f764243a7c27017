"""Tile shapes of the Triton sparse GEMV: `GemvConfig`, the tables of the fastest tiles measured per
GPU model (configs/<gpu>.json, written by the benchmark's sweep; docs/kernel_notes.md) and the
heuristic used for shapes and GPUs without one. Importing this module needs no Triton.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


MAX_SEGMENTS = 3  # q/k/v


@dataclass(frozen=True)
class GemvConfig:
    """Tile shape and launch settings of one sparse GEMV."""

    block_n: int  # outputs per program
    block_k: int  # inputs per loop step
    k_per_program: int  # inputs per program, a multiple of block_k; fewer than K means split-K
    num_warps: int = 4
    num_stages: int = 1
    prefetch: bool = False  # issue the next block's loads before consuming the current one
    atomic: bool = False  # split-K sums by atomics in one launch (else partials + a second kernel)
    finisher: bool = False  # with atomic: no arrival counter; a second small kernel casts and re-zeroes
    compact: bool = False  # list the kept inputs first, then loop over kept rows only (prefetch: two in flight)
    select: bool = False  # pick the kept inputs in registers, loop over kept rows with two steps in flight
    evict: bool = False  # weights streamed past the cache (evict first), the input kept in it (evict last)
    pdl: bool = False  # programmatic dependent launch: start while the previous kernel drains (sm_90+)

    def inputs_per_program(self, n_in: int) -> int:
        """k_per_program, no more than the inputs there are (rounded up to whole steps)."""
        return min(self.k_per_program, _cdiv(n_in, self.block_k) * self.block_k)

    def split(self, n_in: int) -> int:
        return _cdiv(n_in, self.inputs_per_program(n_in))


LIST_CHUNK = 512  # inputs per chunk of a kept-input list, by default (triton_listed): a power of two
CONFIG_DIR = Path(__file__).with_name("configs")  # tuned tiles per GPU, written by the benchmark's sweep
# Sparsity levels from which a tuned table may hold other tiles for a shape: the variants that loop
# over kept rows only win from 0.5 up and lose at 0 (docs/kernel_notes.md, v5).
TILE_BANDS = (0.0, 0.5)


def tile_band(sparsity: float) -> float:
    """The band of a target sparsity: the highest start in TILE_BANDS not above it."""
    return max(band for band in TILE_BANDS if band <= sparsity)


def config_file(device_name: str) -> Path:
    return CONFIG_DIR / (re.sub(r"[^A-Za-z0-9]+", "_", device_name).strip("_") + ".json")


@functools.lru_cache(maxsize=None)
def tuned_configs(device_name: str | None) -> dict[tuple[int, int, float], GemvConfig]:
    """(in, out, band) -> the fastest tiles measured on this GPU model for that shape and sparsity
    band (a row's "min_sparsity", 0 when absent), if a table was shipped for it."""
    if device_name is None or not config_file(device_name).is_file():
        return {}
    table = json.loads(config_file(device_name).read_text())
    fields = {f for f in GemvConfig.__dataclass_fields__}
    return {
        (row["in"], row["out"], float(row.get("min_sparsity", 0.0))): GemvConfig(
            **{k: v for k, v in row.items() if k in fields}
        )
        for row in table["configs"]
    }


@functools.lru_cache(maxsize=None)
def device_name(device: torch.device) -> str | None:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def gemv_config(n_in: int, n_out: int, device: str | None = None, sparsity: float = 0.0) -> GemvConfig:
    """Tiles for a (n_in -> n_out) projection whose thresholds zero about a share `sparsity` of
    its inputs: the tuned ones for this GPU model, shape and sparsity band when shipped
    (sponlib/kernels/configs/; a lower band's when the table has none for this one), otherwise
    wide output tiles and enough input slices that a few programs run per multiprocessor, summed
    by atomics in one launch. (The newer variants, cache hints, dependent launch, a finishing
    kernel and kept rows listed first, are chosen only through a tuned table; docs/kernel_notes.md.)"""
    table = tuned_configs(device)
    for band in sorted((b for b in TILE_BANDS if b <= tile_band(sparsity)), reverse=True):
        if (n_in, n_out, band) in table:
            return table[n_in, n_out, band]
    block_n = 128 if n_out >= 2048 else 64
    block_k = 64
    programs_wanted = 1024
    tiles = _cdiv(n_out, block_n)
    slices = max(1, min(_cdiv(n_in, block_k), programs_wanted // tiles))
    k_per_program = _cdiv(_cdiv(n_in, slices), block_k) * block_k
    return GemvConfig(block_n, block_k, k_per_program, num_warps=4, prefetch=True, atomic=True)
