"""Knowledge probe: short factual prompts with one unambiguous answer each, from a versioned file.

data/tasks/knowledge.json holds categories (capitals, chemical symbols, authors, astronomy, units,
arithmetic), each with three worked examples ("shots"), and a few hundred items. The model sees
the category's shots, one per line as "<prompt> <answer>.", then the item's prompt, and is scored
on the answer's first token: top-1 and top-5 over the whole vocabulary, and whether its greedy
continuation spells the whole answer. Retention is accuracy under sparsity over dense accuracy.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import CorruptFileError
from ..paths import data_dir
from .scoring import score_requests

TOP_K = 5


@dataclass(frozen=True)
class KnowledgeItem:
    id: str
    category: str
    prompt: str
    answer: str


@dataclass(frozen=True)
class Probe:
    name: str
    version: int
    shots: dict[str, tuple[tuple[str, str], ...]]  # category -> (prompt, answer) worked examples
    items: tuple[KnowledgeItem, ...]

    def context(self, item: KnowledgeItem) -> str:
        """What the model reads before the answer."""
        lines = [f"{prompt} {answer}." for prompt, answer in self.shots[item.category]]
        return "\n".join(lines + [item.prompt])


def default_path() -> Path:
    return data_dir() / "tasks" / "knowledge.json"


def _check_answer(where: str, prompt: str, answer) -> str:
    if not isinstance(answer, str) or not answer.strip() or answer != answer.strip():
        raise CorruptFileError(f"{where}: the answer must be a non-empty string without outer spaces, got {answer!r}")
    if not answer[0].isalnum() or answer.endswith(".") or any(c in answer for c in "/|()"):
        raise CorruptFileError(
            f"{where}: the answer {answer!r} must be one plain string (no alternatives, "
            "brackets or final full stop) that starts with a letter or digit"
        )
    if not isinstance(prompt, str) or not prompt.strip() or prompt != prompt.rstrip():
        raise CorruptFileError(f"{where}: the prompt must be non-empty text without trailing spaces, got {prompt!r}")
    return answer


def load_probe(path: str | os.PathLike | None = None) -> Probe:
    """Read and check the knowledge file; a CorruptFileError says what is wrong and where."""
    path = Path(path) if path is not None else default_path()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        categories, items = raw["categories"], raw["items"]
        name, version = raw["name"], int(raw["version"])
    except FileNotFoundError as e:
        raise CorruptFileError(
            f"knowledge file {path} is missing; run from a clone of the project or set SPONLIB_DATA to its data/ folder"
        ) from e
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptFileError(f"{path} is not a knowledge file (needs name, version, categories, items): {e}") from e
    shots = {}
    for category, spec in categories.items():
        pairs = tuple(
            (s["prompt"], _check_answer(f"{path}: shot of {category}", s["prompt"], s["answer"])) for s in spec["shots"]
        )
        if not pairs:
            raise CorruptFileError(f"{path}: category {category!r} has no shots")
        shots[category] = pairs
    seen_ids, seen_prompts, loaded = set(), set(), []
    for k, item in enumerate(items):
        where = f"{path}: item {k} ({item.get('id', '?')})"
        if item.get("category") not in shots:
            raise CorruptFileError(f"{where}: unknown category {item.get('category')!r}")
        answer = _check_answer(where, item.get("prompt"), item.get("answer"))
        if item["id"] in seen_ids or item["prompt"] in seen_prompts:
            raise CorruptFileError(f"{where}: repeats an id or a prompt; each item must be unique")
        if (item["prompt"], answer) in shots[item["category"]]:
            raise CorruptFileError(f"{where}: is one of its category's shots")
        seen_ids.add(item["id"])
        seen_prompts.add(item["prompt"])
        loaded.append(KnowledgeItem(item["id"], item["category"], item["prompt"], answer))
    if not loaded:
        raise CorruptFileError(f"{path} holds no items")
    return Probe(name, version, shots, tuple(loaded))


def score(model, tokenizer, probe: Probe, batch_size: int = 32, progress: bool = True) -> dict[str, list[int]]:
    """Per item, in file order: top1 and top5 (the answer's first token) and exact (the greedy
    continuation is the whole answer), each 1 or 0."""
    scores = score_requests(
        model,
        tokenizer,
        [(probe.context(i), " " + i.answer) for i in probe.items],
        batch_size,
        progress,
        desc="knowledge",
    )
    return {
        "top1": [int(s.first_rank == 0) for s in scores],
        f"top{TOP_K}": [int(s.first_rank < TOP_K) for s in scores],
        "exact": [int(s.greedy) for s in scores],
    }
