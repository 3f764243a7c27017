"""The genre protocol's splits: named, seeded, disjoint by genre and novel, and no test window's
text anywhere in the training or validation text; training mixtures and text without `datasets`."""

import builtins

import numpy as np
import pytest
import torch

from sponlib.data import BROWN_GENRES, TEST_GENRES, TRAIN_GENRES, VALIDATION_GENRES, load_corpus, tokenize_source
from sponlib.errors import DataError
from sponlib.experiments import protocol
from sponlib.experiments.genres import RECIPES, genre_texts
from sponlib.mixtures import mixture_windows, parse_sources

SHINGLE = 24  # tokens: a shared run this long would be shared text, not a common phrase


def test_genres_split_brown_into_three_disjoint_sets():
    parts = [set(TRAIN_GENRES), set(VALIDATION_GENRES), set(TEST_GENRES)]
    assert sum(map(len, parts)) == len(BROWN_GENRES) == len(set().union(*parts))
    files = {name: {f.name for f in load_corpus(name).files} for name in ("brown-train", "brown-val", "brown-test")}
    assert not files["brown-train"] & files["brown-val"] and not files["brown-test"] & (
        files["brown-train"] | files["brown-val"]
    )


def _shingles(ids: np.ndarray) -> set[bytes]:
    view = np.lib.stride_tricks.sliding_window_view(ids, SHINGLE)  # (n, SHINGLE)
    return {row.tobytes() for row in view}


@pytest.mark.slow
def test_no_test_window_appears_in_training_or_validation_text(default_tokenizer):
    texts = genre_texts(default_tokenizer, windows=16, train_windows=64)
    # every token of every training and validation text, not only the windows picked from them
    names = {*(spec for r in RECIPES for spec in (r.train, r.select)), protocol.ROBUST_VALIDATION_TEXT}
    seen: set[bytes] = set()
    for source in {s.name: s for name in names for s in parse_sources(name)}.values():
        for stream in tokenize_source(source, default_tokenizer):
            seen |= _shingles(stream.ids)
    used = {
        doc.split("/")[-1]
        for w in [*texts.train.values(), *texts.select.values(), texts.validation]
        for doc, _ in w.origins
    }
    for windows in texts.tests:
        assert not {doc for doc, _ in windows.origins} & used, windows.source
        for row in windows.ids.numpy():
            assert not _shingles(row) & seen, f"a window of {windows.source} shares {SHINGLE} tokens with training"
    # ... and the check can fail: a training window is found in the training text
    assert _shingles(texts.train[protocol.ROBUST_TRAIN_TEXTS[1]].ids[0].numpy()) & seen


def test_a_mixture_shares_windows_evenly_and_is_seeded(byte_tokenizer):
    sources = parse_sources("austen-persuasion+brown-humor")
    a = mixture_windows(sources, byte_tokenizer, 64, 9, seed=3)
    b = mixture_windows(sources, byte_tokenizer, 64, 9, seed=3)
    assert torch.equal(a.ids, b.ids) and a.source == "austen-persuasion+brown-humor"
    assert [doc.split("/")[0] for doc, _ in a.origins] == ["austen-persuasion"] * 5 + ["brown-humor"] * 4
    one = mixture_windows(sources[:1], byte_tokenizer, 64, 5, seed=3)
    assert torch.equal(one.ids, a.ids[:5])  # a mixture of one source is that source


def test_mixture_names_are_checked(tmp_path):
    with pytest.raises(DataError, match="named twice"):
        parse_sources("persuasion+persuasion")
    with pytest.raises(DataError, match="empty source"):
        parse_sources("persuasion+")
    with pytest.raises(DataError, match="unknown corpus"):
        parse_sources("persuasion+no-such-corpus")
    own = tmp_path / "notes.txt"
    own.write_text("some text of my own " * 50)
    assert [s.name for s in parse_sources(f"persuasion+{own}")] == ["persuasion", "notes"]


def test_text_files_read_the_same_without_datasets(monkeypatch):
    source = load_corpus("brown-humor")
    with_datasets = source.documents()
    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("no datasets here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    assert source.documents() == with_datasets
