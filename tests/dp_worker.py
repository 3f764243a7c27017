"""One data-parallel run on a tiny model, for tests/test_distributed.py.

Under torchrun every process works on its share; run plainly it is the single process that the
shares must add up to. Rank 0 saves what the run produced to the path given:

    python -m torch.distributed.run --nproc_per_node 2 tests/dp_worker.py train OUT.pt
    python tests/dp_worker.py train OUT.pt
"""

import sys

import torch

from sponlib.data import Windows
from sponlib.distributed import Replicas
from sponlib.models.tiny import tiny_model
from sponlib.perplexity import evaluate
from sponlib.sparsity import quantile_thresholds
from sponlib.spon import TrainConfig, train_spon

STEPS = 20


def tiny_setting():
    """A tiny Llama whose outputs are peaked enough (large initial weights) that masking 70% of
    every projection's inputs costs real KL, and SPON has something to recover; seeded token
    windows for training, validation and thresholds."""
    model = tiny_model("llama", initializer_range=0.3).requires_grad_(False)
    generator = torch.Generator().manual_seed(1)
    train_ids = torch.randint(0, 256, (16, 32), generator=generator)  # (N, L)
    val_ids = torch.randint(0, 256, (6, 32), generator=generator)  # (M, L): 3 per process
    thresholds = quantile_thresholds(model, train_ids[:4], "teal", 0.7)
    return model, thresholds, train_ids, val_ids


def train(replicas: Replicas, track_sparsity: bool) -> dict:
    model, thresholds, train_ids, val_ids = tiny_setting()
    config = TrainConfig(
        steps=STEPS, batch_size=4, lr=3e-2, eval_every=5, checkpoint_every=0, track_sparsity=track_sparsity
    )
    vectors, refitted = train_spon(model, thresholds, train_ids, val_ids, config, progress=False, replicas=replicas)
    return {"alphas": vectors.alphas, "taus": refitted.taus, "training": vectors.meta["training"]}


def perplexity_rows(replicas: Replicas) -> dict:
    model, thresholds, _, val_ids = tiny_setting()
    windows = Windows(val_ids[:5], [("random", i) for i in range(5)], "random", 32, 1, 5)  # 5: uneven shares
    rows = torch.arange(10.0).view(5, 2)[replicas.share(5)]  # this process's uneven share of 5 rows
    return {
        "rows": evaluate(model, [windows], None, batch_size=2, progress=False, replicas=replicas)
        + evaluate(model, [windows], thresholds, batch_size=2, progress=False, replicas=replicas),
        "gathered": replicas.gather_rows(rows, 5),
    }


def main() -> None:
    what, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)  # the processes share the machine's cores
    with Replicas.from_environment("cpu") as replicas:
        if what == "perplexity":
            result = perplexity_rows(replicas)
        else:
            result = train(replicas, track_sparsity=what == "train-tracked")
        result["replicas"] = replicas.describe()
        # every process must end with the same result; rank 0 checks the others against its own
        gathered = [None] * replicas.world_size
        if replicas.active:
            torch.distributed.all_gather_object(gathered, result)
        result["agree"] = all(_same(result, other) for other in gathered if other is not None)
        if replicas.is_main:
            torch.save(result, out)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(
            _same(a[k], b[k]) for k in a if k not in ("train_s", "val_s", "teacher_s", "elapsed_s", "tokens_per_s")
        )
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


if __name__ == "__main__":
    main()
