"""`TrainConfig`: the settings of one SPON training run (recorded in the SPON file), checked on
creation, with the schedules they imply (learning rate per step, windows per forward pass).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..errors import InvalidArgumentError
from ..models.adapters import ROLES
from .distillation import PRECISIONS
from .vectors import check_roles


@dataclass
class TrainConfig:
    """Settings of one SPON training run (recorded in the SPON file)."""

    steps: int = 400  # optimiser steps
    batch_size: int = 8  # windows per step
    micro_batch: int = 0  # windows per forward pass (0: a process's whole share of the step at once)
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
        if self.micro_batch < 0:
            raise InvalidArgumentError(f"micro_batch must be >= 0, 0 for the whole batch (got {self.micro_batch})")
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

    def forward_batch(self, processes: int = 1) -> int:
        """Windows per forward pass: the micro-batch, else a process's share of the step."""
        return self.micro_batch or max(1, self.batch_size // processes)

    def batch_at(self, step: int, n_windows: int) -> torch.Tensor:
        """Indices of the windows of `step`: a fresh seeded permutation every epoch, so that any
        step can be recomputed (a resumed run takes the very same batches)."""
        per_epoch = max(1, n_windows // self.batch_size)
        epoch, k = divmod(step, per_epoch)
        order = torch.randperm(n_windows, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        return order[k * self.batch_size : (k + 1) * self.batch_size]

    def lr_at(self, step: int) -> float:
        """Linear warm-up over the first `warmup` share of steps, then cosine decay to 0."""
        warm = max(1, round(self.warmup * self.steps))
        if step < warm:
            return self.lr * (step + 1) / warm
        progress = (step - warm) / max(1, self.steps - warm)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
