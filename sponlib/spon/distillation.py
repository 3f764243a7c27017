"""The distillation objective of SPON training: KL(p_dense ‖ p_sparse) of the next-token
distributions, with the dense model as the teacher.

    teacher_states   the teacher's final hidden states, computed once for every window
    kl_to_teacher    the mean KL over positions, from student and teacher logits
    validation_kl    that KL on held-out windows under given thresholds and vectors

The teacher is kept as hidden states (B, L, d), not logits (B, L, V): a step's teacher logits are
one head matmul on them, exactly the logits the dense model gives, at a fraction of the memory.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..distributed import Replicas
from ..models.head import final_hidden, head_logits
from ..models.placement import input_device
from ..progress import no_bars
from ..sparsity.sparsifier import Sparsifier
from ..sparsity.thresholds import Thresholds

PRECISIONS = ("auto", "fp32", "bf16")


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(p_teacher ‖ p_student), in nats, computed in float32.
    (..., V), (..., V) -> scalar."""
    student = F.log_softmax(student_logits.float(), dim=-1)  # (..., V)
    teacher = F.log_softmax(teacher_logits.float(), dim=-1)  # (..., V)
    positions = student.numel() // student.shape[-1]
    return F.kl_div(student, teacher, log_target=True, reduction="sum") / positions


def autocast(device: torch.device, precision: str):
    """bfloat16 autocast for precision "bf16", else nothing (the model's own dtype)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_precision(precision: str, device: torch.device) -> str:
    """Precision "auto" is bf16 on CUDA and fp32 elsewhere."""
    return ("bf16" if device.type == "cuda" else "fp32") if precision == "auto" else precision


@torch.no_grad()
def teacher_states(
    model, ids: torch.Tensor, batch_size: int, precision: str, progress: bool = True, replicas: Replicas | None = None
) -> torch.Tensor:
    """Dense final hidden states of every window, computed once: (N, L) -> (N, L, d) where the
    model's final norm computes, in the precision the head will read them in (bfloat16 under bf16:
    the head would round them to that anyway). Data-parallel processes each compute their share
    and gather the rest."""
    replicas = replicas or Replicas()
    device = input_device(model)
    dtype = torch.bfloat16 if precision == "bf16" else next(model.parameters()).dtype
    share = ids[replicas.share(len(ids))]  # (n, L)
    states = []
    for start in tqdm(
        range(0, len(share), batch_size), desc="teacher", unit="batch", disable=no_bars(progress), leave=False
    ):
        with autocast(device, precision):
            hidden = final_hidden(model, share[start : start + batch_size].to(device))  # (B, L, d)
        states.append(hidden.to(dtype))
    return replicas.gather_rows(torch.cat(states), len(ids))  # (N, L, d)


@torch.no_grad()
def validation_kl(
    model,
    thresholds: Thresholds,
    alphas: dict,
    ids: torch.Tensor,
    teacher: torch.Tensor,
    batch_size: int,
    precision: str,
    replicas: Replicas | None = None,
) -> float:
    """Mean KL(p_dense ‖ p_sparse) per position over validation windows (N, L), under `alphas`;
    `teacher` holds their dense final hidden states (N, L, d). Data-parallel processes each take
    their share of the windows and sum."""
    replicas = replicas or Replicas()
    device = input_device(model)
    share = replicas.share(len(ids), "validation windows")
    ids, teacher = ids[share], teacher[share]  # (n, L), (n, L, d)
    total, positions = 0.0, 0
    with Sparsifier(model, thresholds, check=False, alphas=alphas, count=False):
        for start in range(0, len(ids), batch_size):
            batch = ids[start : start + batch_size].to(device)  # (B, L)
            with autocast(device, precision):
                student = head_logits(model, final_hidden(model, batch))  # (B, L, V)
                target = head_logits(model, teacher[start : start + batch_size])  # (B, L, V)
            total += kl_to_teacher(student, target).item() * batch.numel()
            positions += batch.numel()
    total, positions = replicas.sum(torch.tensor([total, positions], dtype=torch.float64)).tolist()
    return total / positions
