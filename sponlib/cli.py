"""Command line: `python -m sponlib <command>`, one sub-command per stage.

    prepare    convert and cache a known model (done on first use anyway)
    corpora    list the named corpora
    calibrate  statistics of every projection input, from which thresholds are read
    eval       perplexity on corpora or text files, dense or sparsified, optionally as JSON
    sweep      perplexity dense and for each mask rule at each level (data/results/sparsity_sweep.json)
    readme     regenerate the README's result tables from data/results/

Errors sponlib raises on purpose print as one line (exit status 2), without a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time

from .calibration import PROTOCOL_LEVELS
from .errors import SponlibError


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m",
                   help="known name, local Hugging Face folder or hub id (default: smollm2-135m)")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")


def _add_text_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("text (at least one; each is evaluated separately)")
    g.add_argument("--corpus", action="append", default=[], metavar="NAME",
                   help="named corpus (see `python -m sponlib corpora`); repeatable")
    g.add_argument("--text-file", action="append", default=[], metavar="PATH",
                   help="UTF-8 text file, .txt or .txt.gz; repeatable")
    g.add_argument("--hf-dataset", metavar="PATH", help="datasets id or local folder (needs the hub for ids)")
    g.add_argument("--hf-config", default=None, help="data set configuration, e.g. wikitext-2-raw-v1")
    g.add_argument("--hf-split", default="test")
    g.add_argument("--hf-column", default="text")


def _add_window_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--windows", type=int, default=64, help="windows per text, 0 for all (default 64)")
    p.add_argument("--window-len", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed that picks the windows (default 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sponlib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="convert and cache a known model")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--force", action="store_true", help="convert again even if cached")
    p.set_defaults(run=cmd_prepare)

    p = sub.add_parser("corpora", help="list the named corpora")
    p.set_defaults(run=cmd_corpora)

    p = sub.add_parser("calibrate", help="calibrate thresholds for every projection")
    _add_model_args(p)
    _add_calibration_args(p)
    p.add_argument("--out", required=True, help="calibration file to write (.safetensors)")
    p.add_argument("--json", metavar="OUT", help="also write a record: time taken, and measured sparsity "
                   "on held-out text with and without the sparse-aware refinement")
    p.add_argument("--check-corpus", default="persuasion", help="held-out text for --json (default persuasion)")
    p.add_argument("--check-windows", type=int, default=4, help="held-out windows for --json (default 4)")
    p.set_defaults(run=cmd_calibrate)

    p = sub.add_parser("eval", help="perplexity over non-overlapping windows, dense or sparsified")
    _add_model_args(p)
    _add_text_args(p)
    _add_window_args(p)
    p.add_argument("--sparsity", type=float, help="target sparsity in [0, 1); omit for the dense model")
    p.add_argument("--method", default="teal", help="mask rule: teal (default), wina, greedy, greedy-wina")
    p.add_argument("--calibration", metavar="FILE",
                   help="calibration file; calibrated first (and written there) if missing")
    _add_calibration_args(p, prefix="calib-")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default 4)")
    p.add_argument("--json", metavar="OUT", help="write the result record here (atomically)")
    p.set_defaults(run=cmd_eval)

    p = sub.add_parser("sweep", help="perplexity dense and for each mask rule at each level")
    _add_model_args(p)
    _add_text_args(p)
    _add_window_args(p)
    p.add_argument("--levels", type=_floats, default=PROTOCOL_LEVELS, help="comma-separated targets")
    p.add_argument("--methods", type=lambda text: text.split(","), default=["teal", "wina", "greedy"],
                   help="comma-separated mask rules (default teal,wina,greedy)")
    p.add_argument("--calibration", metavar="FILE", required=True,
                   help="calibration file; made (with greedy allocations) and written there if missing")
    _add_calibration_args(p, prefix="calib-")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--json", metavar="OUT", required=True)
    p.set_defaults(run=cmd_sweep)

    p = sub.add_parser("readme", help="regenerate the README's result tables from data/results/")
    p.add_argument("--readme", default="README.md")
    p.add_argument("--check", action="store_true", help="fail if the README is out of date instead of writing")
    p.set_defaults(run=cmd_readme)
    return parser


def cmd_prepare(args) -> None:
    from .models import prepare_model

    print(prepare_model(args.model, force=args.force))


def cmd_corpora(args) -> None:
    from .data import corpus_names, load_corpus

    for name in corpus_names():
        source = load_corpus(name)
        span = "" if source.span == (0.0, 1.0) else f"  tokens {source.span[0]:.0%}-{source.span[1]:.0%}"
        print(f"{name:28s} {len(source.files):2d} file(s){span}")


def text_sources(args) -> list:
    """The TextSources named on the command line, in order; an error if there are none."""
    from .data import hub_dataset, load_corpus, text_file

    sources = [load_corpus(n) for n in args.corpus] + [text_file(p) for p in args.text_file]
    if args.hf_dataset:
        sources.append(hub_dataset(args.hf_dataset, args.hf_config, args.hf_split, args.hf_column))
    if not sources:
        raise SponlibError("name some text: --corpus NAME, --text-file PATH or --hf-dataset PATH")
    return sources


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


def _add_calibration_args(p: argparse.ArgumentParser, prefix: str = "") -> None:
    g = p.add_argument_group("calibration (text is never the test novel)")
    g.add_argument(f"--{prefix}corpus", default="austen-train", help="calibration corpus (default austen-train)")
    g.add_argument(f"--{prefix}windows", type=int, default=64, help="windows for statistics (default 64)")
    g.add_argument(f"--{prefix}window-len", type=int, default=512, help="tokens per window (default 512)")
    g.add_argument(f"--{prefix}seed", type=int, default=0)
    g.add_argument("--refine-windows", type=int, default=8,
                   help="windows for the sparse-aware refinement, one batch (default 8)")
    g.add_argument("--refine-levels", type=_floats, default=PROTOCOL_LEVELS,
                   help="comma-separated levels refined under sparsity (default: the protocol levels)")
    g.add_argument("--greedy-windows", type=int, default=None,
                   help="windows for the greedy allocation; 0 skips it (default: 1 when a greedy rule is used)")


def _calibration_settings(args, prefix: str = "") -> dict:
    """The calibration arguments, whether they were named --corpus or --calib-corpus."""
    attr = prefix.replace("-", "_")
    settings = {key: getattr(args, attr + key) for key in ("corpus", "windows", "window_len", "seed")}
    return {**settings, "refine_windows": args.refine_windows, "refine_levels": args.refine_levels}


def _calibrate(model, tokenizer, settings: dict, greedy_windows: int, greedy_scores=None):
    from .calibration import calibrate
    from .data import load_corpus, load_windows

    windows = load_windows(load_corpus(settings["corpus"]), tokenizer, settings["window_len"],
                           settings["windows"], settings["seed"])
    meta = {"corpus": settings["corpus"], "seed": settings["seed"]}
    return calibrate(model, windows, refine_windows=settings["refine_windows"],
                     refine_levels=settings["refine_levels"], greedy_windows=greedy_windows,
                     greedy_scores=greedy_scores, meta=meta)


def _calibration_for(args, model, tokenizer, methods, prefix: str = ""):
    """Load --calibration if it exists; else calibrate (with greedy if a greedy rule is asked) and
    write it to --calibration when given."""
    import os

    from .calibration import Calibration
    from .sparsity import split_method

    if args.calibration and os.path.exists(args.calibration):
        return Calibration.load(args.calibration, model)
    greedy_scores = sorted({split_method(m)[0] for m in methods if split_method(m)[1] == "greedy"})
    greedy_windows = args.greedy_windows if args.greedy_windows is not None else (1 if greedy_scores else 0)
    print("calibrating first (save it with `python -m sponlib calibrate --out FILE` to reuse it)", file=sys.stderr)
    calibration = _calibrate(model, tokenizer, _calibration_settings(args, prefix), greedy_windows, greedy_scores)
    if args.calibration:
        calibration.save(args.calibration)
    return calibration


def _print_rows(rows: list[dict]) -> None:
    print(f"{'text':24s} {'rule':12s} {'target':>6s} {'measured':>8s} {'windows':>7s} {'tokens':>7s} {'ppl':>10s}")
    for row in rows:
        measured = f"{row['measured']:8.3f}" if "measured" in row else f"{'-':>8s}"
        print(f"{row['corpus']:24s} {row['method']:12s} {row['target']:6.2f} {measured} "
              f"{row['windows']:7d} {row['tokens']:7d} {row['ppl']:10.3f}")


def _windows_for(args, tokenizer) -> list:
    from .data import load_windows

    return [load_windows(source, tokenizer, args.window_len, args.windows, args.seed) for source in text_sources(args)]


def cmd_calibrate(args) -> None:
    from .models import load_model

    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    greedy_windows = args.greedy_windows if args.greedy_windows is not None else 0
    started = time.perf_counter()
    calibration = _calibrate(model, tokenizer, _calibration_settings(args), greedy_windows)
    calibration.save(args.out)
    print(f"wrote {args.out} ({time.perf_counter() - started:.0f} s)")
    if args.json:
        from .data import load_corpus, load_windows
        from .models import resolve_device, resolve_dtype
        from .results import write_result
        from .sweep import calibration_check

        held_out = load_windows(load_corpus(args.check_corpus), tokenizer, args.window_len, args.check_windows,
                                args.seed)
        rows = calibration_check(model, calibration, held_out, args.refine_levels)
        payload = {"calibration": calibration.meta, "check": held_out.describe(), "tolerance": 0.02,
                   "results": rows}
        write_result(args.json, "calibration", payload, model=model, device=resolve_device(args.device),
                     dtype=resolve_dtype(args.dtype))
        print(f"wrote {args.json}")


def cmd_eval(args) -> None:
    from .models import load_model, resolve_device, resolve_dtype
    from .results import write_result
    from .sparsity import check_sparsity, split_method
    from .sweep import evaluate

    text_sources(args)  # checked before the model loads: bad input fails fast
    if args.sparsity is not None:
        check_sparsity(args.sparsity)
        split_method(args.method)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    thresholds = None
    if args.sparsity is not None:
        calibration = _calibration_for(args, model, tokenizer, [args.method], prefix="calib-")
        thresholds = calibration.thresholds(args.sparsity, args.method)
    started = time.perf_counter()
    rows = evaluate(model, _windows_for(args, tokenizer), thresholds, args.batch_size)
    _print_rows(rows)
    if args.json:
        payload = {"windows": args.windows, "window_len": args.window_len, "seed": args.seed,
                   "batch_size": args.batch_size, "elapsed_s": round(time.perf_counter() - started, 2)}
        if thresholds is not None:
            payload.update(method=args.method, sparsity=args.sparsity, calibration=thresholds.calibration)
        write_result(args.json, "perplexity", {**payload, "results": rows}, model=model,
                     device=resolve_device(args.device), dtype=resolve_dtype(args.dtype))
        print(f"wrote {args.json}")


def cmd_sweep(args) -> None:
    from .models import load_model, resolve_device, resolve_dtype
    from .results import write_result
    from .sparsity import check_sparsity, split_method
    from .sweep import sweep

    text_sources(args)
    for level in args.levels:
        check_sparsity(level)
    for method in args.methods:
        split_method(method)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    calibration = _calibration_for(args, model, tokenizer, args.methods, prefix="calib-")
    windows_list = _windows_for(args, tokenizer)
    payload = sweep(model, calibration, windows_list, args.levels, args.methods, args.batch_size)
    _print_rows(payload["results"])
    record = {"windows": args.windows, "window_len": args.window_len, "seed": args.seed,
              "batch_size": args.batch_size, "calibration": calibration.meta, **payload}
    write_result(args.json, "sparsity_sweep", record, model=model, device=resolve_device(args.device),
                 dtype=resolve_dtype(args.dtype))
    print(f"wrote {args.json}")


def cmd_readme(args) -> None:
    from .report import update_readme

    changed = update_readme(args.readme, check=args.check)
    if args.check and changed:
        raise SponlibError(f"{args.readme} is out of date with data/results/; run `python -m sponlib readme`")
    print(f"{args.readme}: {'updated' if changed else 'up to date'}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except SponlibError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
    return 0
