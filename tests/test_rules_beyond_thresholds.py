"""larosa (rotated Top-K) and rsparse (mask + low-rank completion) on the five tiny architectures:
exact sparsity, the rotation's invariance folded and unfolded, the byte accounting, SPON on top."""

import dataclasses

import pytest
import torch

from sponlib.errors import InvalidArgumentError
from sponlib.models.adapters import iter_projections
from sponlib.models.tiny import TINY_ARCHITECTURES, tiny_model
from sponlib.sparsity import Sparsifier, Thresholds, quantile_thresholds
from sponlib.sparsity.lowrank import bytes_read, channel_level, completed, low_rank, right_singular_vectors
from sponlib.sparsity.rotation import (
    ROTATED_GROUPS,
    Rotations,
    fold_rotations,
    pca_rotations,
    principal_axes,
    rotated_topk,
)
from sponlib.sparsity.rules import kept_count, topk_input
from sponlib.spon.training import TrainConfig, train_spon


def _ids(n, length=32, seed=1):
    return torch.randint(0, 256, (n, length), generator=torch.Generator().manual_seed(seed))


def _larosa(model, level, rotations):
    names = [p.name for p in iter_projections(model)]
    fingerprint = quantile_thresholds(model, _ids(1, 8), "teal", 0.0).fingerprint
    plain = Thresholds("larosa", level, dict.fromkeys(names, level), dict.fromkeys(names, 0.0), fingerprint)
    return plain.with_rotations(rotations)


def _rsparse(model, level, share, ids):
    teal = quantile_thresholds(model, ids, "teal", channel_level(level, share))
    return dataclasses.replace(teal, method="rsparse", target=level, rule_settings={"low_rank_share": share})


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_larosa_keeps_k_per_token_and_folding_leaves_the_dense_model_alone(arch):
    model = tiny_model(arch)
    ids = _ids(6)
    rotations = pca_rotations(model, ids, progress=False)
    rotated = {p.role for p in iter_projections(model) if p.name in rotations.matrices}
    assert rotated == {r for g in ROTATED_GROUPS for r in g}  # o and down keep their own basis
    for q in {id(q): q for q in rotations.matrices.values()}.values():
        assert torch.allclose(q.double().T @ q.double(), torch.eye(q.shape[0], dtype=torch.float64), atol=1e-6)

    with torch.no_grad():
        dense = model(ids).logits
        weights = {n: p.detach().clone() for n, p in model.named_parameters()}
        with fold_rotations(model, rotations):
            folded = model(ids).logits
        assert (folded - dense).abs().max() <= 1e-5  # the target: unchanged to 1e-5 in float32
        assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())  # restored exactly

        thresholds = _larosa(model, 0.5, rotations)
        with Sparsifier(model, thresholds) as sp:
            model(_ids(4, seed=3))
        for p in iter_projections(model):  # exactly K kept of every token
            assert sp.measured()[p.name] == pytest.approx(1 - kept_count(p.in_features, 0.5) / p.in_features)


def test_larosa_folded_and_hooked_forms_agree_in_float64():
    model = tiny_model("llama", dtype=torch.float64)
    ids = _ids(6)
    rotations = pca_rotations(model, ids, progress=False)
    thresholds = _larosa(model, 0.6, rotations)
    folded_thresholds = dataclasses.replace(thresholds, rotations=None, rule_settings={"rotation": "folded"})
    with torch.no_grad():
        with Sparsifier(model, thresholds):
            hooked = model(ids).logits
        with fold_rotations(model, rotations), Sparsifier(model, folded_thresholds, check=False):  # W Q: new weights
            folded = model(ids).logits
        with Sparsifier(model, dataclasses.replace(folded_thresholds)):
            unrotated = model(ids).logits
    assert (hooked - folded).abs().max() < 1e-9
    assert (hooked - unrotated).abs().max() > 1e-3  # the rotation does change what is kept


def test_rotated_topk_keeps_more_energy_than_raw_topk_on_correlated_inputs():
    torch.manual_seed(0)
    mixing = torch.randn(16, 16)
    x = torch.randn(512, 16) * torch.linspace(3, 0.1, 16) @ mixing.T  # (tokens, in), correlated channels
    outer = x.double().T @ x.double()
    rotation = principal_axes(x.double().sum(0), outer, x.shape[0])
    raw = (x - topk_input(x, 4)).norm()
    rotated = (x - rotated_topk(x, 4, rotation)).norm()
    assert rotated < 0.8 * raw


def test_larosa_without_rotations_is_refused_and_rotations_round_trip(tmp_path):
    model = tiny_model("qwen3")
    rotations = pca_rotations(model, _ids(4), progress=False)
    thresholds = _larosa(model, 0.5, rotations)
    with pytest.raises(InvalidArgumentError, match="rotation"):
        Sparsifier(model, dataclasses.replace(thresholds, rotations=None))
    rotations.save(tmp_path / "r.safetensors")
    back = Rotations.load(tmp_path / "r.safetensors", model)
    assert back.digest() == rotations.digest() and back.groups == rotations.groups
    assert thresholds.rule_settings["rotation"]["sha256"] == rotations.digest()
    thresholds.save(tmp_path / "t.json")  # the matrices are not written into the thresholds file
    assert Thresholds.load(tmp_path / "t.json").rule_settings == thresholds.rule_settings
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        Rotations.load(tmp_path / "missing.safetensors")


def test_rsparse_accounting_never_reads_more_than_the_plain_mask():
    for out_f, in_f in ((576, 576), (1536, 576), (576, 1536), (192, 576)):
        for level in (0.25, 0.5, 0.7):
            for share in (0.05, 0.1, 0.3):
                c, r = channel_level(level, share), low_rank(in_f, out_f, level, share)
                spent, budget = bytes_read(in_f, out_f, c, r), (1 - level) * in_f * out_f
                assert budget - (in_f + out_f) < spent <= budget + 1e-6
    assert channel_level(0.5, 0.0) == 0.5 and low_rank(576, 576, 0.5, 0.0) == 0
    with pytest.raises(InvalidArgumentError):
        channel_level(0.5, 1.0)


def test_completion_with_a_full_basis_gives_back_the_input():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 12, bias=False)
    v = right_singular_vectors(layer)  # (8, 8): in <= out, so the basis spans every input
    x = torch.randn(5, 8)
    sparse = topk_input(x, 3)
    assert torch.allclose(completed(x, sparse, v), x, atol=1e-5)
    w = layer.weight.detach().double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    rank2 = u[:, :2] @ torch.diag(s[:2]) @ vh[:2]
    y = completed(x.double(), sparse.double(), v[:, :2].double()) @ w.T
    assert torch.allclose(y, sparse.double() @ w.T + (x - sparse).double() @ rank2.T, atol=1e-5)


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_rsparse_sits_between_the_mask_and_the_dense_model(arch):
    model = tiny_model(arch)
    ids = _ids(6)
    with torch.no_grad():
        dense = model(ids).logits
        teal = quantile_thresholds(model, ids, "teal", channel_level(0.5, 0.3))
        with Sparsifier(model, teal):
            masked = model(ids).logits
        rsparse = _rsparse(model, 0.5, 0.3, ids)
        with Sparsifier(model, rsparse) as sp:
            completed_logits = model(ids).logits
    assert (completed_logits - dense).norm() < (masked - dense).norm()
    assert sp.summary()["weighted"] == pytest.approx(channel_level(0.5, 0.3), abs=0.05)
    assert sp.completions and all(v.shape[1] >= 1 for v in sp.completions.values())


@pytest.mark.parametrize("rule", ["larosa", "rsparse"])
def test_spon_trains_on_the_new_rules_and_keeps_their_settings(rule):
    model = tiny_model("llama")
    ids = _ids(12)
    if rule == "larosa":
        thresholds = _larosa(model, 0.5, pca_rotations(model, ids, progress=False))
    else:
        thresholds = _rsparse(model, 0.5, 0.2, ids)
    alphas = {p.name: torch.zeros(p.in_features, requires_grad=True) for p in iter_projections(model)}
    with Sparsifier(model, thresholds, alphas=alphas):
        model(ids[:2]).logits.float().logsumexp(-1).sum().backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in alphas.values())  # every vector learns
    config = TrainConfig(steps=4, batch_size=4, lr=3e-4, eval_every=2, checkpoint_every=0)
    vectors, trained = train_spon(model, thresholds, ids, _ids(4, seed=9), config, progress=False)
    t = vectors.meta["training"]
    assert t["val_kl_best"] <= t["val_kl_base"] and [s for s, _ in t["history"]["val"]] == [0, 2, 4]
    assert trained.method == rule and trained.rule_settings == thresholds.rule_settings
    if rule == "larosa":  # nothing to refit: Top-K has no threshold
        assert trained.rotations is thresholds.rotations and trained.taus == thresholds.taus
        assert not trained.calibration["refitted_under_spon"] or t["best_step"] == 0
