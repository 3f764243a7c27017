"""SPON training: fit the spontaneous-neuron vectors so that the sparse model's next-token
distribution matches the dense model's, KL(p_dense ‖ p_sparse) averaged over every position.

What makes it fast:
- The teacher never runs twice on a window: its final hidden states (after the last norm) are
  computed once for all training and validation windows and kept on the device; a step's teacher
  logits are one head matmul on them, exactly the dense model's logits, in the student's precision.
- Model weights are frozen: backward computes input gradients only, no weight gradients.
- The head's logits exist a chunk of positions at a time, their backward run chunk by chunk
  (distillation.kl_backward): at a 128k vocabulary a pass's whole logits would take tens of GB.
- On CUDA the forward runs under bfloat16 autocast; the α stay float32; losses are read back every few steps.
- `micro_batch` bounds memory: a step's windows go through in parts whose gradients, each
  weighted by its share, add up to the whole batch's; left at 0, a pass that runs out of GPU
  memory is halved (sponlib.spon.passes).

What makes it safe:
- Thresholds follow the vectors. SPON pulls the hidden states back towards the dense model's,
  which moves the inputs every downstream threshold was fitted on: with fixed thresholds a run
  at 0.7 ends up zeroing only about 0.62 of the inputs, and part of its "recovery" is merely less
  sparsity. So before every validation the thresholds are refitted (one sparse-aware pass over a
  few training windows, `sponlib.sparsity.refine_thresholds`, vectors in place), each at its
  own level, and the thresholds of the best step are returned and saved with the vectors.
- A validation KL on held-out windows (never the test novel) at step 0 (α = 0, the plain mask)
  and every `eval_every` steps; the best step's vectors are returned, so SPON never ends worse
  than its base mask on validation.
- A checkpoint (vectors, optimiser, best so far, history) every `checkpoint_every` steps and on
  Ctrl-C, written atomically; an interrupted run resumes from it bit for bit, and refuses a
  checkpoint made with other settings, data or thresholds.

Beyond one GPU:
- A model spread by a device map (sponlib.models.placement) trains as it is: each vector lives
  where its projection computes, the teacher states where the final norm puts them.
- Data-parallel processes (sponlib.distributed; torchrun or accelerate launch) split every batch
  evenly and average the vectors' gradients: the steps one process would take on the whole
  batch, up to floating-point order. Teacher and validation windows are shared out; rank 0 alone
  checkpoints, and a checkpoint resumes under any number of processes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..distributed import Replicas
from ..errors import InvalidArgumentError, NumericalError
from ..models.head import final_hidden
from ..models.placement import device_record, input_device, is_sharded, model_devices, placement_record, synchronize
from ..progress import no_bars
from ..sparsity.calibration import refine_thresholds
from ..sparsity.sparsifier import Sparsifier
from ..sparsity.thresholds import Thresholds
from .bounds import ShiftBound
from .checkpoint import load_checkpoint, run_key, save_checkpoint
from .config import TrainConfig
from .distillation import autocast, kl_backward, resolve_precision, teacher_states, validation_kl
from .passes import StepPasses
from .vectors import SponVectors


@dataclass
class TrainHistory:
    """Loss per step and validation KL per evaluation; what the notebooks plot."""

    loss: list[tuple[int, float]] = field(default_factory=list)  # (step, train KL)
    val: list[tuple[int, float]] = field(default_factory=list)  # (step, validation KL)
    monitor: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # text -> (step, KL)


def train_spon(
    model,
    thresholds: Thresholds,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    config: TrainConfig | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    restart: bool = False,
    progress: bool = True,
    callback: Callable[[int, float, float | None], None] | None = None,
    replicas: Replicas | None = None,
    refit_ids: torch.Tensor | None = None,
    monitor: dict[str, torch.Tensor] | None = None,
    shift_limits: dict[str, float] | None = None,
) -> tuple[SponVectors, Thresholds]:
    """Train one vector per projection (of `config.roles`) against the dense model.

    train_ids (N, L) and val_ids (M, L) are token windows; validation must be held-out text.
    `checkpoint` (a file path) makes the run resumable; `callback(step, loss, val_kl or None)` is
    called after every step (for live plots). Returns the best vectors on validation (on the
    CPU), their `meta["training"]` holding settings, history, validation KLs and throughput, and
    the thresholds that go with them (refitted under the vectors unless `track_sparsity` is off
    or the best step is the plain mask).

    `replicas` (sponlib.distributed) makes this one of several data-parallel processes: call it in
    every process with the same arguments; each returns the same vectors.

    `refit_ids` (R, L): the windows the thresholds are refitted on (default: the first training
    windows); give calibration text to keep the sparsity defined on the text it was calibrated on
    when training on another. `monitor` (name -> (M, L) windows): texts whose KL is recorded beside
    the validation KL at every validation (history["monitor"]), never used to choose. `shift_limits`
    (projection -> limit): a bound ‖W α‖ ≤ limit kept after every step (sponlib.spon.bounds)."""
    replicas = replicas or Replicas()
    trainer = _Trainer(
        model,
        thresholds,
        train_ids,
        val_ids,
        config or TrainConfig(),
        checkpoint,
        progress and replicas.is_main,
        replicas,
        refit_ids,
        monitor or {},
        shift_limits,
    )
    if checkpoint and os.path.exists(checkpoint) and not restart:
        trainer.resume()
    replicas.barrier()  # no process may remove the checkpoint while another still reads it
    result = trainer.run(callback)
    if checkpoint and os.path.exists(checkpoint) and replicas.is_main:
        os.remove(checkpoint)  # the run is complete; its result is what we return
    return result


class _Trainer:
    """The state of one training run: vectors, optimiser, current thresholds, best step, history."""

    def __init__(
        self,
        model,
        thresholds: Thresholds,
        train_ids: torch.Tensor,
        val_ids: torch.Tensor,
        config: TrainConfig,
        checkpoint,
        progress: bool,
        replicas: Replicas,
        refit_ids: torch.Tensor | None,
        monitor: dict[str, torch.Tensor],
        shift_limits: dict[str, float] | None,
    ):
        if train_ids.ndim != 2 or val_ids.ndim != 2 or len(train_ids) == 0 or len(val_ids) == 0:
            raise InvalidArgumentError("training and validation take (windows, length) ids, at least one window each")
        if replicas.active and is_sharded(model):
            raise InvalidArgumentError(
                "a model spread by a device map trains in one process; give each "
                "data-parallel process a whole model on its own device instead"
            )
        self.batch_share = replicas.batch_share(config.batch_size)  # refuses a batch that does not split
        self.passes = StepPasses(config.forward_batch(replicas.world_size), automatic=not config.micro_batch)
        replicas.share(len(val_ids), "validation windows")  # refuses too few now, not at the first validation
        self.started = time.perf_counter()
        self.model, self.thresholds, self.config, self.progress = model, thresholds, config, progress
        self.replicas = replicas
        self.train_ids, self.val_ids = train_ids, val_ids  # (N, L), (M, L)
        self.refit_ids = (train_ids if refit_ids is None else refit_ids)[: config.refit_windows]  # (R, L)
        self.monitor_ids = monitor
        self.checkpoint = str(checkpoint) if checkpoint else None
        self.device = input_device(model)  # where token ids go
        self.devices = model_devices(model)  # what timing synchronises
        self.precision = resolve_precision(config.precision, self.device)

        self.vectors = SponVectors.zeros(model, config.roles)
        self.alphas = {name: a.requires_grad_(True) for name, a in self.vectors.alphas.items()}
        self.optimizer = torch.optim.AdamW(self.alphas.values(), lr=config.lr, weight_decay=config.weight_decay)
        self.bound = ShiftBound(model, self.alphas, shift_limits) if shift_limits else None
        self.run_key = run_key(
            config.as_dict(),
            self.vectors.meta["fingerprint"],
            thresholds.taus,
            train_ids,
            val_ids,
            self.refit_ids,
            sorted(monitor),
            shift_limits or {},
        )
        self.history, self.step, self.tokens_before, self.tokens_done = TrainHistory(), 0, 0, 0
        self.taus = dict(thresholds.taus)  # current thresholds; refitted under the vectors as they train
        self.best = {"step": 0, "kl": math.inf, "alphas": None, "taus": dict(self.taus)}
        self.pending: list = []  # (step, loss on the device) not yet read back
        self.train_s = self.val_s = self.teacher_s = 0.0
        self.sparsifier = Sparsifier(model, self._current_thresholds(), check=False, alphas=self.alphas, count=False)

    def _current_thresholds(self) -> Thresholds:
        return dataclasses.replace(self.thresholds, taus=self.taus)

    # ------------------------------------------------------------ checkpoints

    def resume(self) -> None:
        state = load_checkpoint(self.checkpoint, self.run_key)
        with torch.no_grad():
            for name, a in self.alphas.items():
                a.copy_(state["alphas"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.best, self.taus = state["step"], state["best"], state["taus"]
        self.tokens_before = state["tokens"]
        self.history = TrainHistory(
            [tuple(x) for x in state["loss"]],
            [tuple(x) for x in state["val"]],
            {name: [tuple(x) for x in kls] for name, kls in state.get("monitor", {}).items()},
        )
        for name, tau in self.taus.items():
            self.sparsifier.hooks[name].tau = tau

    def save(self) -> None:
        self.flush()
        if self.checkpoint and self.replicas.is_main:
            save_checkpoint(
                self.checkpoint,
                {
                    "run_key": self.run_key,
                    "step": self.step,
                    "tokens": self.tokens_before + self.tokens_done,
                    "optimizer": self.optimizer.state_dict(),
                    "best": self.best,
                    "taus": self.taus,
                    "alphas": {n: a.detach().cpu() for n, a in self.alphas.items()},
                    **dataclasses.asdict(self.history),  # loss, val, monitor
                },
            )

    def flush(self) -> float | None:
        """Read the pending losses back in one host sync; the last one, if any."""
        if not self.pending:
            return None
        values = self.replicas.mean(torch.stack([v for _, v in self.pending])).tolist()  # the whole batch's KL
        self.history.loss += [(s, v) for (s, _), v in zip(self.pending, values)]
        self.pending = []
        return values[-1]

    # ------------------------------------------------------------ steps

    def validate(self) -> float:
        """Refit the thresholds under the current vectors (after step 0), then the validation KL;
        keeps the best step."""
        synchronize(self.devices)  # GPU work of earlier steps belongs to training time
        started = time.perf_counter()
        if self.config.track_sparsity and self.step > 0 and self.thresholds.refittable:
            alphas = {n: a.detach() for n, a in self.alphas.items()}
            levels = self.thresholds.levels
            taus = refine_thresholds(
                self.model, self.refit_ids, self.thresholds.score, levels, alphas, self.sparsifier.completions
            )
            self.taus = self.replicas.broadcast(taus)  # one set of thresholds, even if GPUs round differently
            for name, tau in self.taus.items():
                self.sparsifier.hooks[name].tau = tau
        kl = self._kl(self.val_ids, self.val_teacher)
        for name, ids in self.monitor_ids.items():
            self.history.monitor.setdefault(name, []).append((self.step, self._kl(ids, self.monitor_teacher[name])))
        self.val_s += time.perf_counter() - started
        if not math.isfinite(kl):
            raise NumericalError(f"validation KL is {kl} at step {self.step}; lower the learning rate")
        self.history.val.append((self.step, kl))
        if kl < self.best["kl"]:
            self.best = {
                "step": self.step,
                "kl": kl,
                "taus": dict(self.taus),
                "alphas": {n: a.detach().cpu().clone() for n, a in self.alphas.items()},
            }
        return kl

    def _kl(self, ids: torch.Tensor, teacher: torch.Tensor) -> float:
        """KL(p_dense ‖ p_sparse) on windows (M, L) whose teacher states are `teacher` (M, L, d)."""
        thresholds = self._current_thresholds()
        return validation_kl(
            self.model, thresholds, self.alphas, ids, teacher, self.passes.forward_batch, self.precision, self.replicas
        )

    def train_step(self) -> None:
        config = self.config
        # the whole batch's windows, the same in every process; this process takes its part
        index = config.batch_at(self.step, len(self.train_ids))[self.batch_share]
        for group in self.optimizer.param_groups:
            group["lr"] = config.lr_at(self.step)
        loss = self.passes.run(self.step, index, self._one_pass, lambda: self.optimizer.zero_grad(set_to_none=True))
        # equal parts, so the mean of the processes' gradients is the whole batch's gradient
        self.replicas.all_reduce_mean_([a.grad for a in self.alphas.values()])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.bound is not None:
            self.bound.apply()
        self.step += 1
        self.tokens_done += index.numel() * self.train_ids.shape[1] * self.replicas.world_size
        self.pending.append((self.step, loss.detach()))

    def _one_pass(self, part: torch.Tensor, share: float) -> torch.Tensor:
        """Forward and backward on training windows `part` (m,), the loss weighted by `share`."""
        batch = self.train_ids[part].to(self.device)  # (m, L)
        with self.sparsifier, autocast(self.device, self.precision):
            hidden = final_hidden(self.model, batch)  # (m, L, d)
        teacher = self.train_teacher[part.to(self.train_teacher.device)]  # (m, L, d)
        return kl_backward(self.model, hidden, teacher, share, self.precision)  # the head a chunk at a time

    # ------------------------------------------------------------ the run

    def run(self, callback=None) -> tuple[SponVectors, Thresholds]:
        config = self.config
        started = time.perf_counter()
        self.train_teacher = teacher_states(
            self.model, self.train_ids, self.passes.forward_batch, self.precision, self.progress, self.replicas
        )  # (N, L, d)
        self.val_teacher = teacher_states(
            self.model, self.val_ids, self.passes.forward_batch, self.precision, self.progress, self.replicas
        )  # (M, L, d)
        self.monitor_teacher = {
            name: teacher_states(
                self.model, ids, self.passes.forward_batch, self.precision, self.progress, self.replicas
            )
            for name, ids in self.monitor_ids.items()
        }
        self.teacher_s = time.perf_counter() - started
        if not self.history.val:
            self.validate()  # step 0: the plain mask, the floor SPON must beat
        bar = tqdm(total=config.steps, initial=self.step, desc="SPON", unit="step", disable=no_bars(self.progress))
        try:
            while self.step < config.steps:
                started = time.perf_counter()
                self.train_step()
                validating = self.step % config.eval_every == 0 or self.step == config.steps
                if validating or callback or len(self.pending) >= 10:
                    last = self.flush()
                    if not math.isfinite(last):
                        raise NumericalError(f"training KL is {last} at step {self.step}; lower the learning rate")
                    bar.set_postfix(kl=f"{last:.4f}", best_val=f"{self.best['kl']:.4f}")
                if validating:
                    synchronize(self.devices)
                self.train_s += time.perf_counter() - started
                val_kl = self.validate() if validating else None
                if val_kl is not None:
                    bar.set_postfix(
                        kl=f"{self.history.loss[-1][1]:.4f}", val=f"{val_kl:.4f}", best_val=f"{self.best['kl']:.4f}"
                    )
                if config.checkpoint_every and self.step % config.checkpoint_every == 0 and self.step < config.steps:
                    self.save()
                bar.update(1)
                if callback:
                    callback(self.step, self.history.loss[-1][1], val_kl)
        except KeyboardInterrupt:
            # several processes may be interrupted at different points, where a collective would
            # hang: they keep the last periodic checkpoint instead
            if not self.replicas.active:
                self.save()
            raise
        finally:
            bar.close()
            self.sparsifier.detach()
        return self._result()

    def _result(self) -> tuple[SponVectors, Thresholds]:
        config, best = self.config, self.best
        result = SponVectors(best["alphas"], dict(self.vectors.meta))
        refitted = config.track_sparsity and best["step"] > 0 and self.thresholds.refittable
        thresholds = dataclasses.replace(
            self.thresholds,
            taus=best["taus"],
            calibration={
                **self.thresholds.calibration,
                "refitted_under_spon": refitted,
                **({"refit_windows": len(self.refit_ids)} if refitted else {}),
            },
        )
        result.meta["training"] = {
            **config.as_dict(),
            "precision": self.precision,
            "steps_done": self.step,
            "train_windows": len(self.train_ids),
            "val_windows": len(self.val_ids),
            "window_len": self.train_ids.shape[1],
            "train_tokens": self.tokens_before + self.tokens_done,
            "forward_batch": self.passes.forward_batch,  # windows per pass at the end
            "out_of_memory": self.passes.out_of_memory,
            "best_step": best["step"],
            "val_kl_base": self.history.val[0][1],
            "val_kl_best": best["kl"],
            "train_s": round(self.train_s, 3),
            "teacher_s": round(self.teacher_s, 3),
            "val_s": round(self.val_s, 3),
            "elapsed_s": round(time.perf_counter() - self.started, 3),
            # this session's steps only, when resumed
            "tokens_per_s": round(self.tokens_done / self.train_s, 1) if self.train_s > 0 else None,
            "device": device_record(self.device),
            "placement": placement_record(self.model),
            **self.replicas.describe(),
            "parameters": result.parameter_count(),
            "shift_bounded": self.bound is not None,
            "history": dataclasses.asdict(self.history),
        }
        return result, thresholds
