"""SPON training: fit the spontaneous-neuron vectors so that the sparse model's next-token
distribution matches the dense model's, KL(p_dense ‖ p_sparse) averaged over every position.

What makes it fast:
- The teacher never runs twice on a window. Its final hidden states (after the last norm) are
  computed once, in one inference pass over all training and validation windows, and kept on
  the device; a step's teacher logits are then one head matmul on them, exactly the logits the
  dense model gives (the head is the model's own, in the same precision as the student's).
- Model weights are frozen: backward computes input gradients only, no weight gradients.
- On CUDA the forward runs under bfloat16 autocast ("precision"); the α stay float32.
- The loss is read back to the host only every few steps, so the GPU is never starved.

What makes it safe:
- Thresholds follow the vectors. SPON pulls the hidden states back towards the dense model's,
  which moves the inputs every downstream threshold was fitted on: with fixed thresholds a run
  at 0.7 ends up zeroing only about 0.62 of the inputs, and part of its "recovery" is merely less
  sparsity. So before every validation the thresholds are refitted (one sparse-aware pass over a
  few training windows, `sponlib.calibration.refine_thresholds`, vectors in place), each at its
  own level, and the thresholds of the best step are returned and saved with the vectors.
- A validation KL on held-out windows (never the test novel) at step 0 (α = 0, the plain mask)
  and every `eval_every` steps; the best step's vectors are returned, so SPON never ends worse
  than its base mask on validation.
- A checkpoint (vectors, optimiser, best so far, history) every `checkpoint_every` steps and on
  Ctrl-C, written atomically; an interrupted run resumes from it bit for bit (same batches, same
  learning rates), and refuses a checkpoint made with other settings, data or thresholds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .adapters import ROLES
from .calibration import refine_thresholds
from .errors import CorruptFileError, InvalidArgumentError, NumericalError
from .io import atomic_write_bytes
from .results import device_record
from .sparsity import Sparsifier, Thresholds
from .spon import SponVectors, check_roles

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig:
    """Settings of one SPON training run (recorded in the SPON file)."""

    steps: int = 400  # optimiser steps
    batch_size: int = 8  # windows per step
    lr: float = 3e-3  # peak learning rate of AdamW
    weight_decay: float = 0.0
    warmup: float = 0.05  # share of steps with a linear warm-up; cosine decay to 0 after it
    eval_every: int = 50  # steps between validation KLs (the best one is kept)
    checkpoint_every: int = 50  # steps between checkpoints (0: none)
    seed: int = 0  # data order
    precision: str = "auto"  # fp32, bf16 (autocast on CUDA) or auto (bf16 on CUDA, fp32 elsewhere)
    roles: tuple[str, ...] = ROLES  # projections that get a vector
    track_sparsity: bool = True  # refit the thresholds under the current vectors before each validation
    refit_windows: int = 8  # training windows of that refit (one batch)

    def __post_init__(self):
        self.roles = check_roles(self.roles)
        for name in ("steps", "batch_size", "eval_every", "refit_windows"):
            if int(getattr(self, name)) < 1:
                raise InvalidArgumentError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.checkpoint_every < 0:
            raise InvalidArgumentError(f"checkpoint_every must be >= 0 (got {self.checkpoint_every})")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise InvalidArgumentError(f"learning rate must be a positive number (got {self.lr})")
        if not 0.0 <= self.warmup < 1.0:
            raise InvalidArgumentError(f"warmup is a share of the steps in [0, 1) (got {self.warmup})")
        if self.precision not in PRECISIONS:
            raise InvalidArgumentError(f"precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "roles": list(self.roles)}

    def lr_at(self, step: int) -> float:
        """Linear warm-up over the first `warmup` share of steps, then cosine decay to 0."""
        warm = max(1, round(self.warmup * self.steps))
        if step < warm:
            return self.lr * (step + 1) / warm
        progress = (step - warm) / max(1, self.steps - warm)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


# ------------------------------------------------------------------ teacher


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


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(p_teacher ‖ p_student), in nats, computed in float32.
    (..., V), (..., V) -> scalar."""
    student = F.log_softmax(student_logits.float(), dim=-1)  # (..., V)
    teacher = F.log_softmax(teacher_logits.float(), dim=-1)  # (..., V)
    positions = student.numel() // student.shape[-1]
    return F.kl_div(student, teacher, log_target=True, reduction="sum") / positions


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_precision(precision: str, device: torch.device) -> str:
    return ("bf16" if device.type == "cuda" else "fp32") if precision == "auto" else precision


@torch.no_grad()
def teacher_states(model, ids: torch.Tensor, batch_size: int, precision: str, progress: bool = True) -> torch.Tensor:
    """Dense final hidden states of every window, computed once: (N, L) -> (N, L, d) on the model's
    device, in the precision the head will read them in (bfloat16 under bf16: the head would
    round them to that anyway)."""
    device = next(model.parameters()).device
    dtype = torch.bfloat16 if precision == "bf16" else next(model.parameters()).dtype
    states = []
    for start in tqdm(range(0, len(ids), batch_size), desc="teacher", unit="batch", disable=not progress,
                      leave=False):
        with _autocast(device, precision):
            hidden = final_hidden(model, ids[start:start + batch_size].to(device))  # (B, L, d)
        states.append(hidden.to(dtype))
    return torch.cat(states)


@torch.no_grad()
def validation_kl(model, thresholds: Thresholds, alphas: dict, ids: torch.Tensor, teacher: torch.Tensor,
                  batch_size: int, precision: str) -> float:
    """Mean KL(p_dense ‖ p_sparse) per position over validation windows, under `alphas`."""
    device = teacher.device
    total, positions = 0.0, 0
    with Sparsifier(model, thresholds, check=False, alphas=alphas, count=False):
        for start in range(0, len(ids), batch_size):
            batch = ids[start:start + batch_size].to(device)  # (B, L)
            with _autocast(device, precision):
                student = head_logits(model, final_hidden(model, batch))  # (B, L, V)
                target = head_logits(model, teacher[start:start + batch_size])  # (B, L, V)
            total += kl_to_teacher(student, target).item() * batch.numel()
            positions += batch.numel()
    return total / positions


# ------------------------------------------------------------------ checkpoints


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.cpu().numpy().tobytes() if isinstance(part, torch.Tensor) else json.dumps(part, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _save_checkpoint(path: str, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load_checkpoint(path: str, run_key: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        key = state["run_key"]
    except Exception as e:  # torch raises many types for a damaged file
        raise CorruptFileError(f"checkpoint {path} is damaged ({type(e).__name__}: {e}); delete it to start "
                               "afresh") from None
    if key != run_key:
        raise InvalidArgumentError(
            f"checkpoint {path} belongs to another run (other settings, data, thresholds or model); "
            "delete it, or train with restart=True (--restart) to start afresh")
    return state


# ------------------------------------------------------------------ training


@dataclass
class TrainHistory:
    """Loss per step and validation KL per evaluation; what the notebooks plot."""

    loss: list[tuple[int, float]] = field(default_factory=list)  # (step, train KL)
    val: list[tuple[int, float]] = field(default_factory=list)  # (step, validation KL)


def _batch_indices(n_windows: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Windows of `step`: a fresh seeded permutation every epoch, so any step can be recomputed."""
    per_epoch = max(1, n_windows // batch_size)
    epoch, k = divmod(step, per_epoch)
    order = torch.randperm(n_windows, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order[k * batch_size:(k + 1) * batch_size]


def train_spon(model, thresholds: Thresholds, train_ids: torch.Tensor, val_ids: torch.Tensor,
               config: TrainConfig | None = None, *, checkpoint: str | os.PathLike | None = None,
               restart: bool = False, progress: bool = True,
               callback: Callable[[int, float, float | None], None] | None = None) -> SponVectors:
    """Train one vector per projection (of `config.roles`) against the dense model.

    train_ids (N, L) and val_ids (M, L) are token windows; validation must be held-out text.
    `checkpoint` (a file path) makes the run resumable; `callback(step, loss, val_kl or None)` is
    called after every step (for live plots). Returns the best vectors on validation (on the
    CPU), their `meta["training"]` holding settings, history, validation KLs and throughput, and
    the thresholds that go with them (refitted under the vectors unless `track_sparsity` is off
    or the best step is the plain mask)."""
    config = config or TrainConfig()
    device = next(model.parameters()).device
    precision = resolve_precision(config.precision, device)
    if train_ids.ndim != 2 or val_ids.ndim != 2 or len(train_ids) == 0 or len(val_ids) == 0:
        raise InvalidArgumentError("training and validation need (windows, length) token ids, at least one window each")
    started = time.perf_counter()

    vectors = SponVectors.zeros(model, config.roles)
    alphas = {name: a.requires_grad_(True) for name, a in vectors.alphas.items()}
    optimizer = torch.optim.AdamW(alphas.values(), lr=config.lr, weight_decay=config.weight_decay)
    run_key = _digest(config.as_dict(), vectors.meta["fingerprint"], thresholds.taus, train_ids, val_ids)
    history, step, tokens_before = TrainHistory(), 0, 0
    best = {"step": 0, "kl": math.inf, "alphas": None, "taus": dict(thresholds.taus)}
    taus = dict(thresholds.taus)  # current thresholds; refitted under the vectors as they train
    if checkpoint and os.path.exists(checkpoint) and not restart:
        state = _load_checkpoint(str(checkpoint), run_key)
        with torch.no_grad():
            for name, a in alphas.items():
                a.copy_(state["alphas"][name])
        optimizer.load_state_dict(state["optimizer"])
        step, best, tokens_before, taus = state["step"], state["best"], state["tokens"], state["taus"]
        history = TrainHistory([tuple(x) for x in state["loss"]], [tuple(x) for x in state["val"]])

    pending: list = []  # (step, loss on the device) not yet read back

    def flush() -> float | None:
        """Read the pending losses back in one host sync; the last one, if any."""
        nonlocal pending
        if not pending:
            return None
        values = torch.stack([v for _, v in pending]).tolist()
        history.loss += [(s, v) for (s, _), v in zip(pending, values)]
        pending = []
        return values[-1]

    def save_state() -> None:
        flush()
        if checkpoint:
            _save_checkpoint(str(checkpoint), {
                "run_key": run_key, "step": step, "tokens": tokens_before + tokens_done, "optimizer": optimizer.state_dict(), "best": best, "taus": taus,
                "alphas": {n: a.detach().cpu() for n, a in alphas.items()},
                "loss": history.loss, "val": history.val})

    eval_batch = config.batch_size
    teacher_started = time.perf_counter()
    train_teacher = teacher_states(model, train_ids, eval_batch, precision, progress)  # (N, L, d)
    val_teacher = teacher_states(model, val_ids, eval_batch, precision, progress)  # (M, L, d)
    teacher_s = time.perf_counter() - teacher_started

    val_s = 0.0

    refit_ids = train_ids[:config.refit_windows]  # (R, L)

    def validate() -> float:
        nonlocal val_s, taus
        _synchronize(device)  # GPU work of earlier steps belongs to training time
        t0 = time.perf_counter()
        if config.track_sparsity and step > 0:
            taus = refine_thresholds(model, refit_ids, thresholds.score, thresholds.levels,
                                     {n: a.detach() for n, a in alphas.items()})
            for name, tau in taus.items():
                sparsifier.hooks[name].tau = tau
        kl = validation_kl(model, dataclasses.replace(thresholds, taus=taus), alphas, val_ids, val_teacher,
                           eval_batch, precision)
        val_s += time.perf_counter() - t0
        if not math.isfinite(kl):
            raise NumericalError(f"validation KL is {kl} at step {step}; lower the learning rate")
        history.val.append((step, kl))
        if kl < best["kl"]:
            best.update(step=step, kl=kl, alphas={n: a.detach().cpu().clone() for n, a in alphas.items()},
                        taus=dict(taus))
        return kl

    sparsifier = Sparsifier(model, dataclasses.replace(thresholds, taus=taus), check=False, alphas=alphas, count=False)
    if not history.val:
        validate()  # step 0: the plain mask, the floor SPON must beat
    base_kl = history.val[0][1]

    train_s, tokens_done = 0.0, 0
    bar = tqdm(total=config.steps, initial=step, desc="SPON", unit="step", disable=not progress)
    try:
        while step < config.steps:
            t0 = time.perf_counter()
            index = _batch_indices(len(train_ids), config.batch_size, step, config.seed)
            batch = train_ids[index].to(device)  # (B, L)
            for group in optimizer.param_groups:
                group["lr"] = config.lr_at(step)
            with sparsifier, _autocast(device, precision):
                student = head_logits(model, final_hidden(model, batch))  # (B, L, V)
                with torch.no_grad():
                    target = head_logits(model, train_teacher[index.to(device)])  # (B, L, V)
                loss = kl_to_teacher(student, target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_done += batch.numel()
            pending.append((step, loss.detach()))
            val_kl = None
            if step % config.eval_every == 0 or step == config.steps or callback or len(pending) >= 10:
                last = flush()
                if not math.isfinite(last):
                    raise NumericalError(f"training KL is {last} at step {step}; lower the learning rate")
                bar.set_postfix(kl=f"{last:.4f}", best_val=f"{best['kl']:.4f}")
            if step % config.eval_every == 0 or step == config.steps:
                _synchronize(device)
            train_s += time.perf_counter() - t0
            if step % config.eval_every == 0 or step == config.steps:
                val_kl = validate()
                bar.set_postfix(kl=f"{history.loss[-1][1]:.4f}", val=f"{val_kl:.4f}", best_val=f"{best['kl']:.4f}")
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.steps:
                save_state()
            bar.update(1)
            if callback:
                callback(step, history.loss[-1][1], val_kl)
    except KeyboardInterrupt:
        save_state()
        raise
    finally:
        bar.close()
        sparsifier.detach()

    result = SponVectors(best["alphas"], dict(vectors.meta))
    refitted = config.track_sparsity and best["step"] > 0
    final_thresholds = dataclasses.replace(thresholds, taus=best["taus"], calibration={
        **thresholds.calibration, "refitted_under_spon": refitted,
        **({"refit_windows": min(config.refit_windows, len(train_ids))} if refitted else {})})
    result.meta["training"] = {
        **config.as_dict(), "precision": precision, "steps_done": step,
        "train_windows": len(train_ids), "val_windows": len(val_ids), "window_len": train_ids.shape[1],
        "train_tokens": tokens_before + tokens_done, "best_step": best["step"], "val_kl_base": base_kl, "val_kl_best": best["kl"],
        "train_s": round(train_s, 3), "teacher_s": round(teacher_s, 3), "val_s": round(val_s, 3),
        "elapsed_s": round(time.perf_counter() - started, 3),
        "tokens_per_s": round(tokens_done / train_s, 1) if train_s > 0 else None,  # this session's steps
        "device": device_record(device), "parameters": result.parameter_count(),
        "history": {"loss": history.loss, "val": history.val}}
    if checkpoint and os.path.exists(checkpoint):
        os.remove(checkpoint)  # the run is complete; its result is the returned vectors
    return result, final_thresholds
