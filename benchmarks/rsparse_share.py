"""How rsparse's byte budget is best split between kept channels and the low-rank part of W, on
validation text (never a test text): the masked model's perplexity at each share ρ of the plain
mask's bytes given to the low-rank factors (ρ = 0 is the plain teal mask).

    python benchmarks/rsparse_share.py --json data/results/rsparse_share_cpu.json

The comparisons record fixed ρ = 0.1 before it ran (docs/comparisons.md); this shows where that
choice sits. Masks only, no SPON: the split decides what the mask keeps, SPON comes after.
"""

from __future__ import annotations

import argparse
import math

import torch

from sponlib.artifacts import shipped_calibration
from sponlib.data import load_corpus, load_windows
from sponlib.experiments import protocol
from sponlib.models import load_model
from sponlib.models.likelihood import window_nlls
from sponlib.records import write_result
from sponlib.sparsity import Sparsifier


def build_parser() -> argparse.ArgumentParser:
    """This benchmark's command line (tests parse the commands of its records with it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=protocol.MODEL, help=f"model (default {protocol.MODEL})")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--text", default=protocol.ROBUST_VALIDATION_TEXT, help="validation text (default brown-val)")
    parser.add_argument("--windows", type=int, default=8, help="windows of 512 tokens (default 8)")
    parser.add_argument("--levels", default="0.5,0.7", help="comma-separated levels (default 0.5,0.7)")
    parser.add_argument("--shares", default="0,0.05,0.1,0.2,0.3", help="comma-separated shares ρ")
    parser.add_argument("--json", required=True, metavar="OUT", help="the record to write")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    torch.set_num_threads(2)
    model, tokenizer = load_model(args.model, dtype="float32", device=args.device)
    calibration = shipped_calibration(model)
    windows = load_windows(load_corpus(args.text), tokenizer, protocol.WINDOW_LEN, args.windows, protocol.SEED)
    dense = math.exp(window_nlls(model, windows, 4, progress=False).mean())
    rows = []
    print(f"dense perplexity on {windows.source}: {dense:.2f}\nlevel  share  channels dropped  perplexity")
    for level in (float(v) for v in args.levels.split(",")):
        for share in (float(v) for v in args.shares.split(",")):
            thresholds = calibration.thresholds(level, "rsparse", low_rank_share=share)
            with Sparsifier(model, thresholds) as sparsifier:
                ppl = math.exp(window_nlls(model, windows, 4, progress=False).mean())
            dropped = sparsifier.summary()["weighted"]
            rows.append({"level": level, "share": share, "channels_dropped": dropped, "perplexity": ppl})
            print(f"{level:5g}  {share:5g}  {dropped:16.3f}  {ppl:10.2f}", flush=True)
    write_result(
        args.json,
        "rsparse_share",
        {"text": windows.describe(), "dense_perplexity": dense, "rows": rows},
        model=model,
        device=torch.device(args.device),
        dtype=torch.float32,
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
