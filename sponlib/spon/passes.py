"""The forward and backward passes of one SPON training step: the step's windows in micro-batches
whose gradients, each weighted by its share, add up to the whole batch's.

Where the micro-batch is left to sponlib (`TrainConfig.micro_batch` 0: the whole share of a step in
one pass) and a pass runs out of GPU memory, the pass is halved and the step starts over, down to
one window per pass; every halving is recorded. An 8B model's default step (32 windows of 512
tokens) needs about 140 GB in one pass; nobody should have to know the micro-batch that fits
before the first run. A micro-batch the user set is theirs: running out of memory with it stays
an error.
"""

from __future__ import annotations

import gc
from typing import Callable

import torch
from tqdm.auto import tqdm


class StepPasses:
    """Runs a step's passes with the current windows per pass (`forward_batch`), halving it on
    running out of memory when `automatic`."""

    def __init__(self, forward_batch: int, automatic: bool):
        self.forward_batch, self.automatic = forward_batch, automatic
        self.out_of_memory: list[tuple[int, int]] = []  # (step, windows per pass that did not fit)

    def run(
        self,
        step: int,
        index: torch.Tensor,
        one_pass: Callable[[torch.Tensor, float], torch.Tensor],
        start_over: Callable[[], None],
    ) -> torch.Tensor:
        """The step's loss: `one_pass(windows, share)` runs forward and backward on the windows
        (a part of `index`, (n,)) with the loss weighted by their share of the step, and returns
        that weighted loss, detached. `start_over()` drops a half-done step's gradients."""
        while True:
            loss = self._try(index, one_pass)
            if loss is not None:
                return loss
            # here, outside the handler, the failed pass's tensors are no longer referenced
            self.out_of_memory.append((step, self.forward_batch))
            start_over()
            self.forward_batch //= 2
            gc.collect()
            torch.cuda.empty_cache()
            tqdm.write(
                f"out of GPU memory at {self.out_of_memory[-1][1]} windows per pass: going on with "
                f"{self.forward_batch} (set micro_batch to choose)"
            )

    def _try(self, index: torch.Tensor, one_pass) -> torch.Tensor | None:
        try:
            loss = 0.0
            for part in index.split(self.forward_batch):
                loss = loss + one_pass(part, len(part) / len(index))
            return loss
        except torch.OutOfMemoryError:
            if not self.automatic or self.forward_batch == 1:
                raise
        return None
