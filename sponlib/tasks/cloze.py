"""Last-word cloze (LAMBADA-style): predict the final word of a passage, greedily and whole.

A passage is a run of consecutive sentences (60 to 200 words) of held-out text whose final word
is alphabetic, not a function word, and also occurs earlier in the passage, so the context holds
a clue. The model
sees the passage up to that word and is right when its greedy prediction spells the whole word:
every token of " word" is the top-1 at its position, as lm-evaluation-harness scores LAMBADA.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgumentError
from .passages import check_held_out, passages
from .scoring import score_requests

MIN_WORDS, MAX_WORDS = 60, 200  # long enough that Persuasion yields 236 passages
# Words too common to test memory of the passage ("of", "them"): a passage ending in one is skipped.
FUNCTION_WORDS = frozenset(
    """
a an the and or but nor so yet for of in on at by to from with without into onto upon over under about
above after before behind below between through during against among within as than then there here
i me my mine we us our ours you your yours he him his she her hers it its they them their theirs
this that these those who whom whose which what when where why how all any both each few more most
other some such no not only own same too very can will just should now is are was were be been being
have has had having do does did doing would could shall may might must one ever never also well much
""".split()
)
_LAST_WORD = re.compile(r"""^(?P<context>.*\S)\s+(?P<word>[A-Za-z]{2,})["'”’)\]]*[.!?;:,]*["'”’)\]]*$""", re.S)


@dataclass(frozen=True)
class ClozeExample:
    context: str  # the passage up to, not including, the space before the final word
    word: str  # the final word, without punctuation
    source: str
    where: str  # "document:block:sentences": the block of the last sentence, and how many sentences


def last_word_example(passage: str) -> tuple[str, str] | None:
    """(context, word) when the passage ends in an alphabetic word that occurred before; else None."""
    match = _LAST_WORD.match(passage)
    if match is None:
        return None
    context, word = match["context"], match["word"]
    if word.lower() in FUNCTION_WORDS or not re.search(rf"\b{re.escape(word)}\b", context):
        return None
    return context, word


def build(source: str, n: int, seed: int = 0) -> list[ClozeExample]:
    """`n` cloze examples from one held-out source, picked with `seed` and kept in corpus order."""
    check_held_out(source)
    candidates = []
    for passage in passages(source, MIN_WORDS, MAX_WORDS):
        found = last_word_example(passage.text)
        if found:
            candidates.append(ClozeExample(*found, source, passage.where))
    if n > len(candidates):
        raise InvalidArgumentError(f"{source} yields {len(candidates)} cloze passages; ask for at most that many")
    chosen = np.sort(np.random.default_rng(seed).choice(len(candidates), size=n, replace=False))
    return [candidates[i] for i in chosen]


def score(model, tokenizer, examples: list[ClozeExample], batch_size: int = 16, progress: bool = True) -> list[int]:
    """1 where the greedy prediction is the whole final word, else 0, per example."""
    scores = score_requests(
        model, tokenizer, [(e.context, " " + e.word) for e in examples], batch_size, progress, desc="cloze"
    )
    return [int(s.greedy) for s in scores]
