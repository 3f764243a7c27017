"""Corpora, named splits and token windows."""

import gzip
import hashlib

import numpy as np
import pytest
import torch

from sponlib.data import (
    AUSTEN_TEST_NOVEL,
    AUSTEN_TRAIN_NOVELS,
    BROWN_GENRES,
    TokenStream,
    corpus_names,
    hub_dataset,
    load_corpus,
    load_windows,
    text_file,
    token_windows,
    tokenize_source,
)
from sponlib.errors import DataError
from sponlib.paths import data_dir


def test_shipped_corpora_match_their_checksums():
    root = data_dir() / "corpora"
    listed = [line.split() for line in (root / "SHA256SUMS").read_text().splitlines()]
    assert len(listed) == len(AUSTEN_TRAIN_NOVELS) + 1 + len(BROWN_GENRES)
    for digest, name in listed:
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest, name


def test_named_splits_follow_the_protocol():
    train, test = load_corpus("austen-train"), load_corpus("persuasion")
    assert sorted(f.name for f in train.files) == sorted(f"{n}.txt.gz" for n in AUSTEN_TRAIN_NOVELS)
    assert [f.name for f in test.files] == [f"{AUSTEN_TEST_NOVEL}.txt.gz"]
    assert AUSTEN_TEST_NOVEL not in AUSTEN_TRAIN_NOVELS
    assert len(load_corpus("brown").files) == 15
    assert [f.name for f in load_corpus("brown-fiction-mystery").files] == ["l_fiction_mystery.txt.gz"]
    assert {"austen-train", "austen-val", "persuasion", "brown", "brown-humor", "austen-emma"} <= set(corpus_names())


def test_unknown_corpus_lists_the_names():
    with pytest.raises(DataError, match=r"unknown corpus 'wiki'.*austen-train.*persuasion.*brown"):
        load_corpus("wiki")


def test_held_out_novel_never_in_training_windows_and_validation_is_disjoint(default_tokenizer):
    train = load_windows(load_corpus("austen-train"), default_tokenizer, 512)  # every window
    val = load_windows(load_corpus("austen-val"), default_tokenizer, 512)
    assert {doc for doc, _ in train.origins} == set(AUSTEN_TRAIN_NOVELS)
    assert {doc for doc, _ in val.origins} == set(AUSTEN_TRAIN_NOVELS)
    # Validation windows start after the end of every training window of the same novel.
    for novel in AUSTEN_TRAIN_NOVELS:
        last_train_end = max(off for doc, off in train.origins if doc == novel) + 512
        first_val = min(off for doc, off in val.origins if doc == novel)
        assert last_train_end <= first_val
    # No training window's text appears in Persuasion: check by token content, not by name.
    persuasion = tokenize_source(load_corpus("persuasion"), default_tokenizer)[0].ids
    persuasion_windows = {tuple(persuasion[i : i + 64]) for i in range(0, len(persuasion) - 64, 64)}
    assert not any(tuple(w[:64].tolist()) in persuasion_windows for w in train.ids)
    assert len(train) > 1500 and len(val) > 60  # ~0.9 M training tokens, 5% held out


def _streams(byte_tokenizer, tmp_path, texts):
    for i, t in enumerate(texts):
        (tmp_path / f"doc{i}.txt").write_text(t)
    return [s for i in range(len(texts)) for s in tokenize_source(text_file(tmp_path / f"doc{i}.txt"), byte_tokenizer)]


def test_windows_do_not_overlap_and_are_slices_of_their_documents(byte_tokenizer, tmp_path):
    texts = ["a" * 10 + "".join(chr(65 + i % 26) for i in range(1000)), "xyz" * 300]
    streams = _streams(byte_tokenizer, tmp_path, texts)
    w = token_windows(streams, window_len=64)
    assert w.ids.shape == (1010 // 64 + 900 // 64, 64) and w.available == len(w)
    by_doc = {s.document: s.ids for s in streams}
    for row, (doc, offset) in zip(w.ids, w.origins):
        assert offset % 64 == 0
        assert torch.equal(row, torch.from_numpy(by_doc[doc][offset : offset + 64]))
    assert len(set(w.origins)) == len(w)  # distinct offsets 64 apart: no overlap


def test_window_choice_is_seeded_and_deterministic(byte_tokenizer, tmp_path):
    streams = _streams(byte_tokenizer, tmp_path, [bytes(range(256)).decode("latin-1") * 40])
    a, b = token_windows(streams, 32, 10, seed=3), token_windows(streams, 32, 10, seed=3)
    c = token_windows(streams, 32, 10, seed=4)
    assert a.origins == b.origins and torch.equal(a.ids, b.ids)
    assert a.origins != c.origins
    assert a.origins == sorted(a.origins, key=lambda o: o[1])  # kept in corpus order


def test_span_takes_a_share_of_each_document(byte_tokenizer, tmp_path):
    (tmp_path / "d.txt").write_text("0123456789" * 10)
    source = text_file(tmp_path / "d.txt")
    tail = type(source)(source.name, source.files, span=(0.9, 1.0))
    [stream] = tokenize_source(tail, byte_tokenizer)
    assert stream.offset == 90 and bytes(stream.ids.tolist()) == b"0123456789"


def test_gzip_text_files_and_local_datasets_read_the_same_way(default_tokenizer, tmp_path):
    text = "It was a bright cold day in April, and the clocks were striking thirteen. " * 20
    (tmp_path / "plain.txt").write_text(text)
    with gzip.open(tmp_path / "packed.txt.gz", "wt") as f:
        f.write(text)
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "test.csv").write_text("text\n" + "\n".join(f'"{line}"' for line in [text]) + "\n")
    plain = load_windows(text_file(tmp_path / "plain.txt"), default_tokenizer, 32)
    packed = load_windows(text_file(tmp_path / "packed.txt.gz"), default_tokenizer, 32)
    local = load_windows(hub_dataset(str(tmp_path / "ds"), split="test"), default_tokenizer, 32)
    assert torch.equal(plain.ids, packed.ids) and torch.equal(plain.ids, local.ids)
    with pytest.raises(DataError, match="no column 'body'"):
        hub_dataset(str(tmp_path / "ds"), split="test", column="body").documents()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"   \n\n  ", "is empty"),
        (b"\xff\xfe\x00bad", "not UTF-8"),
    ],
)
def test_bad_text_files_get_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        text_file(path).documents()


def test_missing_file_short_text_and_bad_window_requests(byte_tokenizer, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        text_file(tmp_path / "nope.txt")
    (tmp_path / "short.txt").write_text("too short")
    source = text_file(tmp_path / "short.txt")
    with pytest.raises(DataError, match="9 tokens, fewer than one window of 16"):
        load_windows(source, byte_tokenizer, 16)
    streams = [TokenStream("d", 0, np.arange(100))]
    with pytest.raises(DataError, match="holds only 3 windows of 32 tokens"):
        token_windows(streams, 32, 4)
    with pytest.raises(DataError, match="at least 2 tokens"):
        token_windows(streams, 1)
    with pytest.raises(DataError, match="positive"):
        token_windows(streams, 8, -1)


def test_windows_start_with_bos_when_the_tokenizer_adds_one(byte_tokenizer):
    from sponlib.data import leading_special_token, token_windows

    class BosTokenizer:  # the byte tokenizer with a BOS (id 300) before every text, as Gemma's adds
        def __call__(self, text, add_special_tokens=True, verbose=False):
            ids = list(text.encode("utf-8"))
            return {"input_ids": ([300] if add_special_tokens else []) + ids}

    assert leading_special_token(byte_tokenizer) is None
    assert leading_special_token(BosTokenizer()) == 300
    streams = [TokenStream("doc", 0, np.arange(100, dtype=np.int64))]
    plain = token_windows(streams, 10, seed=0)
    with_bos = token_windows(streams, 10, seed=0, bos=300)
    assert with_bos.ids.shape[1] == 10 and (with_bos.ids[:, 0] == 300).all()
    assert torch.equal(with_bos.ids[0, 1:], torch.arange(9))  # then 9 tokens of text
    assert torch.equal(with_bos.ids[1, 1:], torch.arange(9, 18))  # windows still do not overlap
    assert len(with_bos) == 11 and len(plain) == 10
    assert with_bos.describe()["bos_token"] == 300 and "bos_token" not in plain.describe()
