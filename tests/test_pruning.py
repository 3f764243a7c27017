"""Weight-pruning baselines: Wanda and SparseGPT on hand-worked layers, SparseGPT against a slow
reference written from the paper's formula, exact sparsity on every tiny architecture, the
sequential block-by-block statistics and their early stop, and refused arguments."""

import pytest
import torch

from sponlib.errors import InvalidArgumentError
from sponlib.models import block_projections, decoder_layers, iter_projections
from sponlib.models.tiny import TINY_ARCHITECTURES, tiny_model
from sponlib.pruning import (
    HessianAccumulator,
    collect_statistics,
    parse_pattern,
    prune_model,
    prune_sequentially,
    sparsegpt_prune,
    wanda_mask,
)


def test_parse_pattern():
    assert parse_pattern("0.5") == 0.5 and parse_pattern("50%") == 0.5 and parse_pattern(" 25 % ") == 0.25
    assert parse_pattern("2:4") == (2, 4) and parse_pattern(0.3) == 0.3 and parse_pattern((1, 2)) == (1, 2)


def test_wanda_hand_worked():
    weight = torch.tensor([[1.0, -2.0, 3.0, -4.0], [4.0, 3.0, -2.0, 1.0]])
    norms = torch.tensor([4.0, 1.0, 1.0, 0.25])
    # scores |W| · ‖X‖: row 0 -> [4, 2, 3, 1], row 1 -> [16, 3, 2, 0.25]
    # (by magnitude alone row 0 would keep columns 2, 3 instead)
    half = [[True, False, True, False], [True, True, False, False]]
    assert wanda_mask(weight, norms, 0.5).tolist() == half
    assert wanda_mask(weight, norms, (2, 4)).tolist() == half  # one group of 4 per row: the same choice
    assert wanda_mask(weight, norms, 0.25).tolist() == [[True, True, True, False], [True, True, True, False]]
    # 1:2, groups (cols 0-1, cols 2-3): row 0 (4, 2) (3, 1), row 1 (16, 3) (2, 0.25)
    assert wanda_mask(weight, norms, (1, 2)).tolist() == [[True, False, True, False], [True, False, True, False]]


def test_sparsegpt_hand_worked_compensation():
    weight = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    hessian = torch.tensor([[2.0, 1.0], [1.0, 4.0]], dtype=torch.float64)
    # H⁻¹ = [[4, -1], [-1, 2]] / 7; its upper Cholesky factor U has U_00² = 4/7 and U_11² = 1/H_22 = 1/4,
    # so the saliencies w²/U_ii² are 1 / (4/7) = 1.75 and 4 / (1/4) = 16: column 0 goes.
    pruned = sparsegpt_prune(weight, hessian, 0.5, blocksize=2, percdamp=0.0)
    # optimal compensation: w2 + w1 · H_12 / H_22 = 2 + 1 · 1/4
    torch.testing.assert_close(pruned, torch.tensor([[0.0, 2.25]], dtype=torch.float64), rtol=0, atol=1e-12)


def _correlated_inputs(tokens=256, features=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    # each input channel mixes in a little of the others: correlated, as LLM activations are, but not
    # so ill-conditioned that 1% dampening dominates
    mixing = (
        torch.eye(features, dtype=torch.float64)
        + 0.5 * torch.randn(features, features, generator=g).double() / features**0.5
    )
    return torch.randn(tokens, features, generator=g, dtype=torch.float64) @ mixing  # (tokens, in)


def _slow_reference(weight, hessian, keep):
    """Columns in order; for F = the columns not yet processed, H_F⁻¹ recomputed explicitly, and a
    pruned w_i moves the rest of F by δ = −(w_i / [H_F⁻¹]_ii) · H_F⁻¹[:, i] (row by row)."""
    w = weight.clone()
    columns = w.shape[1]
    for i in range(columns):
        inverse = torch.linalg.inv(hessian[i:, i:])  # H_F⁻¹, F = i..in-1; column i is its first
        pruned = ~keep[:, i]
        delta = -(w[:, i] / inverse[0, 0])[:, None] * inverse[:, 0][None, :]  # (out, |F|)
        w[pruned, i:] += delta[pruned]
    return w * keep


@pytest.mark.parametrize("pattern,blocksize", [(0.5, 16), (0.5, 5), (0.25, 4), ((2, 4), 8), ((1, 4), 4)])
def test_sparsegpt_equals_the_slow_reference(pattern, blocksize):
    x = _correlated_inputs()
    hessian = x.T @ x
    weight = torch.randn(8, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    pruned = sparsegpt_prune(weight, hessian, pattern, blocksize=blocksize, percdamp=0.01)
    keep = pruned != 0
    damped = hessian + 0.01 * hessian.diagonal().mean() * torch.eye(16, dtype=torch.float64)
    torch.testing.assert_close(pruned, _slow_reference(weight, damped, keep), rtol=0, atol=1e-6)
    if blocksize == 16:  # one block: the mask is the lowest w² / U_ii² of each row of the original weight
        u = torch.linalg.cholesky(torch.linalg.inv(damped), upper=True)
        saliency = weight.square() / u.diagonal().square()
        assert torch.equal(keep, saliency >= saliency.topk(8, dim=1).values[:, -1:])


@pytest.mark.parametrize("pattern", [0.5, (2, 4)])
def test_sparsegpt_reconstructs_better_than_plain_masking(pattern):
    x = _correlated_inputs(features=32).float()  # (tokens, in)
    hessian = HessianAccumulator()
    for batch in x.split(64):
        hessian.add(batch)
    torch.testing.assert_close(hessian.norms(), x.double().norm(dim=0))
    weight = torch.randn(16, 32, generator=torch.Generator().manual_seed(3))
    pruned = sparsegpt_prune(weight, hessian.hessian, pattern)
    assert pruned.dtype == torch.float32
    keep = pruned != 0
    error = ((weight - pruned) @ x.T).norm()
    assert error < ((weight - weight * keep) @ x.T).norm()  # same mask, no compensation
    wanda_keep = wanda_mask(weight, hessian.norms(), pattern)
    assert error < ((weight - weight * wanda_keep) @ x.T).norm()


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_exact_sparsity_on_every_architecture(arch, method):
    ids = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
    for pattern in ("50%", "2:4"):
        model = tiny_model(arch)
        summary = prune_model(model, ids, method, pattern, batch_size=2, progress=False)
        assert summary["method"] == method and summary["pattern"] == pattern
        assert summary["windows"] == 4 and summary["tokens"] == 64 and summary["overall_zero_share"] == 0.5
        for p in iter_projections(model):
            w = p.module.weight
            assert summary["zero_share"][p.name] == 0.5
            if pattern == "50%":
                assert ((w == 0).sum(dim=1) == p.in_features // 2).all(), p.name
            else:
                assert ((w.reshape(p.out_features, -1, 4) == 0).sum(dim=-1) == 2).all(), p.name
        with torch.no_grad():
            assert torch.isfinite(model(ids).logits).all()


def test_statistics_of_a_block_are_collected_after_the_blocks_before_it_were_pruned():
    ids = torch.randint(0, 256, (6, 16), generator=torch.Generator().manual_seed(0))
    model = tiny_model("llama")
    dense = collect_statistics(model, ids, 1, batch_size=4)
    assert set(dense) == {"q", "o", "gate", "down"} and dense["q"].tokens == dense["gate"].tokens == 6 * 16
    seen = {}

    def prune_block(block, stats):
        index = next(iter(block.values())).block
        seen[index] = stats["q"].hessian.clone()
        for p in block.values():
            p.module.weight.copy_(sparsegpt_prune(p.module.weight, stats[_SHARED.get(p.role, p.role)].hessian, 0.5))
        if index == 0:  # what block 1's inputs are once block 0 is pruned (other batching: same sum)
            seen["block 0 pruned"] = collect_statistics(model, ids, 1, batch_size=3)["q"].hessian.clone()

    prune_sequentially(model, ids, prune_block, batch_size=4, progress=False)
    # float32 partial sums: batching changes the last digits
    torch.testing.assert_close(seen[0], dense_statistics_of_block_0(ids), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(seen[1], seen["block 0 pruned"], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(seen[1], dense["q"].hessian, rtol=1e-3)  # pruning block 0 changed block 1's inputs


def dense_statistics_of_block_0(ids):
    return collect_statistics(tiny_model("llama"), ids, 0, batch_size=6)["q"].hessian


_SHARED = {"k": "q", "v": "q", "up": "gate"}  # role -> the role its input statistics are kept under


def test_one_pass_per_block_without_the_head():
    ids = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
    model = tiny_model("qwen3")
    calls = {"first": 0, "last": 0, "head": 0}
    for key, module in (
        ("first", decoder_layers(model)[0]),
        ("last", decoder_layers(model)[-1]),
        ("head", model.lm_head),
    ):
        module.register_forward_hook(lambda *a, key=key: calls.__setitem__(key, calls[key] + 1))
    prune_model(model, ids, "wanda", "50%", batch_size=2, progress=False)
    assert calls == {"first": 4, "last": 2, "head": 0}  # block 0: passes for blocks 0 and 1; block 1: its own


@pytest.mark.parametrize(
    "pattern", [1.0, -0.1, "100%", "150%", "4:2", "0:4", "2:2", "2:4:8", "half", float("nan"), True]
)
def test_bad_patterns_are_refused(pattern):
    with pytest.raises(InvalidArgumentError):
        parse_pattern(pattern)


def test_bad_arguments_are_refused_before_any_weight_changes():
    ids = torch.randint(0, 256, (2, 8))
    model = tiny_model("llama", intermediate_size=50)  # down_proj has 50 inputs: not a multiple of 4
    before = [p.module.weight.clone() for p in iter_projections(model)]
    for method, pattern, kwargs in [
        ("wanda", "3:4", {}),
        ("sparsegpt", "2:4", {}),
        ("magnitude", 0.5, {}),
        ("wanda", 0.5, {"batch_size": 0}),
        ("sparsegpt", 0.5, {"percdamp": -1.0}),
        ("sparsegpt", 0.5, {"blocksize": 0}),
    ]:
        with pytest.raises(InvalidArgumentError):
            prune_model(model, ids, method, pattern, progress=False, **kwargs)
    with pytest.raises(InvalidArgumentError, match="multiple of M"):
        prune_model(tiny_model("llama"), ids, "sparsegpt", "2:4", blocksize=6, progress=False)
    for bad_ids in (ids[0], ids.float(), ids[:0]):
        with pytest.raises(InvalidArgumentError):
            prune_model(model, bad_ids, "wanda", 0.5, progress=False)
    assert all(torch.equal(w, p.module.weight) for w, p in zip(before, iter_projections(model)))
    assert "down_proj" in block_projections(model)[0]["down"].name
