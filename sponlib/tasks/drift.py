"""Generation drift: how far greedy continuations of a sparsified model wander from the dense ones.

Prompts are the first PROMPT_TOKENS tokens of passages of held-out text that start at a sentence
start (after the tokenizer's BOS, when it adds one). Each model continues every prompt greedily
for NEW_TOKENS tokens, never stopping early, so all continuations are comparable position by
position. Per prompt, against the dense continuation:
    agreement         share of positions with the same token
    first_divergence  position of the first different token (NEW_TOKENS when none differs)
and, of the continuation alone, `repetition`: the share of its 4-grams that repeat an earlier one,
which catches the loops a degraded model falls into (dense text repeats little).
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import leading_special_token
from ..errors import InvalidArgumentError
from ..models.placement import input_device
from ..progress import no_bars
from .passages import check_held_out, passages

PROMPT_TOKENS, NEW_TOKENS, NGRAM = 32, 64, 4


def build(source: str, n: int, tokenizer, seed: int = 0, prompt_tokens: int = PROMPT_TOKENS) -> torch.Tensor:
    """(n, prompt_tokens) prompt ids from one held-out source, picked with `seed`, in corpus order."""
    check_held_out(source)
    bos = leading_special_token(tokenizer)
    text_tokens = prompt_tokens - (bos is not None)
    # passages of at least 40 words start at a sentence start and hold well over PROMPT_TOKENS tokens
    candidates = [p.text for p in passages(source, 40, 400)]
    if n > len(candidates):
        raise InvalidArgumentError(f"{source} yields {len(candidates)} prompts; ask for at most that many")
    prompts = []
    for i in np.sort(np.random.default_rng(seed).choice(len(candidates), size=n, replace=False)):
        ids = tokenizer(candidates[i], add_special_tokens=False)["input_ids"][:text_tokens]
        if len(ids) < text_tokens:
            raise InvalidArgumentError(f"a {source} passage gives only {len(ids)} tokens; use shorter prompts")
        prompts.append(([bos] if bos is not None else []) + list(ids))
    return torch.tensor(prompts, dtype=torch.long)


@torch.inference_mode()
def greedy_continuations(
    model,
    prompts: torch.Tensor,
    new_tokens: int = NEW_TOKENS,
    batch_size: int = 50,
    progress: bool = True,
    desc: str = "drift",
) -> torch.Tensor:
    """Greedy continuations with the KV cache: (N, P) prompt ids -> (N, new_tokens) ids, on the CPU."""
    if new_tokens < 1:
        raise InvalidArgumentError(f"need at least one new token (got {new_tokens})")
    device = input_device(model)
    # newer transformers name the KV cache `cache`, older ones `past_key_values`
    cache = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = []
    for start in tqdm(
        range(0, len(prompts), batch_size), desc=desc, unit="batch", disable=no_bars(progress), leave=False
    ):
        step = model(input_ids=prompts[start : start + batch_size].to(device), use_cache=True, logits_to_keep=1)
        tokens = [step.logits[:, -1].argmax(-1)]  # [(B,)]
        for _ in range(new_tokens - 1):
            step = model(input_ids=tokens[-1][:, None], use_cache=True, **{cache: getattr(step, cache)})
            tokens.append(step.logits[:, -1].argmax(-1))
        out.append(torch.stack(tokens, 1).cpu())  # (B, new_tokens)
    return torch.cat(out)


def agreement(generated: torch.Tensor, reference: torch.Tensor) -> list[float]:
    """Per row, the share of positions where the two continuations hold the same token. (N, T) x2."""
    return (generated == reference).double().mean(1).tolist()


def first_divergence(generated: torch.Tensor, reference: torch.Tensor) -> list[int]:
    """Per row, the first position where the continuations differ; T when they never do. (N, T) x2."""
    differ = generated != reference  # (N, T)
    first = differ.double().argmax(1)  # (N,): 0 both for "differs at 0" and "never differs"
    return torch.where(differ.any(1), first, torch.full_like(first, generated.shape[1])).long().tolist()


def repetition(generated: torch.Tensor, n: int = NGRAM) -> list[float]:
    """Per row, the share of n-grams that already occurred earlier in the same continuation."""
    rates = []
    for row in generated.tolist():
        grams = [tuple(row[i : i + n]) for i in range(len(row) - n + 1)]
        seen, repeats = set(), 0
        for gram in grams:
            repeats += gram in seen
            seen.add(gram)
        rates.append(repeats / len(grams) if grams else 0.0)
    return rates
