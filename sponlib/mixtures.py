"""Training mixtures: windows drawn from several text sources at once.

SPON trained on one text adapts to that text; trained on a mixture of kinds of text it repairs the
mask more evenly (docs/protocol.md, the genre protocol). A mixture is named by joining sources with
"+", each a named corpus of sponlib.data or a path to a text file:

    austen-train+brown-train          Austen plus the training genres of Brown
    austen-train+notes/my_corpus.txt  Austen plus your own text

`mixture_windows` takes an equal share of the windows from each source (the first sources take
one more when the count does not split evenly), each share picked with the seed as
`load_windows` picks them, so a mixture of one source is exactly that source's windows.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .data import TextSource, Windows, corpus_names, load_corpus, load_windows, text_file
from .errors import DataError

SEPARATOR = "+"


def source_from_name(name: str) -> TextSource:
    """A named corpus, or a text file when `name` is a path to one."""
    if name in corpus_names():
        return load_corpus(name)
    if os.sep in name or name.endswith((".txt", ".txt.gz")) or Path(name).is_file():
        return text_file(name)
    return load_corpus(name)  # its error lists the named corpora


def parse_sources(spec: str) -> list[TextSource]:
    """`spec` is one source or several joined by "+"; each named once."""
    names = [part.strip() for part in spec.split(SEPARATOR)]
    if not all(names):
        raise DataError(f"empty source in {spec!r}: join named corpora or text files with '+', e.g. a+b")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"{', '.join(repeated)} named twice in {spec!r}; name each source once")
    return [source_from_name(name) for name in names]


def mixture_windows(
    sources: list[TextSource],
    tokenizer,
    window_len: int,
    n_windows: int,
    seed: int = 0,
    stride: int | None = None,
) -> Windows:
    """`n_windows` windows, an equal share from each source, in source order. Origins name the
    source too ("austen-train/emma"), so that where a window came from stays visible."""
    if not sources:
        raise DataError("a mixture needs at least one source")
    if len(sources) == 1:
        return load_windows(sources[0], tokenizer, window_len, n_windows, seed, stride)
    if n_windows < len(sources):
        raise DataError(f"{n_windows} windows cannot be shared among {len(sources)} sources; ask for more")
    share, extra = divmod(n_windows, len(sources))
    parts = [
        load_windows(source, tokenizer, window_len, share + (i < extra), seed, stride)
        for i, source in enumerate(sources)
    ]
    return Windows(
        torch.cat([p.ids for p in parts]),  # (N, L)
        [(f"{p.source}/{doc}", offset) for p in parts for doc, offset in p.origins],
        SEPARATOR.join(p.source for p in parts),
        window_len,
        seed,
        sum(p.available for p in parts),
        parts[0].stride,
        parts[0].bos,
    )
