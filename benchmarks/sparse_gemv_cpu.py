"""Benchmark: the torch sparse GEMV paths against dense, batch 1, on the CPU.

    python benchmarks/sparse_gemv_cpu.py --json data/results/gemv_cpu.json

For SmolLM2-135M and Llama-3-8B projection shapes, at each sparsity level: dense `F.linear` (the
baseline), the reference (dense product on the masked input) and the row path (only the kept
rows of the input-major weight, `sparse_gemv_rows`). Times are medians over interleaved
repetitions, so the three paths share the machine's state; speed-ups are ratios within one run.
The ideal is 1/(1 − s): the share of weight bytes that need not be read.

Decoding reads every weight from memory once per token, so the benchmark must too: each call
takes the next of several copies of the weight (together at least 8x the last-level cache) and
a fresh input (a fresh mask). Reusing one weight would let the sparse paths, which read less,
run from cache and beat the physical bound.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from sponlib.kernels import input_major, sparse_gemv_reference, sparse_gemv_rows
from sponlib.records import write_result

# (model, projection): (out, in)
SHAPES = {
    ("SmolLM2-135M", "q/o 576→576"): (576, 576),
    ("SmolLM2-135M", "gate/up 576→1536"): (1536, 576),
    ("SmolLM2-135M", "down 1536→576"): (576, 1536),
    ("Llama-3-8B", "q/o 4096→4096"): (4096, 4096),
    ("Llama-3-8B", "k/v 4096→1024"): (1024, 4096),
    ("Llama-3-8B", "gate/up 4096→14336"): (14336, 4096),
    ("Llama-3-8B", "down 14336→4096"): (4096, 14336),
}
LEVELS = (0.0, 0.25, 0.4, 0.5, 0.6, 0.7, 0.9)  # 0 first: the row path's own baseline


def _time(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


class _Rotation:
    """Copies of one projection's weight (both layouts) and a pool of inputs, handed out in turn."""

    def __init__(self, out_features: int, in_features: int, dtype, cache_bytes: int):
        g = torch.Generator().manual_seed(0)
        weight = torch.randn(out_features, in_features, generator=g).to(dtype)  # (out, in), as nn.Linear holds it
        copies = max(2, -(-8 * cache_bytes // (weight.numel() * weight.element_size())))
        self.weights = [weight.clone() for _ in range(copies)]  # (out, in) each
        self.weights_t = [input_major(w) for w in self.weights]  # (in, out) each
        self.bias = torch.randn(out_features, generator=g).to(dtype)
        self.inputs = torch.randn(64, 1, in_features, generator=g).to(dtype)  # 64 tokens of (1, in)
        self.weight_bytes = weight.numel() * weight.element_size()
        self.calls = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.calls += 1
        i = self.calls % len(self.weights)
        return self.inputs[self.calls % len(self.inputs)], self.weights[i], self.weights_t[i]


def measure(rotation: _Rotation, level: float, repeats: int, rounds: int) -> dict:
    magnitudes = rotation.inputs.abs().float()
    # one τ per level, zeroing a share `level` of the inputs on average (each input's own share varies)
    tau = float(torch.quantile(magnitudes.flatten(), level)) if level > 0 else 0.0
    bias = rotation.bias

    def dense():
        x, weight, _ = rotation.next()
        return F.linear(x, weight, bias)

    def reference():
        x, _, weight_t = rotation.next()
        return sparse_gemv_reference(x, weight_t, bias, tau)

    def rows():
        x, _, weight_t = rotation.next()
        return sparse_gemv_rows(x, weight_t, bias, tau)

    paths = {"dense": dense, "reference": reference, "rows": rows}
    x, _, weight_t = rotation.next()
    torch.testing.assert_close(
        sparse_gemv_rows(x, weight_t, bias, tau), sparse_gemv_reference(x, weight_t, bias, tau), rtol=1e-4, atol=1e-3
    )
    times = {name: [] for name in paths}
    for _ in range(rounds):  # interleaved: each path sees the same machine state
        for name, fn in paths.items():
            fn()  # warm
            times[name] += _time(fn, repeats)
    median = {name: statistics.median(values) for name, values in times.items()}
    measured = float((magnitudes <= tau).float().mean()) if level > 0 else 0.0
    weight_bytes = rotation.weight_bytes
    return {
        "measured_sparsity": measured,
        "us": {k: v * 1e6 for k, v in median.items()},
        "speedup_vs_dense": {k: median["dense"] / v for k, v in median.items()},
        "dense_gb_per_s": weight_bytes / median["dense"] / 1e9,
        "ideal_speedup": 1 / (1 - measured),
    }


def build_parser() -> argparse.ArgumentParser:
    """This benchmark's command line (tests parse the commands of its records with it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per path and round (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument(
        "--cache-mib", type=int, default=32, help="last-level cache to defeat, MiB (default 32, this machine's L3)"
    )
    parser.add_argument("--json", required=True)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)

    results = []
    print(
        f"{'model':13s} {'projection':20s} {'s':>5s} {'dense µs':>9s} {'dense GB/s':>10s} "
        f"{'reference ×':>11s} {'rows ×':>9s} {'rows/rows@0 ×':>14s} {'ideal ×':>8s}"
    )
    for (model, projection), (out_features, in_features) in SHAPES.items():
        rotation = _Rotation(out_features, in_features, dtype, args.cache_mib << 20)
        for level in LEVELS:
            row = {
                "model": model,
                "projection": projection,
                "out": out_features,
                "in": in_features,
                "level": level,
                "weight_copies": len(rotation.weights),
                **measure(rotation, level, args.repeats, args.rounds),
            }
            if level == 0:
                rows_at_0 = row["us"]["rows"]
            # the sparsity's own gain, apart from the row layout's: the row path at 0 over the row path at s
            row["rows_speedup_vs_rows_at_0"] = rows_at_0 / row["us"]["rows"]
            results.append(row)
            print(
                f"{model:13s} {projection:20s} {level:5.2f} {row['us']['dense']:9.1f} {row['dense_gb_per_s']:10.2f} "
                f"{row['speedup_vs_dense']['reference']:11.2f} {row['speedup_vs_dense']['rows']:9.2f} "
                f"{row['rows_speedup_vs_rows_at_0']:14.2f} "
                f"{row['ideal_speedup']:8.2f}",
                flush=True,
            )
    summary = {}
    for level in LEVELS:
        at = [r for r in results if r["level"] == level]
        best = max(at, key=lambda r: r["speedup_vs_dense"]["rows"])
        summary[f"{level:g}"] = {
            "rows_median_speedup": statistics.median(r["speedup_vs_dense"]["rows"] for r in at),
            "rows_best_speedup": best["speedup_vs_dense"]["rows"],
            "rows_best_shape": f"{best['model']} {best['projection']}",
            "rows_beats_dense": sum(r["speedup_vs_dense"]["rows"] > 1 for r in at),
            "shapes": len(at),
            "rows_median_speedup_vs_rows_at_0": statistics.median(r["rows_speedup_vs_rows_at_0"] for r in at),
            "ideal_speedup": 1 / (1 - level),
        }
    write_result(
        args.json,
        "sparse_gemv_cpu",
        {
            "batch": 1,
            "threads": args.threads,
            "cache_mib": args.cache_mib,
            "cpu_count": os.cpu_count(),
            "repeats": args.repeats,
            "rounds": args.rounds,
            "levels": list(LEVELS),
            "rows": results,
            "summary": summary,
        },
        device="cpu",
        dtype=dtype,
    )
    for level, s in summary.items():
        print(
            f"s = {level:>4s}: rows vs dense, median {s['rows_median_speedup']:.2f}x, best "
            f"{s['rows_best_speedup']:.2f}x ({s['rows_best_shape']}), faster in {s['rows_beats_dense']} of "
            f"{s['shapes']} shapes; its own gain over s = 0, median {s['rows_median_speedup_vs_rows_at_0']:.2f}x "
            f"(ideal {s['ideal_speedup']:.2f}x)"
        )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
