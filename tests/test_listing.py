"""Listing norms (sponlib.kernels.listing) on a tiny Llama in float32, through the ops' torch
references: the listed path gives the fused path's logits, runs where it should (one token, teal,
0.5 and up) and nowhere else, refuses what it cannot serve, and list_out restores the model."""

import pytest
import torch

from sponlib.errors import UnsupportedArchitectureError
from sponlib.kernels import listed_ops, swap_in, swap_out
from sponlib.kernels.listing import ListingRMSNorm, list_in, list_out
from sponlib.models.tiny import tiny_model
from sponlib.sparsity import quantile_thresholds


def _ids(tokens: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (1, tokens), generator=torch.Generator().manual_seed(seed))  # (1, T)


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits  # (1, T, V)


def _counting(monkeypatch) -> list:
    """Calls of the listed GEMV's reference, counted."""
    calls = []
    reference = listed_ops._listed_gemv_torch

    def counted(*args):
        calls.append(args[-1])  # segments
        return reference(*args)

    monkeypatch.setattr(listed_ops, "_listed_gemv_torch", counted)
    return calls


@pytest.fixture
def model():
    torch.manual_seed(0)
    return tiny_model("llama")


def test_the_listed_path_gives_the_fused_paths_logits(model, monkeypatch):
    thresholds = quantile_thresholds(model, _ids(16, seed=99), "teal", 0.5)
    swap_in(model, thresholds, check=False, fuse=True)
    ids = _ids(1)
    expected = _logits(model, ids)
    calls = _counting(monkeypatch)
    list_in(model)
    torch.testing.assert_close(_logits(model, ids), expected, rtol=1e-5, atol=1e-5)
    blocks = len(model.model.layers)
    assert sorted(map(len, calls)) == [2] * blocks + [3] * blocks  # every q/k/v and gate/up group read lists
    calls.clear()
    _logits(model, _ids(5))  # five tokens: no lists, the groups threshold x themselves
    assert not calls


def test_lists_only_from_the_band_of_sparsity_one_half(model, monkeypatch):
    thresholds = quantile_thresholds(model, _ids(16, seed=99), "teal", 0.25)
    swap_in(model, thresholds, check=False, fuse=True)
    expected = _logits(model, _ids(1))
    calls = _counting(monkeypatch)
    list_in(model)
    torch.testing.assert_close(_logits(model, _ids(1)), expected)
    assert not calls


def test_list_in_needs_fused_groups_and_list_out_restores_the_norms(model):
    norms = [layer.input_layernorm for layer in model.model.layers]
    thresholds = quantile_thresholds(model, _ids(16, seed=99), "teal", 0.5)
    swap_in(model, thresholds, check=False)  # not fused
    with pytest.raises(UnsupportedArchitectureError, match="fuse=True"):
        list_in(model)
    assert [layer.input_layernorm for layer in model.model.layers] == norms  # a refused call changes nothing
    swap_out(model)
    swap_in(model, thresholds, check=False, fuse=True)
    list_in(model)
    list_in(model)  # twice: no norm wrapped in a listing norm
    assert all(isinstance(layer.input_layernorm, ListingRMSNorm) for layer in model.model.layers)
    assert all(type(layer.input_layernorm.norm) is type(norms[0]) for layer in model.model.layers)
    list_out(model)
    assert [layer.input_layernorm for layer in model.model.layers] == norms


def test_the_reference_lists_match_the_mask_chunk_by_chunk():
    x = torch.randn(70, generator=torch.Generator().manual_seed(3))
    tau = torch.tensor([0.0, 0.5, 10.0])
    rows, vals, counts = listed_ops.kept_lists_reference(x, tau, 16)
    assert counts.shape == (3, 5) and counts[0].tolist() == [16, 16, 16, 16, 6] and counts[2].sum() == 0
    kept = (x.abs() > 0.5).nonzero().flatten()
    listed = torch.cat([rows[1, 16 * c : 16 * c + n] for c, n in enumerate(counts[1].tolist())])
    assert torch.equal(listed.long(), kept) and torch.equal(vals[1, : int(counts[1, 0])], x[kept[: int(counts[1, 0])]])


def test_the_listed_path_traces_whole_under_torch_compile(model, monkeypatch):
    """The norm hands its lists to the group inside one graph (fake implementations give shapes)."""
    thresholds = quantile_thresholds(model, _ids(16, seed=99), "teal", 0.5)
    swap_in(model, thresholds, check=False, fuse=True)
    expected = _logits(model, _ids(1))
    list_in(model)
    calls = _counting(monkeypatch)
    compiled = torch.compile(lambda ids: model(ids).logits, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(_ids(1)), expected, rtol=1e-5, atol=1e-5)
    assert calls  # the compiled graph ran the listed GEMV


def test_a_listing_model_decodes_like_the_hooked_dense_model(monkeypatch):
    """Float64 (the lists keep float64 values there), a static cache, twelve greedy tokens: the
    prompt's tokens threshold x themselves, every decoding step reads lists."""
    import copy

    from sponlib.kernels import StaticDecoder
    from sponlib.sparsity import Sparsifier

    model = tiny_model("llama", initializer_range=0.2).to(torch.float64)
    dense_model = copy.deepcopy(model)
    thresholds = quantile_thresholds(model, _ids(32, seed=2), "teal", 0.5)
    ids = _ids(6, seed=1)
    with Sparsifier(dense_model, thresholds):
        hooked = StaticDecoder(dense_model, max_len=64, mode="eager").generate(ids, 12)
    list_in(swap_in(model, thresholds, check=False, fuse=True))
    calls = _counting(monkeypatch)
    assert torch.equal(StaticDecoder(model, max_len=64, mode="eager").generate(ids, 12), hooked)
    assert len(calls) >= 11 * 2 * len(model.model.layers)  # each single-token step, both groups of each block
