"""Held-out text cut into sentences and passages, deterministically, for the task builders.

Only test text is allowed in: Persuasion (the in-domain novel SPON never trains or calibrates on)
and the Brown Corpus (out of domain). A document splits into blocks at blank lines (a paragraph of
a novel, a document of Brown) and a block into sentences. A passage is the shortest run of
consecutive sentences, ending at a given sentence, that holds enough words; it may cross
paragraphs of a novel but never a Brown document. Nothing here is random; builders pick with a seeded RNG.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from ..data import load_corpus
from ..errors import InvalidArgumentError

HELD_OUT_SOURCES: tuple[str, ...] = ("persuasion", "brown")

# A sentence ends at . ! or ?, optionally followed by closing quotes or brackets, then white space
# and the start of the next sentence (an opening quote or bracket, or a capital letter or digit).
_SENTENCE_END = re.compile(r"""[.!?]["'”’)\]]*\s+(?=["'“‘(\[]?[A-Z0-9])""")
# Titles and abbreviations whose full stop does not end a sentence.
_ABBREVIATIONS = frozenset(
    {
        "mr",
        "mrs",
        "ms",
        "dr",
        "st",
        "esq",
        "col",
        "capt",
        "gen",
        "lt",
        "sgt",
        "rev",
        "prof",
        "sr",
        "jr",
        "vs",
        "no",
        "mt",
        "ft",
        "co",
        "inc",
        "u.s",
        "e.g",
        "i.e",
    }
)
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Block:
    """A paragraph (novel) or document (Brown) of one source, split into sentences."""

    source: str  # "persuasion" or "brown"
    document: str  # file stem, e.g. "persuasion" or "k_fiction_general"
    index: int  # position of the block in its document
    sentences: tuple[str, ...]


def check_held_out(source: str) -> str:
    if source not in HELD_OUT_SOURCES:
        raise InvalidArgumentError(
            f"tasks are built from held-out text only: {', '.join(HELD_OUT_SOURCES)} "
            f"(got {source!r}); training and calibration text would leak into the test"
        )
    return source


def word_count(text: str) -> int:
    return len(_WORD.findall(text))


def split_sentences(block: str) -> list[str]:
    """Sentences of one block of running text (line breaks are spaces)."""
    text = " ".join(block.split())
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        last_word = text[start : match.start()].rsplit(" ", 1)[-1].lower().lstrip("\"'“‘(")
        if text[match.start()] == "." and (last_word in _ABBREVIATIONS or len(last_word) == 1):
            continue  # "Mr. Elliot", "J. Smith": not the end of a sentence
        sentences.append(text[start : match.end()].strip())
        start = match.end()
    if text[start:].strip():
        sentences.append(text[start:].strip())
    return sentences


@lru_cache(maxsize=4)
def blocks(source: str) -> tuple[Block, ...]:
    """Every block of a held-out source that holds at least one sentence, in corpus order."""
    check_held_out(source)
    out = []
    for document, text in load_corpus(source).documents():
        for index, raw in enumerate(re.split(r"\n\s*\n", text)):
            sentences = split_sentences(raw)
            if sentences:
                out.append(Block(source, document, index, tuple(sentences)))
    return tuple(out)


@dataclass(frozen=True)
class Passage:
    source: str
    document: str
    block: int  # block index (in its document) of the passage's last sentence
    sentences: tuple[str, ...]  # consecutive sentences, the last one ending the passage
    following: str | None  # the sentence after the passage in the same block, if any

    @property
    def text(self) -> str:
        return " ".join(self.sentences)

    @property
    def where(self) -> str:
        return f"{self.document}:{self.block}:{len(self.sentences)}"


def passages(source: str, min_words: int, max_words: int) -> list[Passage]:
    """For every sentence of a held-out source, the shortest run of sentences ending there with at
    least min_words words, if it has at most max_words. Runs stay inside one novel, or one Brown
    document (block), in corpus order."""
    out = []
    units: list[list[Block]] = []  # novels: all blocks of the file; Brown: each block alone
    for block in blocks(source):
        if source == "brown" or not units or units[-1][0].document != block.document:
            units.append([block])
        else:
            units[-1].append(block)
    for unit in units:
        flat = [(b, i) for b in unit for i in range(len(b.sentences))]  # (block, sentence index)
        counts = [word_count(b.sentences[i]) for b, i in flat]
        for end in range(len(flat)):
            start, words = end, counts[end]
            while words < min_words and start > 0:
                start -= 1
                words += counts[start]
            if not min_words <= words <= max_words:
                continue
            block, index = flat[end]
            following = block.sentences[index + 1] if index + 1 < len(block.sentences) else None
            out.append(
                Passage(
                    source,
                    block.document,
                    block.index,
                    tuple(b.sentences[i] for b, i in flat[start : end + 1]),
                    following,
                )
            )
    return out
