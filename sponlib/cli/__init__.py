"""Command line: `python -m sponlib <command>`, one sub-command per stage.

    prepare    convert and cache a known model (done on first use anyway)
    corpora    list the named corpora
    calibrate  statistics of every projection input, from which thresholds are read
    eval       perplexity on corpora or text files, dense or sparsified, optionally as JSON
    train      train SPON vectors for one mask rule and level
    export     fold SPON vectors into biases and write a plain Hugging Face checkpoint
    recovery   train and evaluate SPON across levels, rules and ablations (data/results/spon_recovery.json)
    sweep      perplexity dense and for each mask rule at each level (data/results/sparsity_sweep.json)
    analyze    layer-by-layer comparison of dense, masked and SPON (drift, CKA, KL)
    generalize shipped SPON vectors on many texts: recovery per Brown genre (data/results/spon_generalization.json)
    robust     robust SPON: training recipes side by side on held-out genres, the winner at every
               level behind the safeguard (data/results/spon_robust.json)
    tasks      cloze, next-sentence choice, knowledge probe and generation drift (--json names the
               record, e.g. data/results/tasks.json)
    comparisons SPON on five mask rules and weight pruning at the same sparsity (data/results/comparisons.json)
    harness    lm-evaluation-harness tasks on a dense, masked or SPON model (optional extra `harness`)
    readme     regenerate the result tables of the README and docs/ from data/results/
    figures    export the README's figures as PNG from data/results/ (docs/figures/), through chromium

Spelling is American; the British `analyse` and `generalise` stay as aliases, and `sweep`
takes `--method` as well as `--methods`, so earlier command lines keep working.

Errors sponlib raises on purpose print as one line (exit status 2), without a traceback.

Beyond one GPU: calibrate, eval and train take --device-map (one process, the model spread over
devices by accelerate); eval and train also run as data-parallel processes under torchrun or
`accelerate launch`, where rank 0 alone prints and writes.
"""

from __future__ import annotations

import argparse
import sys

from ..distributed import launched_world_size
from ..errors import SponlibError
from . import comparisons, docs, evaluate, experiments, harness, robust, setup, spon

# One module per group of commands, each adding its own sub-parsers, in the order `--help` lists them.
GROUPS = (setup, evaluate, spon, experiments, robust, comparisons, harness, docs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sponlib", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if launched_world_size() > 1 and not getattr(args, "data_parallel", False):
            raise SponlibError(
                f"`{args.command}` runs in one process; of the commands only eval and train share "
                "their work among processes started by torchrun or accelerate launch"
            )
        args.run(args)
    except SponlibError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
    return 0
