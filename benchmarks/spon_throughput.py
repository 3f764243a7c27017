"""Benchmark: SPON training throughput (training tokens/s), sponlib's loop against a plain
hook-based loop, side by side in one run on one device.

    python benchmarks/spon_throughput.py --device cuda --json data/results/spon_throughput_h200.json
    python benchmarks/spon_throughput.py --device cpu --steps 3 --batches 1 --json data/results/spon_throughput_cpu.json

sponlib (`sponlib.spon.train_spon`): dense teacher states computed once per window, frozen
weights, bf16 autocast on CUDA, loss read back every few steps. The plain loop is what one writes
first: the dense teacher runs a full forward pass for every batch, float32, the loss is read
back every step. Both sparsify with the same thresholds and train the same vectors. Only the
training steps are timed (the teacher cache and validation are reported apart).
"""

from __future__ import annotations

import argparse
import time

import torch

from sponlib.data import load_corpus, load_windows
from sponlib.models import load_model, resolve_device
from sponlib.records import write_result
from sponlib.sparsity import Calibration, Sparsifier
from sponlib.spon import SponVectors, TrainConfig, kl_to_teacher, train_spon


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(model, thresholds, ids: torch.Tensor, batch_size: int, steps: int, lr: float) -> float:
    """Tokens/s of a straightforward loop: dense teacher forward every step, fp32, sync every step."""
    device = next(model.parameters()).device
    alphas = {n: a.requires_grad_(True) for n, a in SponVectors.zeros(model).alphas.items()}
    optimizer = torch.optim.AdamW(alphas.values(), lr=lr)
    timed, tokens = 0.0, 0
    for step in range(steps + 1):  # step 0 warms up and is not timed
        batch = ids[(step * batch_size) % len(ids) :][:batch_size].to(device)  # (B, L)
        _sync(device)
        started = time.perf_counter()
        with torch.no_grad():
            teacher = model(input_ids=batch, use_cache=False).logits  # (B, L, V)
        with Sparsifier(model, thresholds, check=False, alphas=alphas, count=False):
            student = model(input_ids=batch, use_cache=False).logits  # (B, L, V)
        loss = kl_to_teacher(student, teacher)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        if step:
            timed += time.perf_counter() - started
            tokens += batch.numel()
    return tokens / timed


def build_parser() -> argparse.ArgumentParser:
    """This benchmark's command line (tests parse the commands of its records with it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--calibration", default="data/artifacts/smollm2-135m/calibration.safetensors")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--window-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per configuration")
    parser.add_argument("--batches", default="8,16,32", help="comma-separated windows per step")
    parser.add_argument("--precisions", default=None, help="comma-separated; default bf16,fp32 on CUDA, fp32 on CPU")
    parser.add_argument("--json", required=True)
    return parser


def main() -> None:
    args = build_parser().parse_args()

    device = resolve_device(args.device)
    model, tokenizer = load_model(args.model, device=device)
    thresholds = Calibration.load(args.calibration, model).thresholds(args.sparsity, "teal")
    batches = [int(b) for b in args.batches.split(",")]
    precisions = (args.precisions or ("bf16,fp32" if device.type == "cuda" else "fp32")).split(",")
    windows = load_windows(load_corpus("austen-train"), tokenizer, args.window_len, max(batches) * 4, 0, stride=128)
    val = load_windows(load_corpus("austen-val"), tokenizer, args.window_len, 4, 0)
    rows = []
    print(f"{'loop':10s} {'precision':9s} {'batch':>5s} {'tokens/step':>11s} {'tokens/s':>10s} {'vs plain':>8s}")
    for batch in batches:
        plain = plain_loop(model, thresholds, windows.ids, batch, max(2, args.steps // 3), 1e-3)
        rows.append({"loop": "plain", "precision": "fp32", "batch": batch, "tokens_per_s": round(plain, 1)})
        print(f"{'plain':10s} {'fp32':9s} {batch:5d} {batch * args.window_len:11d} {plain:10.0f} {1.0:8.2f}")
        for precision in precisions:
            config = TrainConfig(
                steps=args.steps, batch_size=batch, precision=precision, eval_every=args.steps, checkpoint_every=0
            )
            vectors, _ = train_spon(model, thresholds, windows.ids, val.ids, config, progress=False)
            t = vectors.meta["training"]
            rows.append(
                {
                    "loop": "sponlib",
                    "precision": precision,
                    "batch": batch,
                    "tokens_per_s": t["tokens_per_s"],
                    "teacher_s": t["teacher_s"],
                    "train_s": t["train_s"],
                    "speedup_vs_plain": t["tokens_per_s"] / plain,
                }
            )
            print(
                f"{'sponlib':10s} {precision:9s} {batch:5d} {batch * args.window_len:11d} {t['tokens_per_s']:10.0f} "
                f"{t['tokens_per_s'] / plain:8.2f}"
            )
    best = max((r for r in rows if r["loop"] == "sponlib"), key=lambda r: r["tokens_per_s"])
    write_result(
        args.json,
        "spon_throughput",
        {
            "sparsity": args.sparsity,
            "method": "teal",
            "window_len": args.window_len,
            "steps": args.steps,
            "results": rows,
            "summary": {
                "best_tokens_per_s": best["tokens_per_s"],
                "best_batch": best["batch"],
                "best_precision": best["precision"],
                "speedup_vs_plain": best["speedup_vs_plain"],
            },
        },
        model=model,
        device=device,
        dtype=torch.float32,
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
