"""The tile sweep of benchmarks/kernels_h200.py (`--parts sweep`): for each projection shape and
fused group, time the sparse GEMV's variants at s = 0 and 0.5 and keep the fastest by
time(0) + time(0.5), the table `sponlib.kernels.tiles.gemv_config` reads
(sponlib/kernels/configs/<gpu>.json, written with --write-configs).

Stage 1 tries output tiles of 64 to 2048 columns (row pieces of 128 B to 4 KB in bf16), 8 to 64
inputs per step, 1 to 8 steps per program (split-K by atomics over the rest); from 2 steps up
with two blocks in flight, or over the kept rows only, picked in registers; from 4 steps up also
with the kept rows listed in scratch memory first, with or without the next step in flight; and the split's sums
finished by the last slice to arrive or by a second small kernel. Stage 2 takes
the four best of stage 1 and adds cache hints, programmatic dependent launch and both; and the
best once more with partial sums and a second kernel instead of atomics. The table gets the
fastest by time(0) + time(0.5) per shape and, where another is fastest at 0.5 alone, that one
as the shape's row from sparsity 0.5 up (`tiles.TILE_BANDS`). The shipped table's
row for the shape, if any, always competes, so a sweep over a subset of the variants
(`--sweep-variants`) never replaces a faster row with a slower one.

Every configuration's result is checked against a float64 reference at both levels; one that is
off is left out. Triton compiles each configuration on first use; a pool of processes compiles them all into
Triton's on-disk cache first (most of a sweep's time on a fresh machine), and the timing process
then loads them from there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch
import torch.multiprocessing as mp
import triton

from sponlib.kernels.tiles import GemvConfig, tuned_configs
from sponlib.records import library_versions

from kernel_parts import GemvData
from kernel_shapes import sweep_shapes

MAX_PROGRAMS = 16384  # more only adds scheduling; fewer than the multiprocessors leaves some idle
VARIANTS = ("plain", "prefetch", "select", "compact")  # stage 1's loop variants


def _variant(config: GemvConfig) -> str:
    return "compact" if config.compact else "select" if config.select else "prefetch" if config.prefetch else "plain"


def candidates(n_in: int, n_out: int, variants=VARIANTS) -> list[GemvConfig]:
    """Stage 1's configurations for one shape (module docstring), of the loop `variants` only."""
    fewest = 132 if n_in * n_out >= 2**22 else 1  # small shapes cannot fill the GPU whatever the tiles
    found = []
    for block_n in (64, 128, 256, 512, 1024, 2048):
        if block_n > max(64, triton.next_power_of_2(n_out)) or (n_out >= 4096 and block_n < 256):
            continue  # narrow tiles lost on every wide shape in earlier sweeps
        for block_k in (8, 16, 32, 64):
            tile = block_n * block_k
            if not 2048 <= tile <= 32768:
                continue
            for steps in (1, 2, 4, 8) if n_in > 4096 else (1, 2, 4):
                k_per = block_k * steps
                programs = triton.cdiv(n_out, block_n) * triton.cdiv(n_in, k_per)
                if k_per > triton.next_power_of_2(n_in) or not fewest <= programs <= MAX_PROGRAMS:
                    continue
                warps = (4,) if tile <= 8192 else (4, 8) if tile <= 16384 else (8,)
                loops = ({},) if steps == 1 else ({"prefetch": True}, {"select": True})
                if steps >= 4:
                    loops += ({"compact": True}, {"compact": True, "prefetch": True})
                if programs > triton.cdiv(n_out, block_n):  # split-K: the two ways to finish
                    loops += tuple({**v, "finisher": True} for v in loops)
                found += [GemvConfig(block_n, block_k, k_per, w, 1, atomic=True, **v) for w in warps for v in loops]
    return [c for c in dict.fromkeys(found) if _variant(c) in variants]


def _compile(n_in: int, n_out: int, configs: list[GemvConfig]) -> None:
    """Run each configuration once on the shape (one pool worker's share), which leaves its
    compiled kernels in Triton's on-disk cache."""
    from sponlib.kernels.triton_gemv import triton_sparse_gemv

    x = torch.randn(n_in, device="cuda", dtype=torch.bfloat16)
    weight_t = torch.randn(n_in, n_out, device="cuda", dtype=torch.bfloat16)
    tau = torch.tensor([0.67], device="cuda")
    workspace = torch.zeros(2 * n_out, device="cuda")
    for config in configs:
        triton_sparse_gemv(x, weight_t, tau, config=config, workspace=workspace)
    torch.cuda.synchronize()


def precompile(n_in: int, n_out: int, configs: list[GemvConfig]) -> None:
    """Compile `configs` for the shape in a pool of processes (one per spare CPU core, at most 14)."""
    workers = max(1, min(14, (os.cpu_count() or 2) - 2, len(configs)))
    shares = [configs[i::workers] for i in range(workers)]
    with mp.get_context("spawn").Pool(workers) as pool:
        pool.starmap(_compile, [(n_in, n_out, share) for share in shares])


# Two dependent launches captured in a CUDA graph, checked against the reference: run in a child
# process, because a launch the driver refuses during capture can leave this process's context broken.
_PDL_PROBE = """
import torch
from sponlib.kernels.tiles import GemvConfig
from sponlib.kernels.triton_gemv import triton_sparse_gemv
x = torch.randn(4096, device="cuda", dtype=torch.bfloat16)
w = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
tau = torch.tensor([0.67], device="cuda")
config = GemvConfig(256, 32, 64, prefetch=True, atomic=True, pdl=True)
space = torch.zeros(8192, device="cuda")
triton_sparse_gemv(x, w, tau, config=config, workspace=space)
graph = torch.cuda.CUDAGraph()
with torch.cuda.graph(graph):
    y = triton_sparse_gemv(x, w, tau, config=config, workspace=space)
    z = triton_sparse_gemv(y, w, tau, config=config, workspace=space)
graph.replay()
ref_y = (x.float() * (x.float().abs() > 0.67)) @ w.float()
ref_z = (y.float() * (y.float().abs() > 0.67)) @ w.float()
assert (y.float() - ref_y).norm() / ref_y.norm() < 1e-2 and (z.float() - ref_z).norm() / ref_z.norm() < 1e-2
"""


def pdl_in_graphs() -> bool:
    """Whether kernels launched as programmatic dependents capture and replay correctly here."""
    done = subprocess.run([sys.executable, "-c", _PDL_PROBE], capture_output=True, text=True)
    if done.returncode:
        print(f"programmatic dependent launch left out: {done.stderr.strip().splitlines()[-1:]}", flush=True)
    return done.returncode == 0


def _timed(data: GemvData, config: GemvConfig) -> tuple[float, GemvConfig, dict]:
    """time(0) + time(0.5) of one configuration, and its rows; a configuration whose result is off
    the float64 reference by more than bf16 allows (relative 1e-2) is timed but never chosen."""
    at = {
        level: {**data.sparse(level, config), "relative_error": data.relative_error(level, config)}
        for level in (0.0, 0.5)
    }
    wrong = any(row["relative_error"] > 1e-2 for row in at.values())
    if wrong:
        print(
            f"sweep: {config} is off the reference ({[r['relative_error'] for r in at.values()]}); left out", flush=True
        )
    return float("inf") if wrong else at[0.0]["sparse_us"] + at[0.5]["sparse_us"], config, at


def _write_configs(chosen: list[dict]) -> None:
    """The winners into the GPU model's table; the rows of shapes not swept this time stay."""
    from sponlib.io import atomic_write_json
    from sponlib.kernels.tiles import config_file, tuned_configs

    path = config_file(torch.cuda.get_device_name(0))
    path.parent.mkdir(exist_ok=True)
    swept = {(row["in"], row["out"]) for row in chosen}
    table = json.loads(path.read_text())["configs"] if path.is_file() else []
    kept = [row for row in table if (row["in"], row["out"]) not in swept]
    atomic_write_json(
        path,
        {
            "gpu": torch.cuda.get_device_name(0),
            "written_by": "python benchmarks/kernels_h200.py --parts sweep --write-configs",
            "created": time.strftime("%Y-%m-%d"),
            "versions": library_versions(),
            "selection": "fastest time(s=0) + time(s=0.5); rows with min_sparsity 0.5: fastest time(s=0.5);"
            " bf16; N(0, 1) inputs; every result checked against a float64 reference",
            "configs": kept + chosen,
        },
    )
    tuned_configs.cache_clear()  # later parts of this run read the new table
    print(f"wrote {path}", flush=True)


def _sweep_shape(data: GemvData, variants, hints, shipped: list[GemvConfig]) -> list[tuple]:
    """Both stages on one shape: (time(0) + time(0.5), config, rows by level) of every timing."""
    n_in, n_out = data.n_in, data.n_out
    stage1 = candidates(n_in, n_out, variants) + shipped
    precompile(n_in, n_out, stage1)
    timed = sorted((_timed(data, c) for c in dict.fromkeys(stage1)), key=lambda t: t[0])
    extras = [GemvConfig(**{**best.__dict__, **hint}) for _, best, _ in timed[:4] for hint in hints]
    precompile(n_in, n_out, extras)
    timed += [_timed(data, c) for c in dict.fromkeys(extras) if c not in stage1]
    best = min(timed, key=lambda t: t[0])[1]
    if best.split(n_in) > 1:
        timed.append(_timed(data, GemvConfig(**{**best.__dict__, "atomic": False})))
    return timed


def _chosen(label: str, n_in: int, n_out: int, timed: list[tuple]) -> list[dict]:
    """The table's rows for one shape: band 0, fastest by time(0) + time(0.5); band 0.5, fastest
    at 0.5 alone, when that is another configuration (tiles.TILE_BANDS)."""
    right = [t for t in timed if t[0] != float("inf")]
    by_sum = min(right, key=lambda t: t[0])
    at_half = min(right, key=lambda t: t[2][0.5]["sparse_us"])
    rows = []
    for band, (_, config, at) in ((0.0, by_sum), (0.5, at_half)):
        if band and config == by_sum[1]:
            continue
        rows.append(
            {
                "in": n_in,
                "out": n_out,
                "roles": label,
                **({"min_sparsity": band} if band else {}),
                **config.__dict__,
                "us_at_0": at[0.0]["sparse_us"],
                "us_at_0.5": at[0.5]["sparse_us"],
                "dense_us": at[0.0]["dense_us"],
            }
        )
    return rows


def sweep(write_configs: bool, models=None, on_shape=None, variants=VARIANTS) -> list[dict]:
    """Both stages over every shape of `models` (default: all; module docstring) with the loop
    `variants` given; rows of every timing, and with `write_configs` the winners written after
    each shape, so an interrupted sweep keeps them; `on_shape(rows)` is called after each shape too."""
    gen = torch.Generator(device="cuda").manual_seed(2)
    hints = ({"evict": True}, {"pdl": True}, {"evict": True, "pdl": True}) if pdl_in_graphs() else ({"evict": True},)
    shipped = tuned_configs(torch.cuda.get_device_name(0))
    rows, chosen = [], []
    for model, roles, n_in, n_out in sweep_shapes():
        if models and model not in models:
            continue
        started = time.perf_counter()
        data = GemvData(n_in, n_out, gen, cap=256)
        own = [config for (k, n, _), config in shipped.items() if (k, n) == (n_in, n_out)]
        timed = _sweep_shape(data, variants, hints, own)
        for _, config, at in timed:
            rows += [
                {"model": model, "roles": roles, **config.__dict__, "split": config.split(n_in), **r}
                for r in at.values()
            ]
        shape_rows = _chosen(f"{model} {roles}", n_in, n_out, timed)
        chosen += shape_rows
        for row in shape_rows:
            print(
                f"sweep {model} {roles} {n_in}->{n_out} from s={row.get('min_sparsity', 0.0)}: {len(timed)} "
                f"variants in {time.perf_counter() - started:.0f} s; best "
                f"{GemvConfig(**{k: row[k] for k in GemvConfig.__dataclass_fields__})}: {row['us_at_0']} / "
                f"{row['us_at_0.5']} us at s=0 / 0.5 (dense {row['dense_us']} us)",
                flush=True,
            )
        del data
        torch.cuda.empty_cache()
        if write_configs:
            _write_configs(chosen)
        if on_shape is not None:
            on_shape(rows)
    return rows
