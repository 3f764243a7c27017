"""`comparisons`: SPON on five mask rules and weight pruning at the same sparsity, side by side
(sponlib.experiments.comparisons; record data/results/comparisons.json).

Parts can run in parallel processes on one GPU, each resuming from the work folder:
    python -m sponlib comparisons --device cuda --parts larosa --json data/results/comparisons.json
    ... one per rule, and --parts pruning; then --parts record assembles the record.
Side by side, give each process OMP_NUM_THREADS = cores / processes (docs/comparisons.md), and
make every larosa level on one machine: its rotations' digest follows the machine's rounding.
"""

from __future__ import annotations

from pathlib import Path

from ..experiments import protocol
from ..experiments.comparisons import RECIPE, RULES, Comparisons, rule_record_path
from ..experiments.genres import genre_texts, recipe_named
from ..models.loading import load_model
from ..sparsity.rotation import ROTATION_WINDOWS, text_rotations
from ..spon.config import TrainConfig
from . import options
from .inputs import calibration_for

PARTS = (*RULES, "pruning", "record")


def add_commands(sub) -> None:
    p = sub.add_parser(
        "comparisons", help="SPON on five mask rules, and Wanda/SparseGPT pruning at the same sparsity, side by side"
    )
    options.add_genre_run(p)
    p.add_argument(
        "--parts",
        type=options.one_or_more(PARTS, "part"),
        default=list(PARTS),
        metavar="PART,...",
        help=f"comma-separated parts to run (default all: {', '.join(PARTS)})",
    )
    p.add_argument(
        "--levels",
        type=options.floats,
        default=protocol.LEVELS,
        help=f"comma-separated protocol levels (default {options.joined(protocol.LEVELS)})",
    )
    p.add_argument(
        "--rotation-windows",
        type=int,
        default=ROTATION_WINDOWS,
        help="calibration windows for larosa's PCA (default %(default)s)",
    )
    p.add_argument(
        "--prune-windows",
        type=int,
        default=128,
        help="training windows Wanda and SparseGPT calibrate on (default %(default)s)",
    )
    p.add_argument(
        "--work", default="runs/comparisons", help="folder of every part's results, resumed from (default %(default)s)"
    )
    p.add_argument("--json", required=True, metavar="OUT", help="the record to write")
    p.set_defaults(run=cmd_comparisons)


def cmd_comparisons(args) -> None:
    recipe = recipe_named(RECIPE)
    config = TrainConfig(steps=args.steps, batch_size=args.train_batch, lr=args.lr, checkpoint_every=50)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    calibration = calibration_for(args, model, tokenizer, ["greedy"])
    texts = genre_texts(tokenizer, args.windows, args.window_len, args.seed, args.train_windows, recipes=(recipe,))
    rotations = None
    # A dense pass over calibration text, only where larosa's cells are made or assembled from this
    # work folder; larosa's cells carried from an earlier record keep that record's rotations.
    larosa_done = rule_record_path(args.work, "larosa").exists()
    if "larosa" in args.parts or ("record" in args.parts and larosa_done):
        corpus = calibration.meta.get("corpus", protocol.CALIBRATION_TEXT)
        rotations = text_rotations(model, tokenizer, corpus, args.rotation_windows, args.window_len, args.seed)
    run = Comparisons(
        model,
        calibration,
        texts,
        config,
        args.json,
        Path(args.work),
        rotations,
        levels=tuple(args.levels),
        batch_size=args.batch_size,
        settings={"prune_windows": args.prune_windows},
    )
    run.note_command([part for part in args.parts if part != "record"])
    for part in args.parts:
        if part in RULES:
            run.run_rule(part)
        elif part == "pruning":
            run.run_pruning(args.prune_windows)
    if "record" in args.parts:
        record = run.write()
        if run.refused:
            print(f"kept nothing of the record already at {args.json}: {run.refused}")
        elif run.carried:
            print(f"kept from the record already at {args.json}: {', '.join(run.carried)}")
        if run.left_out:
            print(f"left out of the record already at {args.json}: {run.left_out}")
        for rule, levels in record["summary"]["rules"].items():
            for level, row in levels.items():
                print(
                    f"{rule:8s} {level:>5}  sparsity {_fmt(row['sparsity'])}  in {_fmt(row['recovery_in'])}  "
                    f"held-out min {_fmt(row['recovery_heldout_min'])}  worse on {row['worse_than_mask']}"
                )
        for name, row in record["summary"]["pruning"].items():
            print(f"{name:14s} ppl in {_fmt(row['ppl_in'])}  teal+SPON {_fmt(row['ppl_teal_spon_in'])}")
        print(f"wrote {args.json}")


def _fmt(value) -> str:
    return "  -  " if value is None else f"{value:.3f}"
