"""`prepare` and `corpora`: the model cache and the named texts."""

from __future__ import annotations

from ..experiments import protocol


def add_commands(sub) -> None:
    p = sub.add_parser("prepare", help="convert and cache a known model")
    p.add_argument("--model", default=protocol.MODEL)
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
