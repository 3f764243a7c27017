"""Benchmark: SPON training throughput on an 8B-shaped model as the Hugging Face layers run
eagerly, with their norms compiled, and with the whole decoder compiled, side by side in one run.

    python benchmarks/training_speed.py --shape llama3-8b --json data/results/training_speed_h200.json
    python benchmarks/training_speed.py --shape tiny --device cpu --variants eager --sizes 2 --json ...

Eager, a training step's matrix products are about half its device time; the rest is the
layers' elementwise work (float32 norms, rotary embeddings, SiLU, the masks), each op a pass
over memory. Compiling fuses it. The variants:
    eager     the model as transformers runs it
    norms     every RMSNorm module compiled (one graph, shared by all of them)
    decoder   the whole decoder compiled, the mask hooks and their thresholds traced into it
Each variant trains six steps at each windows-per-pass size (benchmarks/scale_rehearsal.py's
`pass_sizes`: steps 3 to 5 timed, so compiling is not counted there) and records its whole wall
time apart, compiling included. The weights are random (nothing is downloaded); the thresholds
come from calibrating them on the shipped text at the protocol's window length. The record
also holds the ceiling: the throughput if a step were nothing but its matrix products, each
timed alone at this step's shapes (`matmul_ceiling`), and each row's share of it; and the bf16
mask's forward and backward on a pass's widest input, compared in float32 and multiplied (as
the hooks did before) against the one hardshrink the hooks run now. With
--variant-limit-s a variant still running after that long (compiling, as a rule) is stopped and
recorded as not finished in that time.
"""

from __future__ import annotations

import argparse
import signal
import time
from contextlib import contextmanager

import torch

from sponlib.data import load_corpus, load_windows
from sponlib.experiments import protocol
from sponlib.kernels.timing import graph_time
from sponlib.models import resolve_device
from sponlib.records import write_result
from sponlib.sparsity import calibrate
from sponlib.sparsity.rules import input_scores, masked_input
from sponlib.spon import TrainConfig

from scale_rehearsal import SHAPES, build_model, load_tokenizer, pass_sizes

VARIANTS = ("eager", "norms", "decoder")
CEILING_TOKENS = 8192  # rows of the products timed for the ceiling: a pass of 16 windows
CALIBRATION_WINDOWS = 16
TRAIN_WINDOWS = 64


def compiled(model, variant: str) -> list:
    """Compile what `variant` names in place; returns the modules compiled (to undo it)."""
    torch._dynamo.reset()
    if variant == "norms":
        modules = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
    elif variant == "decoder":
        modules = [model.get_decoder()]
    else:
        modules = []
    for module in modules:
        module.compile()
    return modules


def uncompiled(modules: list) -> None:
    for module in modules:
        module._compiled_call_impl = None  # what nn.Module.compile set
    torch._dynamo.reset()


class OutOfTime(Exception):
    """A variant ran past --variant-limit-s (compiling, as a rule)."""


@contextmanager
def time_limit(seconds: int):
    """Raise OutOfTime in this (main) thread after `seconds`; 0 means no limit."""

    def expired(signum, frame):
        # again each second: a compile may catch the first one and go on
        signal.alarm(1)
        raise OutOfTime(f"not finished in {seconds} s")

    if not seconds:
        yield
        return
    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def seconds_per_call(call, device: torch.device, repeats: int = 8, graph: bool = True) -> float:
    """One call's time: replayed from a CUDA graph on a GPU (`graph`), else the mean of `repeats`
    calls in a row after one warm-up, the device synchronised around them."""
    if device.type == "cuda" and graph:
        return graph_time([call] * repeats)
    call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / repeats


def matmul_ceiling(model, device: torch.device, dtype: torch.dtype, tokens: int = CEILING_TOKENS) -> dict:
    """The throughput a training step would reach if it were nothing but its matrix products, each
    at the rate it runs alone: every projection forward (tokens, in) @ (in, out) and backward to
    its input (tokens, out) @ (out, in), no weight gradients (the weights are frozen); the head
    forward for student and teacher and backward for the student. The attention's own products
    (about 3% of the FLOPs at a 512 window) and all elementwise work are left out, so it is an
    upper bound."""
    layers = model.get_decoder().layers
    shapes: dict[tuple[int, int], int] = {}  # (in, out) -> projections of that shape in a layer
    for module in layers[0].modules():
        if isinstance(module, torch.nn.Linear):
            key = (module.in_features, module.out_features)
            shapes[key] = shapes.get(key, 0) + 1
    head = model.get_output_embeddings()

    def pair(n_in: int, n_out: int) -> tuple[float, float]:  # (forward s, backward-to-input s)
        x, w = (
            torch.randn(tokens, n_in, device=device, dtype=dtype),
            torch.randn(n_out, n_in, device=device, dtype=dtype),
        )
        dy = torch.randn(tokens, n_out, device=device, dtype=dtype)
        return seconds_per_call(lambda: x @ w.T, device), seconds_per_call(lambda: dy @ w, device)

    seconds, flops = 0.0, 0.0
    for (n_in, n_out), count in shapes.items():
        forward, backward = pair(n_in, n_out)
        seconds += len(layers) * count * (forward + backward)
        flops += len(layers) * count * 2 * (2 * tokens * n_in * n_out)
    forward, backward = pair(head.in_features, head.out_features)
    seconds += 2 * forward + backward  # student and teacher logits, the student's backward
    flops += 3 * 2 * tokens * head.in_features * head.out_features
    return {
        "tokens": tokens,
        "GFLOP_per_token": round(flops / tokens / 1e9, 3),
        "matmul_TFLOPs": round(flops / seconds / 1e12, 1),
        "tokens_per_s": round(tokens / seconds, 1),
    }


def mask_op_times(model, device: torch.device, dtype: torch.dtype, tokens: int = CEILING_TOKENS) -> dict:
    """The teal mask on the widest projection input of a pass, (tokens, intermediate), forward and
    backward, two ways: compared in float32 and multiplied (what the hooks did in bf16 before), and
    the one `hardshrink` they do now (`masked_input`). Milliseconds each."""
    width = model.config.intermediate_size
    x = torch.randn(tokens, width, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(tokens, width, device=device, dtype=dtype)
    tau = 0.6745  # the median of |N(0, 1)|: half the entries zeroed

    def step(mask):
        def call():
            out = mask(x)
            (gradient,) = torch.autograd.grad(out, x, grad)
            return gradient

        return call

    ways = {
        "compare_multiply": lambda t: t * (input_scores(t, None) > tau),
        "hardshrink": lambda t: masked_input(t, tau, None),
    }
    # autograd outside a CUDA graph: the calls are long enough that launching them costs little
    times = {name: seconds_per_call(step(way), device, repeats=10, graph=False) for name, way in ways.items()}
    return {"shape": [tokens, width], "dtype": str(dtype).removeprefix("torch.")} | {
        f"{name}_ms": round(seconds * 1e3, 3) for name, seconds in times.items()
    }


def build_parser() -> argparse.ArgumentParser:
    """This benchmark's command line (tests parse the commands of its records with it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b", help="model config (default llama3-8b)")
    parser.add_argument("--json", required=True, help="record to write (again after every variant)")
    parser.add_argument("--device", default="cuda", help="device (default cuda)")
    parser.add_argument(
        "--tokenizer",
        default=protocol.MODEL,
        help="a known model whose tokenizer cuts the text, or a folder of tokenizer files (default the default model)",
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)} (default all)"
    )
    parser.add_argument("--sizes", default="16", help="windows per pass, comma-separated (default 16)")
    parser.add_argument("--train-batch", type=int, default=32, help="windows per step (default 32)")
    parser.add_argument("--level", type=float, default=0.5, help="sparsity (default 0.5)")
    parser.add_argument(
        "--variant-limit-s",
        type=int,
        default=0,
        help="stop a variant after this many seconds, compiling included, and record that (default 0: no limit)",
    )
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    sizes = [int(size) for size in args.sizes.split(",")]
    device, dtype = resolve_device(args.device), torch.bfloat16

    tokenizer = load_tokenizer(args.tokenizer)
    model = build_model(args.shape, device, dtype)
    counts = {  # role -> (text, windows)
        "calibration": (protocol.CALIBRATION_TEXT, CALIBRATION_WINDOWS),
        protocol.VALIDATION_TEXT: (protocol.VALIDATION_TEXT, 1),
        "train": (protocol.TRAIN_TEXT, TRAIN_WINDOWS),
    }
    windows = {
        role: load_windows(load_corpus(text), tokenizer, protocol.WINDOW_LEN, count, protocol.SEED)
        for role, (text, count) in counts.items()
    }
    mask = calibrate(model, windows["calibration"], refine_levels=(args.level,)).thresholds(args.level, "teal")
    config = TrainConfig(batch_size=args.train_batch)
    record = {"shape": args.shape, "level": args.level, "train_batch": args.train_batch, "variants": {}}
    with torch.no_grad():
        record["ceiling"] = matmul_ceiling(model, device, dtype)
    record["mask_op"] = mask_op_times(model, device, dtype)
    print(f"ceiling: {record['ceiling']}\nmask: {record['mask_op']}", flush=True)

    for variant in variants:
        started = time.perf_counter()
        modules = compiled(model, variant)
        rows: list[dict] = []  # the sizes done, kept where the variant stops midway
        result: dict = {"sizes": rows}
        try:
            with time_limit(args.variant_limit_s):
                pass_sizes(model, mask, windows, config, device, sizes, rows)
        except Exception as error:  # a variant that cannot run (or not in time) is a result too
            # torch may wrap the OutOfTime raised inside a compile in an error of its own
            cause = error
            while cause is not None and not isinstance(cause, OutOfTime):
                cause = cause.__cause__ or cause.__context__
            if cause is not None:
                # (its own words: torch may have added its advice to the message)
                result |= {"error": f"not finished in {args.variant_limit_s} s", "limit_s": args.variant_limit_s}
            else:
                result["error"] = f"{type(error).__name__}: {str(error)[:2000]}"
        finally:
            uncompiled(modules)
        for row in rows:
            if "tokens_per_s" in row:
                row["of_ceiling"] = round(row["tokens_per_s"] / record["ceiling"]["tokens_per_s"], 3)
        result["wall_s"] = round(time.perf_counter() - started, 1)
        record["variants"][variant] = result
        print(f"{variant}: {result}", flush=True)
        write_result(args.json, "training-speed", record, device=device, dtype=dtype)
    eager = record["variants"].get("eager", {}).get("sizes")
    if eager:
        for variant, result in record["variants"].items():
            for row, base in zip(result.get("sizes", []), eager):
                if "tokens_per_s" in row and "tokens_per_s" in base:
                    row["vs_eager"] = round(row["tokens_per_s"] / base["tokens_per_s"], 3)
        write_result(args.json, "training-speed", record, device=device, dtype=dtype)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
