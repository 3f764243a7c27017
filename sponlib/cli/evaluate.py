"""`calibrate` and `eval`: thresholds for every projection, and perplexity under a mask."""

from __future__ import annotations

import sys
import time

from ..distributed import Replicas
from ..experiments.sweep import calibration_check
from ..models.loading import resolve_dtype
from ..models.placement import input_device
from ..perplexity import evaluate
from ..records import write_result
from ..sparsity.rules import METHODS
from . import options
from .inputs import (
    calibrate_from,
    load_placed,
    mask_request,
    placement_payload,
    print_table,
    resolve,
    text_sources,
    windows_of,
)


def add_commands(sub) -> None:
    p = sub.add_parser("calibrate", help="calibrate thresholds for every projection")
    options.add_model(p)
    options.add_placement(p)
    options.add_calibration(p)
    p.add_argument("--out", required=True, help="calibration file to write (.safetensors)")
    p.add_argument(
        "--json",
        metavar="OUT",
        help="also write a record: time taken, and measured sparsity "
        "on held-out text with and without the sparse-aware refinement",
    )
    p.add_argument("--check-corpus", default="persuasion", help="held-out text for --json (default persuasion)")
    p.add_argument("--check-windows", type=int, default=4, help="held-out windows for --json (default 4)")
    p.set_defaults(run=cmd_calibrate)

    p = sub.add_parser("eval", help="perplexity over non-overlapping windows, dense or sparsified")
    options.add_model(p)
    options.add_placement(p)
    options.add_text(p)
    options.add_windows(p)
    p.add_argument("--sparsity", type=float, help="target sparsity in [0, 1); omit for the dense model")
    p.add_argument(
        "--method",
        default=None,
        choices=METHODS,
        help="mask rule (default teal); larosa makes its rotations from the calibration text, rsparse "
        "adds a low-rank part for the bytes its mask saves (docs/comparisons.md)",
    )
    p.add_argument(
        "--calibration",
        metavar="FILE",
        help="calibration file; calibrated first (and written there) if missing "
        "(default: the one shipped in data/artifacts/ for a known model)",
    )
    p.add_argument(
        "--spon",
        metavar="FILE|shipped",
        help="SPON vectors (their thresholds come with them; --sparsity and --method, if given, must agree), "
        "or `shipped` for the vectors shipped for a known model at --sparsity, interpolated between shipped levels",
    )
    p.add_argument(
        "--thresholds",
        metavar="FILE",
        help="a thresholds file instead of a calibration, e.g. the sparsity_thresholds.json of an exported SPON model",
    )
    options.add_calibration(p, prefix="calib-")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default 4)")
    p.add_argument("--json", metavar="OUT", help="write the result record here (atomically)")
    p.set_defaults(run=cmd_eval, data_parallel=True)


def cmd_calibrate(args) -> None:
    from ..data import load_corpus, load_windows

    replicas = Replicas()  # one process (main refuses data-parallel launch for this command)
    model, tokenizer = load_placed(args, replicas)
    greedy_windows = args.greedy_windows if args.greedy_windows is not None else 0
    started = time.perf_counter()
    calibration = calibrate_from(args, model, tokenizer, greedy_windows)
    calibration.save(args.out)
    print(f"wrote {args.out} ({time.perf_counter() - started:.0f} s)")
    if args.json:
        held_out = load_windows(
            load_corpus(args.check_corpus), tokenizer, args.window_len, args.check_windows, args.seed
        )
        rows = calibration_check(model, calibration, held_out, args.refine_levels)
        payload = {
            "calibration": calibration.meta,
            "check": held_out.describe(),
            "tolerance": 0.02,
            "results": rows,
            **placement_payload(model, replicas),
        }
        write_result(
            args.json, "calibration", payload, model=model, device=input_device(model), dtype=resolve_dtype(args.dtype)
        )
        print(f"wrote {args.json}")


def print_rows(rows: list[dict]) -> None:
    """Perplexity rows of `evaluate`, one line each."""
    columns = [
        ("text", 24),
        ("rule", 12),
        ("target", -6),
        ("measured", -8),
        ("windows", -7),
        ("tokens", -7),
        ("ppl", -10),
    ]
    print_table(
        columns,
        [
            [
                row["corpus"],
                row["method"] + ("+spon" if row.get("spon") else ""),
                f"{row['target']:6.2f}",
                f"{row['measured']:8.3f}" if "measured" in row else "-",
                str(row["windows"]),
                str(row["tokens"]),
                f"{row['ppl']:10.3f}",
            ]
            for row in rows
        ],
    )


def interpolation_note(mask) -> str:
    """One line on SPON vectors interpolated between trained levels (sponlib.spon.levels)."""
    lo, hi = mask.source["spon_interpolated"]["between"]
    if lo == 0:  # below the lowest trained level: towards no vectors at level 0
        return f"SPON at {mask.sparsity:g}: interpolated between α = 0 at level 0 and the vectors trained at {hi:g}"
    return f"SPON at {mask.sparsity:g}: interpolated between the vectors trained at {lo:g} and {hi:g}"


def safeguard_summary(args, spon) -> dict | None:
    """What the safeguard of the applied SPON file decided (None when it did not run); a warning on
    stderr when it refused the vectors."""
    guard = None if spon is None else spon.meta.get("safeguard")
    if not guard:
        return None
    text = guard.get("text", {}).get("source", "?")
    if guard.get("refused"):
        print(
            f"warning: the safeguard refused the SPON vectors of {args.spon} on {text}: they are zero, so this is the "
            "plain mask (train again, e.g. on a broader mixture)",
            file=sys.stderr,
        )
    return {
        "gamma": guard.get("gamma"),
        "refused": guard.get("refused"),
        "text": text,
        "interval": guard.get("interval"),
    }


def cmd_eval(args) -> None:
    sources = text_sources(args)  # checked before the model loads: bad input fails fast
    request = mask_request(args)
    with Replicas.from_environment(args.device) as replicas:
        model, tokenizer = load_placed(args, replicas)
        mask = resolve(args, request, model, tokenizer, replicas)
        interpolated = mask.source.get("spon_interpolated")
        if interpolated and replicas.is_main:
            print(interpolation_note(mask))
        started = time.perf_counter()
        rows = evaluate(
            model,
            windows_of(args, tokenizer, sources),
            mask.thresholds,
            args.batch_size,
            spon=mask.spon,
            replicas=replicas,
            progress=replicas.is_main,
        )
        if not replicas.is_main:
            return
        guard = safeguard_summary(args, mask.spon)
        print_rows(rows)
        if args.json:
            payload = {
                "windows": args.windows,
                "window_len": args.window_len,
                "seed": args.seed,
                "batch_size": args.batch_size,
                "elapsed_s": round(time.perf_counter() - started, 2),
                **placement_payload(model, replicas),
            }
            if not mask.dense:
                payload.update(method=mask.rule, sparsity=mask.sparsity, calibration=mask.thresholds.calibration)
            if args.spon:
                payload.update(spon=args.spon)
            if guard:
                payload.update(safeguard=guard)
            if interpolated:  # which vectors were blended, and how
                payload.update(mask.source)
            if args.thresholds:
                payload.update(thresholds=args.thresholds)
            write_result(
                args.json,
                "perplexity",
                {**payload, "results": rows},
                model=model,
                device=input_device(model),
                dtype=resolve_dtype(args.dtype),
            )
            print(f"wrote {args.json}")
