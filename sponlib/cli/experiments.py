"""The experiments that write this project's records: `sweep`, `recovery`, `analyze` (alias
`analyse`), `generalize` (alias `generalise`) and `tasks` (sponlib.experiments)."""

from __future__ import annotations

import time

from ..data import load_corpus, load_windows
from ..experiments import protocol
from ..experiments.generalization import generalization
from ..experiments.recovery import RecoveryRun, check_experiments, protocol_experiments
from ..experiments.representation import run_analysis
from ..experiments.sweep import sweep
from ..experiments.tasks import TaskSizes, run_family
from ..models.loading import load_model
from ..paths import data_dir
from ..sparsity.rules import METHODS, check_sparsity, split_method
from . import options
from .evaluate import print_rows
from .inputs import (
    calibration_for,
    print_table,
    text_sources,
    train_config,
    trained,
    training_text,
    windows_of,
    write_record,
)

# The experiment groups of the recovery record, as the protocol makes them: levels, rules, roles, data.
RECOVERY_GROUPS = tuple(dict.fromkeys(e.group for e in protocol_experiments()))


def add_commands(sub) -> None:
    for add in (_add_recovery, _add_sweep, _add_analyze, _add_generalize, _add_tasks):
        add(sub)


def _add_recovery(sub) -> None:
    p = sub.add_parser("recovery", help="SPON recovery across levels, mask rules and ablations")
    options.add_model(p)
    p.add_argument(
        "--levels",
        type=options.floats,
        default=protocol.LEVELS,
        help=f"comma-separated teal levels (default {options.joined(protocol.LEVELS)})",
    )
    p.add_argument(
        "--only",
        type=options.one_or_more(RECOVERY_GROUPS, "experiment group"),
        default=None,
        metavar="GROUP,...",
        help=f"comma-separated experiment groups to run, of {','.join(RECOVERY_GROUPS)} (default all)",
    )
    p.add_argument(
        "--test-corpus",
        action="append",
        default=None,
        metavar="NAME",
        help="in-domain then out-of-domain test text (default {})".format(", ".join(protocol.TEST_TEXTS)),
    )
    options.add_windows(p)
    p.add_argument("--calibration", metavar="FILE", help="calibration file (default: the shipped one)")
    options.add_calibration(p, prefix="calib-")
    options.add_training(p)
    p.add_argument(
        "--tune-lrs",
        type=options.floats,
        default=(),
        help="comma-separated learning rates to try first on validation KL (teal 0.5); the best is used for every run "
        "(default: none, --lr)",
    )
    p.add_argument(
        "--tune-steps", type=int, default=100, help="optimiser steps of each --tune-lrs trial (default %(default)s)"
    )
    p.add_argument("--artifacts", default=None, help="folder for the teal vectors (default data/artifacts/<model>)")
    p.add_argument("--json", required=True, metavar="OUT", help="the record to write (and resume)")
    p.set_defaults(run=cmd_recovery)


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="perplexity dense and for each mask rule at each level")
    options.add_model(p)
    options.add_text(p)
    options.add_windows(p)
    p.add_argument(
        "--levels",
        type=options.floats,
        default=protocol.SWEEP_LEVELS,
        help=f"comma-separated target sparsities (default {options.joined(protocol.SWEEP_LEVELS)})",
    )
    p.add_argument(
        "--methods",
        "--method",  # the spelling of eval and train, which take one rule
        dest="methods",
        type=options.one_or_more(METHODS, "mask rule"),
        default=list(protocol.SWEEP_RULES),
        metavar="RULE,...",
        help=f"comma-separated mask rules, of {','.join(METHODS)} (default {','.join(protocol.SWEEP_RULES)})",
    )
    p.add_argument(
        "--calibration",
        metavar="FILE",
        required=True,
        help="calibration file; made (with greedy allocations) and written there if missing",
    )
    options.add_calibration(p, prefix="calib-")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default %(default)s)")
    p.add_argument("--json", metavar="OUT", required=True, help="the record to write")
    p.set_defaults(run=cmd_sweep)


def _add_analyze(sub) -> None:
    p = sub.add_parser(
        "analyze",
        aliases=["analyse"],  # the British spelling of earlier command lines
        help="layer-by-layer comparison of dense, masked and SPON (drift, CKA, KL)",
    )
    p.set_defaults(command="analyze")  # args.command is the canonical name whichever spelling was typed
    options.add_model(p)
    text = protocol.IN_DOMAIN_TEXT
    p.add_argument("--corpus", default=text, help=f"text to analyze (default {text})")
    options.add_windows(p, windows=8, seed_of="the windows and the token sample")
    options.add_trained(p)
    p.add_argument("--main-level", type=float, default=0.5, help="level of the heatmaps and PCA (default 0.5)")
    p.add_argument("--max-tokens", type=int, default=2048, help="tokens compared per variant (default 2048)")
    p.add_argument(
        "--lens-tokens", type=int, default=512, help="tokens of the logit lens, spread over the windows (default 512)"
    )
    p.add_argument("--json", required=True, help="where to write the record")
    p.set_defaults(run=cmd_analyze)


def _add_generalize(sub) -> None:
    p = sub.add_parser(
        "generalize", aliases=["generalise"], help="shipped SPON vectors on many texts: recovery per Brown genre"
    )
    p.set_defaults(command="generalize")
    options.add_model(p)
    p.add_argument(
        "--corpus",
        action="append",
        default=[],
        metavar="NAME",
        help="text to evaluate, the in-domain one first; repeatable (default: persuasion and every brown-<genre>)",
    )
    options.add_windows(p, windows=32)
    options.add_trained(p)
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default %(default)s)")
    p.add_argument("--json", required=True, help="where to write the record")
    p.set_defaults(run=cmd_generalize)


def _add_tasks(sub) -> None:
    p = sub.add_parser("tasks", help="task accuracy, knowledge and generation drift: dense, masked and SPON")
    options.add_model(p)
    options.add_trained(p)
    sizes = TaskSizes()
    p.add_argument(
        "--cloze", type=int, default=sizes.cloze, help=f"cloze passages per held-out text (default {sizes.cloze})"
    )
    p.add_argument(
        "--choice",
        type=int,
        default=sizes.choice,
        help=f"next-sentence choices per held-out text (default {sizes.choice})",
    )
    p.add_argument(
        "--drift", type=int, default=sizes.drift, help=f"generation prompts per held-out text (default {sizes.drift})"
    )
    p.add_argument("--seed", type=int, default=sizes.seed, help=f"seed that picks the examples (default {sizes.seed})")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (default %(default)s)")
    p.add_argument(
        "--json",
        required=True,  # no default: a run must name its record, so none overwrites a committed one by accident
        metavar="OUT",
        help="record to write or extend, e.g. data/results/tasks.json; other families in it are kept",
    )
    p.set_defaults(run=cmd_tasks)


def cmd_recovery(args) -> None:
    from ..artifacts import model_name

    experiments = protocol_experiments(args.levels)
    if args.only:
        groups = set(args.only)
        experiments = [e for e in experiments if e.group in groups]
    config = train_config(args)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    calibration = calibration_for(args, model, tokenizer, sorted({e.method for e in experiments}))
    check_experiments(experiments, calibration)
    train_windows, val_windows = training_text(args, tokenizer)
    for count in sorted({e.train_windows for e in experiments if e.train_windows} | {args.train_windows}):
        train_windows(count)  # too little training text fails now, not after hours
    tests = windows_of(args, tokenizer, [load_corpus(name) for name in (args.test_corpus or protocol.TEST_TEXTS)])
    artifacts = args.artifacts or str(data_dir() / "artifacts" / (model_name(model) or "model"))
    run = RecoveryRun(
        model,
        calibration,
        tests,
        train_windows,
        val_windows,
        config,
        args.json,
        artifacts,
        tune_lrs=args.tune_lrs,
        tune_steps=args.tune_steps,
    )
    if args.tune_lrs:
        print(f"learning rate {run.learning_rate():g} (lowest validation KL of {', '.join(map(str, args.tune_lrs))})")
    for experiment in experiments:
        row = run.run(experiment)
        texts = "  ".join(
            f"{c}: {t['ppl_dense']:.2f}/{t['ppl_masked']:.2f}/{t['ppl_spon']:.2f}" for c, t in row["texts"].items()
        )
        print(
            f"{row['name']:28s} recovery in {_fmt(row['recovery_in'])} out {_fmt(row['recovery_out'])}  {texts}",
            flush=True,
        )
    print(f"wrote {args.json}")


def _fmt(value) -> str:
    return "   -  " if value is None else f"{value:6.3f}"


def cmd_sweep(args) -> None:
    sources = text_sources(args)
    for level in args.levels:
        check_sparsity(level)
    for method in args.methods:
        split_method(method)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    calibration = calibration_for(args, model, tokenizer, args.methods)
    payload = sweep(
        model, calibration, windows_of(args, tokenizer, sources), args.levels, args.methods, args.batch_size
    )
    print_rows(payload["results"])
    record = {
        "windows": args.windows,
        "window_len": args.window_len,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "calibration": calibration.meta,
        **payload,
    }
    write_record(args, "sparsity_sweep", record, model)
    print(f"wrote {args.json}")


def cmd_analyze(args) -> None:
    split_method(args.method)
    source = load_corpus(args.corpus)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    spon, calibration, provenance = trained(args, model)
    windows = load_windows(source, tokenizer, args.window_len, args.windows, args.seed)
    payload = run_analysis(
        model,
        windows.ids,
        calibration,
        spon,
        rule=args.method,
        main_level=args.main_level,
        max_tokens=args.max_tokens,
        lens_tokens=args.lens_tokens,
        seed=args.seed,
    )
    payload = {"windows": windows.describe(), **provenance, **payload}
    write_record(args, "representation_analysis", payload, model)
    s = payload["summary"]
    rows = [[m, f"{s[m]['masked']:9.4f}", f"{s[m]['spon']:9.4f}"] for m in payload["metric_order"]]
    print_table([("metric (distance from dense, mean over layers)", 48), ("masked", -9), ("SPON", -9)], rows)
    print(f"wrote {args.json}")


def cmd_generalize(args) -> None:
    split_method(args.method)
    sources = [load_corpus(name) for name in (args.corpus or protocol.GENERALIZATION_TEXTS)]  # fail before the model
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    spon, calibration, provenance = trained(args, model)
    texts = windows_of(args, tokenizer, sources)
    started = time.perf_counter()
    payload = generalization(model, calibration, texts, spon, rule=args.method, batch_size=args.batch_size)
    payload = {**provenance, "elapsed_s": round(time.perf_counter() - started, 1), **payload}
    write_record(args, "spon_generalization", payload, model)
    columns = [("text", 26), ("level", -5), ("dense", -8), ("masked", -9), ("SPON", -9), ("recovery", -9)]
    print_table(
        columns,
        [
            [
                r["text"],
                f"{r['level']:g}",
                f"{r['ppl_dense']:.2f}",
                f"{r['ppl_masked']:.2f}",
                f"{r['ppl_spon']:.2f}",
                "-" if r["recovery"] is None else f"{r['recovery']:.3f}",
            ]
            for r in payload["rows"]
        ],
    )
    print(f"wrote {args.json}")


def cmd_tasks(args) -> None:
    split_method(args.method)
    sizes = TaskSizes(cloze=args.cloze, choice=args.choice, drift=args.drift, seed=args.seed)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    spon, calibration, provenance = trained(args, model)
    entry = run_family(
        args.json, model, tokenizer, calibration, spon, sorted(spon), args.method, sizes, args.batch_size, provenance
    )
    columns = [("task", 30), ("level", -5), ("dense", -7), ("masked", -7), ("SPON", -7), ("recovery", -9)]
    print_table(
        columns,
        [
            [
                f"{r['task']}/{r['source']}/{r['metric']}",
                f"{r['level']:g}",
                f"{r['dense']['value']:.3f}",
                f"{r['masked']['value']:.3f}",
                f"{r['spon']['value']:.3f}",
                "-" if r["recovery"] is None else f"{r['recovery']:.2f}",
            ]
            for r in entry["summary"]
        ],
    )
    print(f"wrote {args.json}")
