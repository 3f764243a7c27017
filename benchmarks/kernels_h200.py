"""Benchmark: the Triton sparse GEMV against cuBLAS dense and against TEAL's published kernel, per
projection, per decoder layer and in batch-1 decoding end to end, on one GPU, read against the
physical limits measured in the same run. Prints a table per part and writes one JSON record.

    python benchmarks/kernels_h200.py --json data/results/kernels_h200.json
    python benchmarks/kernels_h200.py --teal .peers/TEAL --parts gemv,layer --json data/results/kernels_h200.json
    python benchmarks/kernels_h200.py --parts sweep --write-configs --json data/results/kernels_sweep_h200.json

Parts (default: ceilings,limits,gemv,layer,e2e-llama,e2e-smollm2; `sweep`, `listed` and `e2e-teal`
on demand):
    ceilings     the device's copy bandwidth (bytes read + written), the ceiling for GB/s
    limits       cuBLAS on the compacted weight per shape and level, and the read rate of random
                 row pieces against their length (kernel_limits.py)
    gemv         one projection, Llama-3-8B and SmolLM2 shapes, sparsity 0 to 0.9, in bf16; with
                 --teal also in fp16 with TEAL's kernel beside ours (kernel_parts.py)
    layer        the seven projections of one decoder layer: dense, sparse (seven launches), sparse
                 with q/k/v and gate/up fused (four launches), TEAL as its model launches them
    e2e-llama    greedy decoding of a Llama-3-8B-shaped model with random bf16 weights (built from
                 a config, nothing downloaded), thresholds calibrated by sponlib on random tokens
    e2e-smollm2  the same for the default model, with its shipped calibration and SPON vectors
    listed       the GEMV over a ready list of kept inputs, with and without the listing launch
                 before it, against cuBLAS and the shipped kernel (kernel_listed.py)
    e2e-teal     with --teal: the e2e-llama model in float16, dense, sponlib's fused path and TEAL's
                 kernel in every projection, in the same decoder, at 0, 0.5 and 0.7
    sweep        tile shapes of the kernel per projection shape (kernel_sweep.py; what
                 sponlib.kernels.tiles.gemv_config reads)

TEAL's kernel comes from a checkout given with --teal (teal_contender.py): clone
https://github.com/FasterDecoding/TEAL into .peers/TEAL (git-ignored); nothing of it is copied here.

How kernels are timed (sponlib.kernels.timing): every call reads its own copy of the weights and
its own fresh input (copies together at least 4x the L2 cache), the calls of one measurement are
captured in one CUDA graph so that launch gaps are those of a captured model, and the graph is
replayed several times; the median replay over the number of calls is the time per call. Dense
is F.linear on the (out, in) weight a model holds (cuBLAS).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from sponlib.models import device_record
from sponlib.records import library_versions, write_result

from kernel_e2e import e2e_llama, e2e_smollm2
from kernel_limits import compacted_ceilings, gather_efficiency
from kernel_listed import listed
from kernel_parts import ceilings, gemv, layer
from kernel_shapes import DTYPE, sweep_shapes
from kernel_sweep import VARIANTS, sweep

PARTS = ("ceilings", "limits", "gemv", "layer", "e2e-llama", "e2e-smollm2")
SECTIONS = ("summary", "ceilings", "limits", "gemv", "layer", "e2e", "listed", "sweep", "teal", "runs")
ON_DEMAND = ("sweep", "listed", "e2e-teal")


def _at(rows, level, key, **match):
    """`key` of the first row at sparsity `level` matching `match` (a row without a dtype is bf16)."""
    for r in rows:
        if r.get("sparsity") == level and all(
            r.get(k, "bfloat16" if k == "dtype" else None) == v for k, v in match.items()
        ):
            return r[key]
    return None


def summarise(record: dict) -> dict:
    """The headline numbers: Llama-3-8B shapes, bf16 unless named, best path where there are two."""
    summary = {"gpu": torch.cuda.get_device_name(0)}
    layers = record.get("layer", [])
    if layers:
        seven = _at(layers, 0.5, "speedup", model="llama3-8b", dtype="bfloat16")
        fused = _at(layers, 0.5, "fused_speedup", model="llama3-8b", dtype="bfloat16")
        summary["layer_speedup_at_0.5"] = max(seven, fused)
        summary["layer_seven_launch_speedup_at_0.5"] = seven
        summary["layer_fused_speedup_at_0.5"] = fused
        dense0 = _at(layers, 0.0, "dense_us", model="llama3-8b", dtype="bfloat16")
        best0 = min(_at(layers, 0.0, k, model="llama3-8b", dtype="bfloat16") for k in ("sparse_us", "fused_us"))
        summary["overhead_at_0"] = round(best0 / dense0 - 1, 4)
        teal_layer = _at(layers, 0.5, "vs_teal", model="llama3-8b", dtype="float16")
        if teal_layer is not None:
            summary["vs_teal_layer_at_0.5"] = teal_layer
    llama = record.get("e2e", {}).get("llama3-8b")
    if llama:
        variants = ("sparse", "sparse-fused", "sparse-listed")
        by_variant = {v: _at(llama["rows"], 0.5, "speedup", variant=v) for v in variants}
        by_variant = {v: x for v, x in by_variant.items() if x is not None}  # listed: on demand
        summary["e2e_speedup_at_0.5"] = max(by_variant.values())
        summary["e2e_seven_launch_speedup_at_0.5"] = by_variant["sparse"]
        summary["e2e_fused_speedup_at_0.5"] = by_variant["sparse-fused"]
        if "sparse-listed" in by_variant:
            summary["e2e_listed_speedup_at_0.5"] = by_variant["sparse-listed"]
        summary["e2e_bound_at_0.5"] = _at(llama["rows"], 0.5, "bound", variant="sparse")
        hf = _at(llama["rows"], 0.0, "dense_vs_this", variant="hf-generate")
        if hf is not None:
            summary["e2e_dense_vs_hf_generate"] = hf  # > 1: the dense baseline is the faster
        summary["e2e_overhead_at_0"] = round(
            min(1 / _at(llama["rows"], 0.0, "speedup", variant=v) for v in by_variant) - 1, 4
        )
    teal_e2e = record.get("e2e", {}).get("llama3-8b-fp16-teal")
    if teal_e2e:
        summary["e2e_fused_vs_teal_at_0.5"] = _at(teal_e2e["rows"], 0.5, "sponlib_fused_vs_teal", variant="teal")
    gemvs = record.get("gemv", [])
    if gemvs:
        summary["gemv_overhead_at_0_max"] = round(
            max(
                r["sparse_us"] / r["dense_us"] - 1 for r in gemvs if r["sparsity"] == 0.0 and r["model"] == "llama3-8b"
            ),
            4,
        )
        vs_teal = [r["vs_teal"] for r in gemvs if "vs_teal" in r and r["sparsity"] == 0.5 and r["model"] == "llama3-8b"]
        if vs_teal:
            summary["vs_teal_min_at_0.5"] = min(vs_teal)
    return summary


def merge_runs(earlier: list[dict], run: dict) -> list[dict]:
    """The record's runs once `run` has made its parts_done: an earlier run stays while any part it
    made is still its own, redone by no run after it (a run cut short replaces nothing it did not
    redo)."""
    runs, redone = [run], set(run.get("parts_done", []))
    for r in reversed(earlier):
        made = set(r.get("parts_done", r["parts"]))
        if not made <= redone:
            runs.insert(0, r)
        redone |= made
    return runs


def _run_parts(parts: list[str], args, record: dict, save) -> None:
    """Each part in turn, the record saved after each, so that an interrupted run keeps what it measured."""
    teal = None
    if args.teal and {"gemv", "layer", "e2e-teal"} & set(parts):
        from teal_contender import TealKernels

        teal = TealKernels(args.teal)
        record["teal"] = teal.provenance
    dtypes = (torch.bfloat16, torch.float16) if teal is not None else (torch.bfloat16,)
    if "ceilings" in parts:
        record["ceilings"] = ceilings()
        print(f"copy bandwidth {record['ceilings']['copy_GBps']} GB/s", flush=True)
        save("ceilings")
    if "limits" in parts:
        record["limits"] = {
            "compacted": compacted_ceilings([s for s in sweep_shapes() if s[0] == "llama3-8b"]),
            "gather": gather_efficiency(),
        }
        save("limits")
    if "sweep" in parts:
        models = args.sweep_models.split(",") if args.sweep_models else None
        variants = args.sweep_variants.split(",") if args.sweep_variants else VARIANTS
        record["sweep"] = sweep(
            args.write_configs, models, on_shape=lambda rows: record.update(sweep=rows) or save(""), variants=variants
        )
        save("sweep")
    if "listed" in parts:
        record["listed"] = listed()
        save("listed")
    if "gemv" in parts:
        record["gemv"] = gemv(dtypes=dtypes, teal=teal)
        save("gemv")
    if "layer" in parts:
        record["layer"] = layer(dtypes=dtypes, teal=teal)
        save("layer")
    if "e2e-llama" in parts:
        record.setdefault("e2e", {})["llama3-8b"] = e2e_llama(tokens=args.tokens, listed=args.e2e_listed)
        save("e2e-llama")
    if "e2e-teal" in parts:
        from kernel_e2e import e2e_teal

        record.setdefault("e2e", {})["llama3-8b-fp16-teal"] = e2e_teal(teal, tokens=args.tokens)
        save("e2e-teal")
    if "e2e-smollm2" in parts:
        record.setdefault("e2e", {})["smollm2-135m"] = e2e_smollm2(tokens=args.tokens)
        save("e2e-smollm2")


def build_parser() -> argparse.ArgumentParser:
    """This benchmark's command line (tests parse the commands of its records with it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated, from {', '.join(PARTS + ON_DEMAND)}"
    )
    parser.add_argument("--json", required=True, help="record to write; parts already in it are kept unless rerun")
    parser.add_argument("--tokens", type=int, default=256, help="decoding steps timed per variant")
    parser.add_argument(
        "--e2e-listed",
        action="store_true",
        help="with e2e-llama: also decode with listing norms feeding the fused groups (sponlib.kernels.listing)",
    )
    parser.add_argument("--teal", metavar="PATH", help="a TEAL checkout: time its kernel beside ours, in float16")
    parser.add_argument("--sweep-models", help="with the sweep: only these models' shapes (llama3-8b, smollm2-135m)")
    parser.add_argument(
        "--sweep-variants",
        help=f"with the sweep: only these loop variants in stage 1 ({', '.join(VARIANTS)}; default all); the"
        " shipped table's row competes too",
    )
    parser.add_argument(
        "--write-configs",
        action="store_true",
        help="with the sweep: write the fastest tiles to sponlib/kernels/configs/<gpu>.json",
    )
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    parts = args.parts.split(",")
    unknown = set(parts) - set(PARTS) - set(ON_DEMAND)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}")
    if "e2e-teal" in parts and not args.teal:
        parser.error("the e2e-teal part needs --teal PATH (a TEAL checkout)")
    if args.sweep_variants and set(args.sweep_variants.split(",")) - set(VARIANTS):
        parser.error(f"unknown sweep variants in {args.sweep_variants!r}; choose from {', '.join(VARIANTS)}")
    if not torch.cuda.is_available():
        print("kernels_h200.py: no CUDA device; this benchmark needs a GPU (the CPU one is sparse_gemv_cpu.py)")
        raise SystemExit(0)
    path = Path(args.json)
    previous = json.loads(path.read_text()) if path.is_file() else {}
    record = {k: previous[k] for k in SECTIONS if k in previous and k != "summary"}
    import triton

    run = {
        "parts": parts,
        "command": " ".join(["python", *os.sys.argv]),
        "triton": triton.__version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0),
        "device": device_record("cuda"),
        "versions": library_versions(),
        "dtype": str(DTYPE),
    }
    started = time.perf_counter()
    earlier_runs = record.get("runs", [])

    def save(done: str) -> None:
        run["elapsed_s"] = round(time.perf_counter() - started, 1)
        run["parts_done"] = run.get("parts_done", []) + ([done] if done else [])  # "": a part's progress
        record["runs"] = merge_runs(earlier_runs, run)
        record["summary"] = summarise(record)
        write_result(path, "kernels", {k: record[k] for k in SECTIONS if k in record}, device="cuda", dtype=DTYPE)

    _run_parts(parts, args, record, save)
    print(json.dumps(record["summary"], indent=1))


if __name__ == "__main__":
    main()
