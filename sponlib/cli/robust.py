"""`robust`: the robust-SPON record (sponlib.experiments.robust): training recipes side by side on
the genre protocol, the winner at every level behind the safeguard, and SPON between levels."""

from __future__ import annotations

from pathlib import Path

from ..artifacts import model_name
from ..experiments import protocol
from ..experiments.genres import EXTRA_RECIPES, RECIPES, genre_texts, recipe_named
from ..experiments.robust import RobustRun
from ..experiments.robust_record import robust_summary, tested
from ..models.loading import load_model
from ..paths import data_dir
from ..spon.config import TrainConfig
from . import options
from .inputs import calibration_for


def add_commands(sub) -> None:
    d = TrainConfig()
    p = sub.add_parser("robust", help="robust SPON: recipes side by side on held-out genres, the winner at every level")
    options.add_genre_run(p)
    p.add_argument(
        "--recipes",
        type=options.one_or_more([r.name for r in RECIPES + EXTRA_RECIPES], "recipe"),
        default=[r.name for r in RECIPES],
        metavar="RECIPE,...",
        help=f"comma-separated recipes of the ablation (default: {', '.join(r.name for r in RECIPES)}; "
        f"also {', '.join(r.name for r in EXTRA_RECIPES)})",
    )
    p.add_argument(
        "--levels",
        type=options.floats,
        default=protocol.LEVELS,
        help=f"comma-separated levels of the final recipe (default {options.joined(protocol.LEVELS)})",
    )
    p.add_argument(
        "--checks",
        type=options.floats,
        default=protocol.INTERPOLATION_CHECKS,
        help="comma-separated levels where interpolated SPON is checked against vectors trained there "
        f"(default {options.joined(protocol.INTERPOLATION_CHECKS)}; '' for none)",
    )
    p.add_argument("--micro-batch", type=int, default=0, help="windows per forward pass (default: the whole batch)")
    options.add_precision(p, d.precision)
    p.add_argument(
        "--work",
        default="runs/spon_robust",
        help="folder for every trained vector set, resumed from (default %(default)s)",
    )
    p.add_argument("--artifacts", default=None, help="folder for the final vectors (default data/artifacts/<model>)")
    p.add_argument("--no-artifacts", action="store_true", help="keep the final vectors in --work only")
    p.add_argument(
        "--stop-after",
        choices=("ablation", "final"),
        default=None,
        help="stop after the recipe ablation, or after the final recipe at every level (default: run every part)",
    )
    p.add_argument("--json", required=True, metavar="OUT", help="the record to write (and resume)")
    p.set_defaults(run=cmd_robust)


def cmd_robust(args) -> None:
    recipes = tuple(recipe_named(name) for name in args.recipes)  # unknown names fail before the model loads
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.train_batch,
        micro_batch=args.micro_batch,
        lr=args.lr,
        precision=args.precision,
        checkpoint_every=50,
    )
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    calibration = calibration_for(args, model, tokenizer, ["teal"])
    texts = genre_texts(tokenizer, args.windows, args.window_len, args.seed, args.train_windows, recipes=recipes)
    artifacts = None if args.no_artifacts else Path(args.artifacts or data_dir() / "artifacts" / model_name(model))
    run = RobustRun(
        model,
        calibration,
        texts,
        config,
        args.json,
        Path(args.work),
        artifacts,
        recipes=recipes,
        levels=args.levels,
        checks=args.checks,
    )
    run.run_ablation()
    _print_ablation(run.record)
    if args.stop_after == "ablation":
        run.write()  # also when every entry was resumed: --json names where the record goes
        print(f"wrote {args.json}")
        return
    winner = run.choose()
    print(f"chosen on validation: {winner.name}")
    final = run.run_final(winner)
    if args.stop_after != "final":
        run.run_interpolation(winner, final)
        run.run_diagnosis(winner)
    run.write()
    for level, row in robust_summary(run.record).items():
        print(
            f"{level:>5}  in {_fmt(row['recovery_in'])}  held-out min {_fmt(row['recovery_heldout_min'])} "
            f"median {_fmt(row['recovery_heldout_median'])}  worse than mask on {row['worse_than_mask']}  "
            f"γ {row['gamma']:g}"
        )
    print(f"wrote {args.json}")


def _fmt(value) -> str:
    return "  -  " if value is None else f"{value:.3f}"


def _print_ablation(record: dict) -> None:
    for entry in record["ablation"]:
        result = tested(entry["rows"])
        print(
            f"{entry['recipe']:26s} {entry['level']:>5}  γ {entry['gamma']:.1f}  "
            f"validation {_fmt(entry['rows'][0]['recovery'])}  in {_fmt(result['recovery_in'])}  "
            f"held-out min {_fmt(result['recovery_heldout_min'])}  worse on {result['worse_than_mask']}",
            flush=True,
        )
