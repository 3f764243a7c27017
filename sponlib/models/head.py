"""The model's head: what its final norm and output layer make of hidden states.

    final_hidden(model, ids)      the decoder's last hidden state, after the final norm
    head_logits(model, hidden)    the logits the head gives those states, soft-capping included
    lens_logprobs(model, states)  the "logit lens": next-token log-probabilities read off any
                                  residual state through the final norm and the head

SPON training (teacher states, a step's logits), task scoring and the analysis all read logits
through here, so one place knows about Gemma's final-logit soft-capping.
"""

from __future__ import annotations

import torch

from ..errors import InvalidArgumentError
from .placement import input_device


def final_hidden(model, ids: torch.Tensor) -> torch.Tensor:
    """The decoder's last hidden state, after its final norm: (B, L) ids -> (B, L, d)."""
    return model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state


def head_logits(model, hidden: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """What the model's head makes of final hidden states, soft-capping included (Gemma):
    (..., d) -> (..., V). Equals model(ids).logits for hidden = final_hidden(model, ids).
    `out`: a (N, V) tensor to write (N, d) states' logits into, the same values, no new memory."""
    head = model.get_output_embeddings()
    cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    if out is None:
        logits = head(hidden)
        return torch.tanh(logits / cap) * cap if cap else logits
    torch.matmul(hidden, head.weight.T, out=out)  # the product F.linear runs, into `out`
    if head.bias is not None:
        out.add_(head.bias)
    if cap:
        out.div_(cap).tanh_().mul_(cap)
    return out


def final_norm(model) -> torch.nn.Module:
    """The norm the decoder applies to its last residual state before the head."""
    norm = getattr(model.get_decoder(), "norm", None)
    if norm is None:
        raise InvalidArgumentError(
            f"{type(model).__name__} has no final norm at model.get_decoder().norm; the logit lens needs one"
        )
    return norm


@torch.inference_mode()
def lens_logprobs(model, hidden: torch.Tensor, chunk: int = 256, out: torch.Tensor | None = None) -> torch.Tensor:
    """Logit lens: next-token log-probabilities the model's final norm and head read off residual
    states, soft-capping included; for the last block's output these are the model's own.
    (N, d) float32 on any device -> (N, V) float32 on the CPU. `out`: an (N, V) float32 CPU tensor
    to write them into; on a float32 CPU model the logits are computed in it too, so a caller
    that reuses one allocates nothing (fresh pages of a large product cost as much as part of it)."""
    device = input_device(model)
    dtype = next(model.parameters()).dtype
    norm = final_norm(model)
    in_place = out is not None and device.type == "cpu" and dtype == torch.float32
    for start in range(0, hidden.shape[0], chunk):
        states = norm(hidden[start : start + chunk].to(device, dtype))  # (n, d)
        if in_place:
            rows = head_logits(model, states, out=out[start : start + chunk])  # (n, V)
            torch.log_softmax(rows, dim=-1, out=rows)  # in place: the same values as into a new tensor
            continue
        logits = head_logits(model, states).float()  # (n, V)
        if out is None:
            out = torch.empty(hidden.shape[0], logits.shape[-1])  # (N, V) on the CPU
        rows = out[start : start + chunk]  # (n, V)
        if logits.device.type == "cpu":
            torch.log_softmax(logits, dim=-1, out=rows)  # written in place: no copy of the (N, V) result
        else:
            rows.copy_(torch.log_softmax(logits, dim=-1))
    return out
