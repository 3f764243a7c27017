"""Benchmark: SPON training and evaluation beyond one GPU, side by side in one run.

    python benchmarks/multigpu.py --json data/results/multigpu.json

Needs a machine with at least two CUDA GPUs (it says so and stops otherwise). At every global
batch size it runs `python -m sponlib train` with the same settings, data and thresholds as

    1 GPU        one process on one GPU (torchrun --nproc_per_node 1)
    2 GPUs, DP   two data-parallel processes, one GPU each (torchrun --nproc_per_node 2)
    2 GPUs, map  one process, the model spread over both GPUs (--device-map balanced)

then `python -m sponlib eval` of the 1-GPU vectors on one and on two processes. Throughput is what
each run's own record measured over its optimiser steps (training tokens/s, the teacher cache
and the validations apart); the vectors of every run are compared with those of the 1-GPU run.
Keep NCCL's NVLink multicast off where the machine asks for it (NCCL_NVLS_ENABLE=0): the
variables are passed on to every process and recorded.
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

from sponlib.results import write_result
from sponlib.spon import SponVectors

NCCL_VARIABLES = ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS")
SETUPS = {  # name -> (launcher processes or None for a plain process, extra sponlib arguments)
    "1 GPU": (1, ["--device", "cuda"]),
    "2 GPUs, DP": (2, ["--device", "cuda"]),
    "2 GPUs, map": (None, ["--device-map", "balanced"]),
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
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "sponlib", *args]
    started = time.perf_counter()
    with open(log, "w") as out:
        run = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, text=True)
    if run.returncode:
        sys.exit(f"failed ({run.returncode}): {' '.join(command)}\n{log.read_text()[-4000:]}")
    return time.perf_counter() - started


def vector_difference(a: SponVectors, b: SponVectors) -> dict:
    """How far two trainings' vectors are apart: the largest entry-wise difference, and relative
    to the largest entry."""
    largest = max(v.abs().max().item() for v in a.alphas.values())
    gap = max((a.alphas[n] - b.alphas[n]).abs().max().item() for n in a.alphas)
    return {"max_abs": gap, "relative": gap / largest}


def topology() -> dict:
    """How the GPUs are linked, as the driver reports it."""
    record = {"peer_access": torch.cuda.can_device_access_peer(0, 1)}
    try:
        record["nvidia_smi_topo"] = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True,
                                                   timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--batches", default="32,64", help="comma-separated global batch sizes (windows per step)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3, help="as the shipped vectors were trained")
    parser.add_argument("--eval-windows", type=int, default=0, help="Persuasion windows evaluated (0: all)")
    parser.add_argument("--work", default=None, help="folder for the runs' files (default: a temporary one)")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()

    if torch.cuda.device_count() < 2:
        print(f"benchmarks/multigpu.py needs two CUDA GPUs; this machine shows {torch.cuda.device_count()}. "
              "Nothing measured.")
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="sponlib-multigpu-"))
    work.mkdir(parents=True, exist_ok=True)
    common = ["train", "--model", args.model, "--sparsity", str(args.sparsity), "--steps", str(args.steps),
              "--lr", str(args.lr), "--eval-every", str(max(1, args.steps // 2)), "--checkpoint-every", "0"]
    rows, evaluations = [], []
    context = {"sparsity": args.sparsity, "method": "teal", "steps": args.steps, "lr": args.lr,
               "gpus": [torch.cuda.get_device_name(i) for i in range(2)],
               "environment": {k: os.environ.get(k) for k in NCCL_VARIABLES}, "topology": topology()}

    def save() -> None:
        """The record so far (a run cut short keeps what it measured)."""
        first = reference[0]
        payload = {"model": reference[3], **context, "window_len": first["window_len"],
                   "train_windows": first["train_windows"], "seed": first["seed"], "precision": first["precision"],
                   "training": rows, "evaluation": evaluations,
                   "speedup_vs_1gpu": {f"{r['setup']} b{r['batch']}": round(r["speedup_vs_1gpu"], 3) for r in rows}}
        write_result(args.json, "multigpu", payload, device=torch.device("cuda", 0), dtype=torch.float32)

    print(f"{'setup':12s} {'batch':>5s} {'tokens/s':>9s} {'speed-up':>8s} {'teacher s':>9s} {'wall s':>7s} "
          f"{'val KL best':>11s} {'max|Δα|':>9s}")
    for batch in [int(b) for b in args.batches.split(",")]:
        reference = None
        for setup, (processes, extra) in SETUPS.items():
            name = f"{setup.replace(' ', '').replace(',', '-')}-b{batch}"
            out, record_path = work / f"{name}.safetensors", work / f"{name}.json"
            wall = launch(processes, [*common, "--train-batch", str(batch), *extra, "--out", str(out),
                                      "--json", str(record_path)], work / f"{name}.log")
            record = json.loads(record_path.read_text())
            training, vectors = record["training"], SponVectors.load(out)
            reference = reference or (training, vectors, out, record["model"])
            row = {"setup": setup, "batch": batch, "processes": training["processes"],
                   "placement": training["placement"], "tokens_per_s": training["tokens_per_s"],
                   "speedup_vs_1gpu": training["tokens_per_s"] / reference[0]["tokens_per_s"],
                   "train_s": training["train_s"], "teacher_s": training["teacher_s"], "val_s": training["val_s"],
                   "wall_s": round(wall, 1), "val_kl_base": training["val_kl_base"],
                   "val_kl_best": training["val_kl_best"], "best_step": training["best_step"],
                   "vs_1gpu": vector_difference(reference[1], vectors)}
            rows.append(row)
            save()
            print(f"{setup:12s} {batch:5d} {row['tokens_per_s']:9.0f} {row['speedup_vs_1gpu']:8.2f} "
                  f"{row['teacher_s']:9.1f} {wall:7.1f} {row['val_kl_best']:11.4f} {row['vs_1gpu']['max_abs']:9.2e}")

    spon = reference[2]  # the 1-GPU vectors of the last batch size
    for processes in (1, 2):
        record_path = work / f"eval-{processes}.json"
        wall = launch(processes, ["eval", "--model", args.model, "--device", "cuda", "--corpus", "persuasion",
                                  "--windows", str(args.eval_windows), "--spon", str(spon), "--batch-size", "16",
                                  "--json", str(record_path)], work / f"eval-{processes}.log")
        record = json.loads(record_path.read_text())
        [result] = record["results"]
        evaluations.append({"processes": processes, "ppl": result["ppl"], "measured": result["measured"],
                            "windows": result["windows"], "elapsed_s": record["elapsed_s"], "wall_s": round(wall, 1)})
        print(f"eval on {processes} process(es): ppl {result['ppl']:.4f} over {result['windows']} windows, "
              f"{record['elapsed_s']:.1f} s")
        save()
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
