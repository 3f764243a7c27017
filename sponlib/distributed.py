"""Data parallelism over torch.distributed: several processes, each with the whole model and the
same SPON vectors, each working on its share of every batch.

Start the processes with torchrun, or with `accelerate launch`, which sets the same variables:

    torchrun --nproc_per_node 2 -m sponlib train --device cuda ...

`Replicas.from_environment` joins the process group that the launcher describes (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), over NCCL when the processes use CUDA and
gloo on the CPU. Without a launcher it stands for the one process, and every operation below is
the identity, so single-process code pays nothing.

What must agree across processes is made to agree here: gradients are averaged
(`all_reduce_mean_`), sums are summed (`sum`), per-process rows are gathered (`gather_rows`), and
anything decided once is broadcast from rank 0 (`broadcast`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import InvalidArgumentError
from .models.loading import resolve_device

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_world_size() -> int:
    """How many processes a launcher started (1 when none did)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise InvalidArgumentError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from None


def check_even_batch(batch_size: int, world_size: int) -> None:
    """Every process must get as many windows of a batch as the others, so that the mean of their
    gradients is the gradient of the whole batch."""
    if batch_size % world_size:
        raise InvalidArgumentError(
            f"a batch of {batch_size} windows does not split evenly over {world_size} "
            f"processes; use a multiple of {world_size}"
        )


@dataclass
class Replicas:
    """This process's place among the data-parallel processes, and their collectives."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # "nccl" or "gloo"; None for the single process
    owns_group: bool = False  # we initialised the process group, so we tear it down

    # ------------------------------------------------------------ set-up

    @classmethod
    def from_environment(cls, device: str | torch.device = "cpu") -> "Replicas":
        """Join the launcher's process group (one process: no group). `device` is what the user
        asked for: "cuda" means each process's own GPU (cuda:LOCAL_RANK), "cpu" means gloo."""
        world_size = launched_world_size()
        if world_size <= 1:
            return cls()
        missing = [name for name in LAUNCH_VARIABLES if name not in os.environ]
        if missing:
            raise InvalidArgumentError(
                f"WORLD_SIZE is {world_size} but {', '.join(missing)} "
                "unset; start the processes with torchrun or accelerate launch"
            )
        rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
        device = resolve_device(device)  # "auto", and a clear error for CUDA without a GPU
        if device.type == "cuda":
            if device.index is not None:
                raise InvalidArgumentError(
                    f"with {world_size} processes each uses its own GPU (LOCAL_RANK); give --device cuda, not {device}"
                )
            if torch.cuda.device_count() <= local_rank:
                raise InvalidArgumentError(
                    f"process {rank} needs GPU {local_rank}, but this machine shows "
                    f"{torch.cuda.device_count()}; start fewer processes per node"
                )
            torch.cuda.set_device(local_rank)
        backend = "nccl" if device.type == "cuda" else "gloo"
        owns_group = not dist.is_initialized()
        if owns_group:
            # naming the GPU sets NCCL's communicator up now rather than in the first timed collective
            bound = {"device_id": torch.device("cuda", local_rank)} if backend == "nccl" else {}
            dist.init_process_group(backend, rank=rank, world_size=world_size, **bound)
            dist.barrier()  # every process has arrived: what follows is work, not waiting for start-up
        return cls(rank, world_size, local_rank, dist.get_backend(), owns_group)

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints, writes files and checkpoints."""
        return self.rank == 0

    def device(self, requested: str | torch.device) -> torch.device:
        """This process's device for what the user asked: cuda -> cuda:LOCAL_RANK."""
        device = torch.device(requested)
        if self.active and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def describe(self) -> dict:
        """For result records."""
        return {"processes": self.world_size, "backend": self.backend}

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

    def __enter__(self) -> "Replicas":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ splitting work

    def share(self, n: int, what: str = "windows") -> slice:
        """This process's contiguous share of n items, sizes differing by at most one."""
        if n < self.world_size:
            raise InvalidArgumentError(
                f"{n} {what} cannot be shared by {self.world_size} processes; "
                f"use at least {self.world_size}, or fewer processes"
            )
        return self._share_of(self.rank, n)

    def _share_of(self, rank: int, n: int) -> slice:
        base, extra = divmod(n, self.world_size)
        start = rank * base + min(rank, extra)
        return slice(start, start + base + (rank < extra))

    def batch_share(self, batch_size: int) -> slice:
        """This process's part of a batch of windows."""
        check_even_batch(batch_size, self.world_size)
        per_process = batch_size // self.world_size
        return slice(self.rank * per_process, (self.rank + 1) * per_process)

    # ------------------------------------------------------------ collectives

    def _comm_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    def all_reduce_mean_(self, tensors: list[torch.Tensor]) -> None:
        """In place: every tensor becomes its mean over the processes (one collective)."""
        if not self.active or not tensors:
            return
        flat = torch.cat([t.reshape(-1).to(self._comm_device(), torch.float32) for t in tensors])  # (sum of sizes,)
        dist.all_reduce(flat)
        flat /= self.world_size
        for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
            t.copy_(part.view_as(t))

    def _reduce(self, values: torch.Tensor, op) -> torch.Tensor:
        if not self.active:
            return values
        reduced = values.to(self._comm_device(), torch.float64).clone()
        dist.all_reduce(reduced, op=op)
        return reduced.to(values.device)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """The sum over processes of a tensor every process holds (float64, on the tensor's device)."""
        return self._reduce(values, dist.ReduceOp.SUM)

    def minimum(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise minimum over processes (float64, on the tensor's device)."""
        return self._reduce(values, dist.ReduceOp.MIN)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        return self.sum(values) / self.world_size if self.active else values

    def gather_rows(self, rows: torch.Tensor, n: int) -> torch.Tensor:
        """Concatenate every process's `share(n)` rows, in rank order: (share, ...) -> (n, ...)
        on every process."""
        if not self.active:
            return rows
        sizes = [len(range(n)[self._share_of(rank, n)]) for rank in range(self.world_size)]
        padded = rows.new_zeros((max(sizes),) + tuple(rows.shape[1:]), device=self._comm_device())  # all_gather
        padded[: len(rows)] = rows  # needs equal shapes
        pieces = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(pieces, padded)
        return torch.cat([piece[:size] for piece, size in zip(pieces, sizes)]).to(rows.device)

    def broadcast(self, value):
        """Rank 0's `value` on every process (any picklable object)."""
        if not self.active:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()
