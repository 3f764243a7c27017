"""Next-sentence choice (HellaSwag-style): which of four sentences continues the context?

The context is a run of consecutive sentences (30 to 90 words) of held-out text; the true ending
is the sentence that follows it in the same block; the three others are sentences of similar
length drawn, with a seed, from other blocks of the same document (the same novel, or the same
Brown genre), so that style gives nothing away. The model picks the ending with the highest
log-likelihood per character (lm-evaluation-harness's acc_norm, which compares across tokenizers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgumentError
from .passages import blocks, check_held_out, passages, word_count
from .scoring import score_requests

MIN_WORDS, MAX_WORDS = 30, 90
ENDING_WORDS = (6, 40)  # bounds on the words of every ending, true or not
CHOICES = 4


@dataclass(frozen=True)
class ChoiceExample:
    context: str
    endings: tuple[str, ...]  # CHOICES sentences, the true one at `gold`
    gold: int
    source: str
    where: str  # "document:block:sentences": the block of the context's last sentence, and how many sentences


def _fits(sentence: str) -> bool:
    return ENDING_WORDS[0] <= word_count(sentence) <= ENDING_WORDS[1]


def build(source: str, n: int, seed: int = 0) -> list[ChoiceExample]:
    """`n` examples from one held-out source, picked with `seed` and kept in corpus order."""
    check_held_out(source)
    pool: dict[str, list[tuple[int, str]]] = {}  # document -> (block index, sentence) usable as endings
    for block in blocks(source):
        pool.setdefault(block.document, []).extend((block.index, s) for s in block.sentences if _fits(s))
    candidates = [p for p in passages(source, MIN_WORDS, MAX_WORDS) if p.following and _fits(p.following)]
    if n > len(candidates):
        raise InvalidArgumentError(f"{source} yields {len(candidates)} choice contexts; ask for at most that many")
    rng = np.random.default_rng(seed)
    examples = []
    for i in np.sort(rng.choice(len(candidates), size=n, replace=False)):
        passage = candidates[i]
        others = [s for b, s in pool[passage.document] if abs(b - passage.block) > 1 and s != passage.following]
        picked = [others[j] for j in rng.choice(len(others), size=CHOICES - 1, replace=False)]
        gold = int(rng.integers(CHOICES))
        endings = picked[:gold] + [passage.following] + picked[gold:]
        examples.append(ChoiceExample(passage.text, tuple(endings), gold, source, passage.where))
    return examples


def score(model, tokenizer, examples: list[ChoiceExample], batch_size: int = 16, progress: bool = True) -> list[int]:
    """1 where the true ending has the highest log-likelihood per character, else 0, per example."""
    requests = [(e.context, " " + ending) for e in examples for ending in e.endings]
    scores = score_requests(model, tokenizer, requests, batch_size, progress, desc="choice")
    outcomes = []
    for k, example in enumerate(examples):
        per_char = [
            s.logprob / len(ending) for s, ending in zip(scores[k * CHOICES : (k + 1) * CHOICES], example.endings)
        ]
        outcomes.append(int(int(np.argmax(per_char)) == example.gold))
    return outcomes
