"""Log-likelihood of continuations, the one measurement the cloze, choice and knowledge tasks share.

A request is (context, continuation) as text. The context is encoded as the model would see a
text on its own (with the tokenizer's BOS, which Gemma needs), the continuation without special
tokens; the model reads context + continuation[:-1] and predicts every continuation token.
The first informative token is the first one that is not white space alone: both tokenizers
encode " 19" as " ", "1", "9", and the space says nothing about the answer.
Requests run longest first in right-padded batches: under a causal mask, padding after the last
real token changes nothing before it, so no attention mask is needed. Only the rows that predict
continuation tokens go through the LM head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import DataError, InvalidArgumentError, NumericalError
from ..models.head import final_hidden, head_logits
from ..models.placement import input_device
from ..progress import no_bars


@dataclass(frozen=True)
class ContinuationScore:
    logprob: float  # summed log-probability of the continuation's tokens, nats
    tokens: int  # continuation tokens
    greedy: bool  # every continuation token is the model's top-1 at its position
    first_rank: int  # how many tokens beat the first informative continuation token (0: it is the top-1)


def encode_request(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids); clear errors for texts that give no tokens."""
    context_ids = list(tokenizer(context)["input_ids"])
    continuation_ids = list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
    if not context_ids:
        raise DataError(f"context {context[:40]!r} gives no tokens; every request needs a context")
    if not continuation_ids:
        raise DataError(f"continuation {continuation!r} (after {context[-40:]!r}) gives no tokens")
    return context_ids, continuation_ids


def _first_informative(tokenizer, continuation: list[int]) -> int:
    """Index of the first token that decodes to more than white space (the last one if none does)."""
    for index, token in enumerate(continuation):
        if tokenizer.decode([token]).strip():
            return index
    return len(continuation) - 1


@torch.inference_mode()
def score_requests(
    model,
    tokenizer,
    requests: list[tuple[str, str]],
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "scoring",
) -> list[ContinuationScore]:
    """One ContinuationScore per (context, continuation) request, in the order given."""
    if batch_size < 1:
        raise InvalidArgumentError(f"batch size must be at least 1 (got {batch_size})")
    encoded = [encode_request(tokenizer, c, x) for c, x in requests]
    first_informative = [_first_informative(tokenizer, continuation) for _, continuation in encoded]
    device = input_device(model)
    order = sorted(range(len(encoded)), key=lambda i: -(len(encoded[i][0]) + len(encoded[i][1])))
    scores: list[ContinuationScore | None] = [None] * len(encoded)
    bar = tqdm(total=len(encoded), desc=desc, unit="req", disable=no_bars(progress), leave=False)
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        sequences = [encoded[i][0] + encoded[i][1][:-1] for i in chosen]
        width = max(len(s) for s in sequences)
        ids = torch.zeros(len(chosen), width, dtype=torch.long)  # (B, L), right-padded
        rows, targets = [], []  # (batch row, position) predicting each continuation token, and the token
        for b, (i, sequence) in enumerate(zip(chosen, sequences)):
            ids[b, : len(sequence)] = torch.tensor(sequence)
            context, continuation = encoded[i]
            rows += [(b, len(context) - 1 + t) for t in range(len(continuation))]
            targets += continuation
        hidden = final_hidden(model, ids.to(device))  # (B, L, d)
        picked = hidden[tuple(torch.tensor(rows, device=device).T)]  # (R, d)
        logprobs = F.log_softmax(head_logits(model, picked).float(), dim=-1)  # (R, V)
        if not torch.isfinite(logprobs).all():
            raise NumericalError(
                "non-finite log-probabilities: the model produced NaN/inf logits "
                f"(dtype {next(model.parameters()).dtype}); try float32"
            )
        target = torch.tensor(targets, device=device)  # (R,)
        target_logprob = logprobs.gather(-1, target[:, None]).squeeze(-1)  # (R,)
        beaten_by = (logprobs > target_logprob[:, None]).sum(-1)  # (R,)
        offset = 0
        for i in chosen:
            n = len(encoded[i][1])
            scores[i] = ContinuationScore(
                float(target_logprob[offset : offset + n].double().sum()),
                n,
                bool((beaten_by[offset : offset + n] == 0).all()),
                int(beaten_by[offset + first_informative[i]]),
            )
            offset += n
        bar.update(len(chosen))
    bar.close()
    return scores
