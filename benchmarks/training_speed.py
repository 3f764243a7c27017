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
come from calibrating them on the shipped text at the protocol's window length. With
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
from sponlib.models import resolve_device
from sponlib.records import write_result
from sponlib.sparsity import calibrate
from sponlib.spon import TrainConfig

from scale_rehearsal import SHAPES, build_model, load_tokenizer, pass_sizes

VARIANTS = ("eager", "norms", "decoder")
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


def main() -> None:
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

    for variant in variants:
        started = time.perf_counter()
        modules = compiled(model, variant)
        try:
            with time_limit(args.variant_limit_s):
                rows = pass_sizes(model, mask, windows, config, device, sizes)
            result = {"sizes": rows}
        except Exception as error:  # a variant that cannot run (or not in time) is a result too
            # torch may wrap the OutOfTime raised inside a compile in an error of its own
            cause = error
            while cause is not None and not isinstance(cause, OutOfTime):
                cause = cause.__cause__ or cause.__context__
            if cause is not None:
                # (its own words: torch may have added its advice to the message)
                result = {"error": f"not finished in {args.variant_limit_s} s", "limit_s": args.variant_limit_s}
            else:
                result = {"error": f"{type(error).__name__}: {str(error)[:2000]}"}
        finally:
            uncompiled(modules)
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
