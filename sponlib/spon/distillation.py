"""The distillation objective of SPON training: KL(p_dense ‖ p_sparse) of the next-token
distributions, with the dense model as the teacher.

    teacher_states   the teacher's final hidden states, computed once for every window
    kl_to_teacher    the mean KL over positions, from student and teacher logits
    kl_backward      a training pass's KL and its backward, the head's logits a chunk of positions at a time
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
# Positions whose head logits exist at once in a training pass: at a 128k vocabulary, 4096
# positions' float32 logits take 2.1 GB a tensor, where a whole pass of 16 windows of 512 took 8.4.
KL_CHUNK = 4096


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(p_teacher ‖ p_student), in nats, computed in float32.
    (..., V), (..., V) -> scalar."""
    student = F.log_softmax(student_logits.float(), dim=-1)  # (..., V)
    teacher = F.log_softmax(teacher_logits.float(), dim=-1)  # (..., V)
    positions = student.numel() // student.shape[-1]
    return F.kl_div(student, teacher, log_target=True, reduction="sum") / positions


def kl_backward(
    model, hidden: torch.Tensor, teacher: torch.Tensor, weight: float, precision: str, chunk: int = KL_CHUNK
) -> torch.Tensor:
    """weight · KL(p_teacher ‖ p_student), the mean over positions, and its backward through the
    head and the model: `hidden` (m, L, d) are the student's final hidden states (still attached
    to the model's graph), `teacher` (m, L, d) the teacher's. The head's logits are made `chunk`
    positions at a time, each chunk's backward run at once into a detached copy of the states, so
    that one chunk's (chunk, V) logits exist at a time, not a pass's; the model's backward then
    runs once from the states' gradient. The same gradients as the whole at once, without
    recomputing anything. Returns the weighted loss, detached."""
    states = hidden.detach().requires_grad_(True)  # (m, L, d): the head's backward stops here
    positions, total = states[..., 0].numel(), torch.zeros((), device=hidden.device)
    for student_part, teacher_part in _chunks(states, teacher, chunk):  # (n, d) each
        with autocast(hidden.device, precision):
            student = head_logits(model, student_part)  # (n, V)
            with torch.no_grad():
                target = head_logits(model, teacher_part)  # (n, V)
            loss = kl_to_teacher(student, target) * (weight * student.shape[0] / positions)
        loss.backward()
        total += loss.detach().to(total.device)
    hidden.backward(states.grad)
    return total


def _chunks(states: torch.Tensor, teacher: torch.Tensor, chunk: int):
    """(m, L, d) student and teacher states -> pairs of (n, d) slices of `chunk` positions."""
    flat, flat_teacher = states.flatten(0, -2), teacher.flatten(0, -2)  # (N, d), (N, d)
    for start in range(0, flat.shape[0], chunk):
        yield flat[start : start + chunk], flat_teacher[start : start + chunk]


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
    chunk: int = KL_CHUNK,
) -> float:
    """Mean KL(p_dense ‖ p_sparse) per position over validation windows (N, L), under `alphas`;
    `teacher` holds their dense final hidden states (N, L, d). The head's logits are made `chunk`
    positions at a time. Data-parallel processes each take their share of the windows and sum."""
    replicas = replicas or Replicas()
    device = input_device(model)
    share = replicas.share(len(ids), "validation windows")
    ids, teacher = ids[share], teacher[share]  # (n, L), (n, L, d)
    total, positions = 0.0, 0
    with Sparsifier(model, thresholds, check=False, alphas=alphas, count=False):
        for start in range(0, len(ids), batch_size):
            batch = ids[start : start + batch_size].to(device)  # (B, L)
            with autocast(device, precision):
                hidden = final_hidden(model, batch)  # (B, L, d)
                summed = 0.0  # read back once per batch, not per chunk
                for student_part, teacher_part in _chunks(hidden, teacher[start : start + batch_size], chunk):
                    student, target = head_logits(model, student_part), head_logits(model, teacher_part)
                    summed = summed + kl_to_teacher(student, target) * student.shape[0]  # (n, V) each
            total += float(summed)
            positions += batch.numel()
    total, positions = replicas.sum(torch.tensor([total, positions], dtype=torch.float64)).tolist()
    return total / positions
