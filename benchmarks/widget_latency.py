"""Benchmark: how long a dashboard takes to redraw after its sparsity slider moves, on the default
model and a probe text, for a level never seen (computed) and one seen before (cached).

    python benchmarks/widget_latency.py --json data/results/widget_latency_cpu.json

Goals (2 CPU cores, SmolLM2-135M, 256 tokens): under 2 s for a new level, under 0.2 s for a
cached one. Levels between the trained SPON levels get interpolated vectors, so every level up to
the highest trained one takes the SPON pass. The time is that of `slider.value = level`
returning: the observer computes (or looks up) the setting and writes the new data into the
FigureWidget; sending it to a browser is not included (no front end here). The record also holds
the compute floor of a new level, timed in the same run (`compute_floor`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from sponlib.analysis import LayerAnalysis
from sponlib.artifacts import shipped_calibration, shipped_spon_levels
from sponlib.data import load_corpus, load_windows
from sponlib.models import load_model
from sponlib.records import write_result
from sponlib.viz import DriftExplorer, ThresholdExplorer

GOALS = {"new": 2.0, "cached": 0.2}  # seconds


@torch.inference_mode()
def compute_floor(model, ids: torch.Tensor, lens_tokens: int, rounds: int = 3) -> float:
    """Seconds of the work a new level with SPON cannot skip, timed now on this machine (median
    of `rounds`): two forward passes over the probe (masked, SPON) with no hooks, and two products
    of the head with the rows a redraw reads (every next-token position, and the lens tokens of
    every layer). Redraw times are read against it: the same code's times move by a third from
    one run to the next on a shared 2-core machine, and the floor moves with them."""
    head = model.get_output_embeddings().weight  # (V, d)
    rows = ids.shape[1] - 1 + model.config.num_hidden_layers * lens_tokens
    hidden, logits = torch.randn(rows, head.shape[1]), torch.empty(rows, head.shape[0])  # (rows, d), (rows, V)
    times = []
    for _ in range(rounds + 1):  # the first round warms up
        started = time.perf_counter()
        for _ in range(2):
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
            torch.matmul(hidden, head.T, out=logits)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def _move(dashboard, level: float) -> tuple[float, float]:
    """Seconds until the slider's observer returns (every curve drawn), and until the status line
    first changed (the first curves drawn; a level with SPON vectors takes a second pass)."""
    first = []
    started = time.perf_counter()
    watch = lambda change: first.append(time.perf_counter() - started)  # noqa: E731
    dashboard.status.observe(watch, names="value")
    dashboard.level.value = level  # the observer redraws before this returns
    done = time.perf_counter() - started
    dashboard.status.unobserve(watch, names="value")
    return done, (first[0] if first else done)


def build_parser() -> argparse.ArgumentParser:
    """This benchmark's command line (tests parse the commands of its records with it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--corpus", default="persuasion")
    parser.add_argument("--tokens", type=int, default=256, help="tokens of the probe text (default 256)")
    parser.add_argument(
        "--levels",
        default="0.25,0.4,0.6,0.7,0.3,0.45,0.55,0.65",
        help="levels visited in order after the start at 0.5 (each new once)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--json", required=True)
    return parser


def main() -> None:
    args = build_parser().parse_args()

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, dtype="float32", device="cpu")
    calibration = shipped_calibration(model)
    spon = shipped_spon_levels(model, "teal", calibration)  # SPON at every level up to the highest trained
    probe = load_windows(load_corpus(args.corpus), tokenizer, args.tokens, 1, seed=0)
    levels = [float(x) for x in args.levels.split(",")]

    lens_tokens = LayerAnalysis(model, probe.ids, calibration).lens_tokens
    floor = compute_floor(model, probe.ids, lens_tokens)
    rows = []
    for name, make in (("DriftExplorer", DriftExplorer), ("ThresholdExplorer", ThresholdExplorer)):
        analysis = LayerAnalysis(model, probe.ids, calibration, spon_levels=spon)
        started = time.perf_counter()
        dashboard = make(analysis, level=0.5)
        rows.append({"dashboard": name, "level": 0.5, "kind": "first draw", "seconds": time.perf_counter() - started})
        for kind, visits in (("new", levels), ("cached", [0.5] + levels[:4])):
            for level in visits:
                done, first = _move(dashboard, level)
                rows.append(
                    {
                        "dashboard": name,
                        "level": level,
                        "kind": kind,
                        "seconds": done,
                        "first_curves_s": first,
                        "spon": name == "DriftExplorer" and analysis.has_spon("teal", level),
                    }
                )

    print(f"{'dashboard':18s} {'level':>6s} {'kind':>10s} {'SPON':>5s} {'first curves s':>15s} {'all curves s':>13s}")
    for row in rows:
        first = f"{row['first_curves_s']:15.3f}" if "first_curves_s" in row else f"{'':15s}"
        print(
            f"{row['dashboard']:18s} {row['level']:6.2f} {row['kind']:>10s} {('yes' if row.get('spon') else ''):>5s} "
            f"{first} {row['seconds']:13.3f}"
        )
    summary = {}
    for name in ("DriftExplorer", "ThresholdExplorer"):
        for kind, goal in GOALS.items():
            times = [r["seconds"] for r in rows if r["dashboard"] == name and r["kind"] == kind]
            summary[f"{name}/{kind}"] = {
                "median_s": statistics.median(times),
                "max_s": max(times),
                "goal_s": goal,
                "met": max(times) < goal,
                "moves": len(times),
            }
    print(f"compute floor of a new level with SPON (two bare forward passes, two head products): {floor:.3f} s")
    for key, s in summary.items():
        print(
            f"{key:28s} median {s['median_s']:.3f} s, max {s['max_s']:.3f} s (goal < {s['goal_s']} s: "
            f"{'met' if s['met'] else 'missed'})"
        )
    write_result(
        args.json,
        "widget_latency",
        {
            "probe": probe.describe(),
            "threads": args.threads,
            "lens_tokens": lens_tokens,
            "floor_s": floor,
            "cpu_count": os.cpu_count(),
            "spon_trained_levels": list(spon.levels),
            "rows": rows,
            "summary": summary,
        },
        model=model,
        device="cpu",
        dtype=torch.float32,
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
