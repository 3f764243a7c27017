"""`prepare` and `corpora`: the model cache and the named texts."""

from __future__ import annotations

import argparse

from ..experiments import protocol
from ..models.gguf import KNOWN_MODELS


def known_model(name: str) -> str:
    """A name of sponlib.models.gguf.KNOWN_MODELS, the only models `prepare` converts."""
    if name not in KNOWN_MODELS:
        raise argparse.ArgumentTypeError(
            f"{name!r} is not a known model. Known names: {', '.join(known_model.allowed)}"
        )
    return name


known_model.allowed = tuple(sorted(KNOWN_MODELS))


def add_commands(sub) -> None:
    p = sub.add_parser("prepare", help="convert and cache a known model")
    p.add_argument(
        "--model",
        type=known_model,
        default=protocol.MODEL,
        help=f"known model to convert: {', '.join(known_model.allowed)} (default %(default)s)",
    )
    p.add_argument("--force", action="store_true", help="convert again even if cached")
    p.set_defaults(run=cmd_prepare)

    p = sub.add_parser("corpora", help="list the named corpora")
    p.set_defaults(run=cmd_corpora)


def cmd_prepare(args) -> None:
    from ..models.gguf import prepare_model

    print(prepare_model(args.model, force=args.force))


def cmd_corpora(args) -> None:
    from ..data import corpus_names, load_corpus

    for name in corpus_names():
        source = load_corpus(name)
        span = "" if source.span == (0.0, 1.0) else f"  tokens {source.span[0]:.0%}-{source.span[1]:.0%}"
        print(f"{name:28s} {len(source.files):2d} file(s){span}")
