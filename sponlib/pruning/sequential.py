"""Sequential pruning over decoder blocks, as Wanda and SparseGPT both do.

Block by block: run the model on the calibration windows with forward pre-hooks on that block's
projections, gathering each input's statistics (blocks before it already pruned, so it sees the
inputs the pruned model will give it), prune the block, go on to the next. A forward hook on the
current block raises `_Stop` once the block has run, and the pass is abandoned there: gathering
block l's statistics runs blocks 0..l only, never the later blocks or the head.

q/k/v read one input and gate/up another (INPUT_GROUPS): one statistic per shared input.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import InvalidArgumentError
from ..models.adapters import INPUT_GROUPS, Projection, block_projections, decoder_layers
from ..models.hooks import HookSet
from ..models.placement import input_device
from ..progress import no_bars
from .sparsegpt import HessianAccumulator

# role -> its projection; role of an input group's first projection -> statistics of the group's input
BlockPruner = Callable[[dict[str, Projection], dict[str, HessianAccumulator]], None]


class _Stop(Exception):
    """Raised once the block being calibrated has run: the rest of the forward pass is not needed."""


def _raise_stop(module, args, output):
    raise _Stop


@torch.no_grad()
def collect_statistics(
    model: nn.Module,
    ids: torch.Tensor,
    block: int,
    *,
    diagonal_only: bool = False,
    batch_size: int = 4,
) -> dict[str, HessianAccumulator]:
    """Statistics of the inputs of decoder block `block`'s projections over the windows `ids`
    (N, L), on the model as it is now; keyed by the first role of each of INPUT_GROUPS."""
    projections = block_projections(model)[block]
    layer = decoder_layers(model)[block]
    stats = {group[0]: HessianAccumulator(diagonal_only) for group in INPUT_GROUPS}
    ids = ids.to(input_device(model))
    with HookSet() as hooks:
        for role, stat in stats.items():
            hooks.pre(projections[role].module, lambda module, args, stat=stat: stat.add(args[0]))
        hooks.post(layer, _raise_stop)
        for start in range(0, ids.shape[0], batch_size):
            try:
                model(ids[start : start + batch_size], use_cache=False)
            except _Stop:
                continue
            raise RuntimeError(f"decoder block {block} never ran in the model's forward pass")  # broken adapter
    return stats


@torch.no_grad()
def prune_sequentially(
    model: nn.Module,
    ids: torch.Tensor,
    prune_block: BlockPruner,
    *,
    diagonal_only: bool = False,
    batch_size: int = 4,
    progress: bool = True,
    desc: str = "pruning",
) -> None:
    """For each decoder block in order: collect its input statistics on `ids` (N, L) with the blocks
    before it already pruned, then call `prune_block(projections, statistics)` to prune it."""
    if not (isinstance(batch_size, int) and batch_size > 0):
        raise InvalidArgumentError(f"batch_size must be a positive integer; got {batch_size!r}")
    blocks = block_projections(model)
    for index in tqdm(range(len(blocks)), desc=desc, unit="block", disable=no_bars(progress)):
        stats = collect_statistics(model, ids, index, diagonal_only=diagonal_only, batch_size=batch_size)
        prune_block(blocks[index], stats)
        del stats  # an (in, in) float64 matrix per input: free before the next block's
