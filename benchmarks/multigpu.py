"""Benchmark: SPON training and evaluation beyond one GPU, side by side in one run.

    python benchmarks/multigpu.py --json data/results/multigpu.json
    python benchmarks/multigpu.py --section agreement --json data/results/multigpu_agreement.json

Needs a machine with at least two CUDA GPUs (it says so and stops otherwise). It runs
`python -m sponlib train` with the same settings, data and thresholds as

    1 GPU          one process on one GPU (torchrun --nproc_per_node 1)
    1 GPU again    the same once more: how far two identical runs land apart on a GPU
    1 GPU, halves  one GPU, each step's batch in two micro-batches: the very passes that the two
                   data-parallel processes make (--setups to choose; not in the default set)
    2 GPUs, DP     two data-parallel processes, one GPU each (torchrun --nproc_per_node 2)
    2 GPUs, map    one process, the model spread over both GPUs (--device-map balanced)

Section `scaling` (the default): the default training (bf16 autocast, thresholds refitted under
the vectors) at each global batch size. Throughput is what each run's own record measured over
its optimiser steps (training tokens/s; the teacher cache and validations apart). Section
`agreement`: float32 with fixed thresholds, where the runs can only differ by the order of
floating-point operations; then `eval` of the 1-GPU vectors on one process, on one process with
half the batch (how much batch composition alone moves the result) and on two. Every run's
vectors are compared with the first run's. NCCL's NVLink multicast stays off where the machine asks for
it (NCCL_NVLS_ENABLE=0): the variables pass on to every process and are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sponlib.records import write_result
from sponlib.spon import SponVectors

NCCL_VARIABLES = ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS")
SETUPS = {  # key -> (label, launcher processes or None for a plain process, extra sponlib arguments)
    "1gpu": ("1 GPU", 1, ["--device", "cuda"]),
    "1gpu-again": ("1 GPU again", 1, ["--device", "cuda"]),
    "1gpu-halves": ("1 GPU, halves", 1, ["--device", "cuda", "--micro-batch", "HALF"]),
    "dp": ("2 GPUs, DP", 2, ["--device", "cuda"]),
    "map": ("2 GPUs, map", None, ["--device-map", "balanced"]),
}
DEFAULT_SETUPS = "1gpu,1gpu-again,dp,map"
SECTIONS = {  # name -> extra training arguments
    "scaling": [],
    "agreement": ["--precision", "fp32", "--no-track-sparsity"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(processes: int | None, args: list[str], log: Path) -> float:
    """Run `python -m sponlib ARGS` under torchrun with `processes` (None: one plain process);
    returns the wall-clock seconds; the output goes to `log`."""
    command = [sys.executable, "-m", "sponlib", *args]
    if processes is not None:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(processes),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            "-m",
            "sponlib",
            *args,
        ]
    started = time.perf_counter()
    with open(log, "w") as out:
        run = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, text=True)
    if run.returncode:
        sys.exit(f"failed ({run.returncode}): {' '.join(command)}\n{log.read_text()[-4000:]}")
    return time.perf_counter() - started


def vector_difference(a: SponVectors, b: SponVectors) -> dict:
    """How far two trainings' vectors are apart: the largest entry-wise difference (and the
    largest entry), and all vectors as one: ‖b − a‖ / ‖a‖ and the cosine of their angle."""
    names = sorted(a.alphas)
    flat_a = torch.cat([a.alphas[n].double() for n in names])  # (P,)
    flat_b = torch.cat([b.alphas[n].double() for n in names])  # (P,)
    if not flat_a.any():
        sys.exit("the reference run's vectors are all zero (its best step was the plain mask): nothing to compare")
    return {
        "max_abs": (flat_b - flat_a).abs().max().item(),
        "largest": flat_a.abs().max().item(),
        "relative_l2": ((flat_b - flat_a).norm() / flat_a.norm()).item(),
        "cosine": torch.nn.functional.cosine_similarity(flat_a, flat_b, dim=0).item(),
    }


def topology() -> dict:
    """How the GPUs are linked, as the driver reports it."""
    record = {"peer_access": torch.cuda.can_device_access_peer(0, 1)}
    try:
        record["nvidia_smi_topo"] = subprocess.run(
            ["nvidia-smi", "topo", "-m"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return record


def build_parser() -> argparse.ArgumentParser:
    """This benchmark's command line (tests parse the commands of its records with it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--section", choices=SECTIONS, default="scaling")
    parser.add_argument(
        "--setups",
        default=DEFAULT_SETUPS,
        help=f"comma-separated, the first is the reference: {', '.join(SETUPS)} (default {DEFAULT_SETUPS})",
    )
    parser.add_argument("--no-eval", dest="evaluate", action="store_false", help="skip the evaluation runs")
    parser.add_argument(
        "--batches",
        default=None,
        help="comma-separated global batch sizes, windows per step (default: 32,64 for scaling, 32 for agreement)",
    )
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (default: 100 scaling, 50 agreement)")
    parser.add_argument("--lr", type=float, default=1e-3, help="as the shipped vectors were trained")
    parser.add_argument("--eval-windows", type=int, default=0, help="Persuasion windows evaluated (0: all)")
    parser.add_argument("--work", default=None, help="folder for the runs' files (default: a temporary one)")
    parser.add_argument("--json", required=True)
    return parser


def main() -> None:
    args = build_parser().parse_args()

    if torch.cuda.device_count() < 2:
        print(
            f"benchmarks/multigpu.py needs two CUDA GPUs; this machine shows {torch.cuda.device_count()}. "
            "Nothing measured."
        )
        return
    scaling = args.section == "scaling"
    setups = args.setups.split(",")
    unknown = [key for key in setups if key not in SETUPS]
    if unknown:
        sys.exit(f"unknown setups {unknown}; choose from {', '.join(SETUPS)}")
    batches = [int(b) for b in (args.batches or ("32,64" if scaling else "32")).split(",")]
    steps = args.steps or (100 if scaling else 50)
    work = Path(args.work or tempfile.mkdtemp(prefix="sponlib-multigpu-"))
    work.mkdir(parents=True, exist_ok=True)
    common = [
        "train",
        "--model",
        args.model,
        "--sparsity",
        str(args.sparsity),
        "--steps",
        str(steps),
        "--lr",
        str(args.lr),
        "--eval-every",
        str(max(1, steps // 2)),
        "--checkpoint-every",
        "0",
        *SECTIONS[args.section],
    ]
    rows, evaluations = [], []
    context = {
        "section": args.section,
        "setups": setups,
        "sparsity": args.sparsity,
        "method": "teal",
        "steps": steps,
        "lr": args.lr,
        "training_arguments": SECTIONS[args.section],
        "gpus": [torch.cuda.get_device_name(i) for i in range(2)],
        "environment": {k: os.environ.get(k) for k in NCCL_VARIABLES},
        "topology": topology(),
    }

    def save() -> None:
        """The record so far (a run cut short keeps what it measured)."""
        first = reference[0]
        payload = {
            "model": reference[3],
            **context,
            "window_len": first["window_len"],
            "train_windows": first["train_windows"],
            "seed": first["seed"],
            "precision": first["precision"],
            "training": rows,
            "evaluation": evaluations,
            "speedup_vs_1gpu": {f"{r['setup']} b{r['batch']}": round(r["speedup_vs_1gpu"], 3) for r in rows},
        }
        write_result(args.json, "multigpu", payload, device=torch.device("cuda", 0), dtype=torch.float32)

    def name_of(setup: str, batch: int) -> str:
        return f"{args.section}-{setup}-b{batch}"

    print(
        f"{'setup':12s} {'batch':>5s} {'tokens/s':>9s} {'speed-up':>8s} {'teacher s':>9s} {'wall s':>7s} "
        f"{'val KL best':>11s} {'‖Δα‖/‖α‖':>9s}"
    )
    for batch in batches:
        reference = None
        for key in setups:
            setup, processes, extra = SETUPS[key]
            extra = [str(batch // 2) if arg == "HALF" else arg for arg in extra]
            name = name_of(key, batch)
            out, record_path = work / f"{name}.safetensors", work / f"{name}.json"
            wall = launch(
                processes,
                [*common, "--train-batch", str(batch), *extra, "--out", str(out), "--json", str(record_path)],
                work / f"{name}.log",
            )
            record = json.loads(record_path.read_text())
            training, vectors = record["training"], SponVectors.load(out)
            reference = reference or (training, vectors, out, record["model"])
            row = {
                "setup": setup,
                "batch": batch,
                "processes": training["processes"],
                "placement": training["placement"],
                "tokens_per_s": training["tokens_per_s"],
                "speedup_vs_1gpu": training["tokens_per_s"] / reference[0]["tokens_per_s"],
                "train_s": training["train_s"],
                "teacher_s": training["teacher_s"],
                "val_s": training["val_s"],
                "wall_s": round(wall, 1),
                "val_kl_base": training["val_kl_base"],
                "val_kl_best": training["val_kl_best"],
                "best_step": training["best_step"],
                "vs_1gpu": vector_difference(reference[1], vectors),
            }
            rows.append(row)
            save()
            print(
                f"{setup:12s} {batch:5d} {row['tokens_per_s']:9.0f} {row['speedup_vs_1gpu']:8.2f} "
                f"{row['teacher_s']:9.1f} {wall:7.1f} {row['val_kl_best']:11.4f} "
                f"{row['vs_1gpu']['relative_l2']:9.2e}"
            )

    spon = reference[2]  # the 1-GPU vectors of the last batch size
    for processes, batch_size in ((1, 16), (1, 8), (2, 16)) if not scaling and args.evaluate else ():
        name = f"eval-{processes}p-b{batch_size}"
        wall = launch(
            processes,
            [
                "eval",
                "--model",
                args.model,
                "--device",
                "cuda",
                "--corpus",
                "persuasion",
                "--windows",
                str(args.eval_windows),
                "--spon",
                str(spon),
                "--batch-size",
                str(batch_size),
                "--json",
                str(work / f"{name}.json"),
            ],
            work / f"{name}.log",
        )
        record = json.loads((work / f"{name}.json").read_text())
        [result] = record["results"]
        first = evaluations[0] if evaluations else result
        evaluations.append(
            {
                "processes": processes,
                "batch_size": batch_size,
                "ppl": result["ppl"],
                "ppl_relative_to_first": result["ppl"] / first["ppl"] - 1,
                "measured": result["measured"],
                "windows": result["windows"],
                "elapsed_s": record["elapsed_s"],
                "wall_s": round(wall, 1),
            }
        )
        print(
            f"eval, {processes} process(es), batch {batch_size}: ppl {result['ppl']:.4f} over {result['windows']} "
            f"windows in {record['elapsed_s']:.1f} s"
        )
        save()
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
