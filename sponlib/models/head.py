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


def head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """What the model's head makes of final hidden states, soft-capping included (Gemma):
    (..., d) -> (..., V). Equals model(ids).logits for hidden = final_hidden(model, ids)."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def final_norm(model) -> torch.nn.Module:
    """The norm the decoder applies to its last residual state before the head."""
    norm = getattr(model.get_decoder(), "norm", None)
    if norm is None:
        raise InvalidArgumentError(
            f"{type(model).__name__} has no final norm at model.get_decoder().norm; the logit lens needs one"
        )
    return norm


@torch.inference_mode()
def lens_logprobs(model, hidden: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Logit lens: next-token log-probabilities the model's final norm and head read off residual
    states, soft-capping included; for the last block's output these are the model's own.
    (N, d) float32 on any device -> (N, V) float32 on the CPU."""
    device = input_device(model)
    dtype = next(model.parameters()).dtype
    norm = final_norm(model)
    out = torch.empty(0, 0)  # (N, V) on the CPU once the first chunk gives V
    for start in range(0, hidden.shape[0], chunk):
        states = hidden[start : start + chunk].to(device, dtype)  # (n, d)
        logits = head_logits(model, norm(states)).float()  # (n, V)
        if start == 0:
            out = torch.empty(hidden.shape[0], logits.shape[-1])
        rows = out[start : start + chunk]  # (n, V)
        if logits.device.type == "cpu":
            torch.log_softmax(logits, dim=-1, out=rows)  # written in place: no copy of the (N, V) result
        else:
            rows.copy_(torch.log_softmax(logits, dim=-1))
    return out
