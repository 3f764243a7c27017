"""Command line: `python -m sponlib <command>`, one sub-command per stage.

    prepare   convert and cache a known model (done on first use anyway)
    corpora   list the named corpora
    eval      perplexity of a model on corpora or text files, optionally written as JSON
    readme    regenerate the README's result tables from data/results/

Errors sponlib raises on purpose print as one line (exit status 2), without a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time

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

    p = sub.add_parser("eval", help="perplexity over non-overlapping windows")
    _add_model_args(p)
    _add_text_args(p)
    _add_window_args(p)
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default 4)")
    p.add_argument("--json", metavar="OUT", help="write the result record here (atomically)")
    p.set_defaults(run=cmd_eval)

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


def cmd_eval(args) -> None:
    from .data import load_windows
    from .models import load_model, resolve_device, resolve_dtype
    from .perplexity import perplexity
    from .results import write_result

    sources = text_sources(args)  # checked before the model loads: bad input fails fast
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    rows = []
    started = time.perf_counter()
    for source in sources:
        windows = load_windows(source, tokenizer, args.window_len, args.windows, args.seed)
        result = perplexity(model, windows, batch_size=args.batch_size, desc=source.name)
        rows.append({"corpus": source.name, "source": source.describe(),
                     "available_windows": windows.available, **result.as_dict()})
    elapsed = time.perf_counter() - started
    print(f"{'text':28s} {'windows':>7s} {'tokens':>8s} {'ppl':>10s}")
    for row in rows:
        print(f"{row['corpus']:28s} {row['windows']:7d} {row['tokens']:8d} {row['ppl']:10.3f}")
    if args.json:
        payload = {"windows": args.windows, "window_len": args.window_len, "seed": args.seed,
                   "batch_size": args.batch_size, "elapsed_s": round(elapsed, 2), "results": rows}
        write_result(args.json, "perplexity", payload, model=model,
                     device=resolve_device(args.device), dtype=resolve_dtype(args.dtype))
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
    return 0
