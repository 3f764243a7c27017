"""SPON at any level: the trained pair at a trained level, a straight line between two, towards no
vectors at level 0, thresholds that keep the trained offsets from the calibration; the resolver,
the eval note and the dashboards on the interpolated vectors."""

import re

import pytest
import torch

from sponlib.analysis import LayerAnalysis
from sponlib.errors import FingerprintError, InvalidArgumentError
from sponlib.masks import Mask, resolve_mask
from sponlib.models.tiny import tiny_model
from sponlib.sparsity import calibrate, quantile_thresholds
from sponlib.spon import SponLevels, SponVectors, save_spon

TRAINED = (0.4, 0.6)


def _trained_pair(model, ids, level: float, seed: int, rule: str = "teal"):
    """Random vectors and exact quantile thresholds (not the calibration's: a real offset)."""
    vectors = SponVectors.zeros(model)
    generator = torch.Generator().manual_seed(seed)
    for alpha in vectors.alphas.values():
        alpha.copy_(0.1 * torch.randn(alpha.shape, generator=generator))
    vectors.meta.update(method=rule, target=level, training={"seed": seed}, thresholds={"file": f"{seed}.json"})
    return vectors, quantile_thresholds(model, ids, rule, level)


@pytest.fixture(scope="module")
def tiny():
    """A tiny Llama, its calibration, and SPON pairs trained (here: drawn) at 0.4 and 0.6."""
    model = tiny_model("llama", seed=3)
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    calibration = calibrate(model, ids, refine_levels=TRAINED, progress=False)
    trained = {level: _trained_pair(model, ids, level, seed) for seed, level in enumerate(TRAINED)}
    return model, ids, calibration, trained


def test_exact_at_the_trained_levels(tiny):
    _, _, calibration, trained = tiny
    levels = SponLevels(calibration, trained)
    assert levels.levels == TRAINED and levels.rule == "teal"
    for level, pair in trained.items():
        vectors, thresholds = levels.at(level + 1e-12)
        assert vectors is pair[0] and thresholds is pair[1]
        assert levels.between(level) is None


def test_linear_between_two_trained_levels(tiny):
    _, _, calibration, trained = tiny
    levels = SponLevels(calibration, trained)
    (low, low_t), (high, high_t) = trained[0.4], trained[0.6]
    for level, weight in ((0.5, 0.5), (0.45, 0.25)):
        vectors, thresholds = levels.at(level)
        assert levels.between(level) == pytest.approx((0.4, 0.6, weight))
        for name, alpha in vectors.alphas.items():
            assert torch.allclose(alpha, (1 - weight) * low.alphas[name] + weight * high.alphas[name], atol=1e-7)
        assert vectors.meta["interpolated"]["between"] == [0.4, 0.6]
        assert vectors.meta["interpolated"]["weight"] == pytest.approx(weight)
        assert vectors.meta["target"] == level and thresholds.target == level and thresholds.method == "teal"
        assert vectors.meta["fingerprint"] == low.meta["fingerprint"]  # common meta kept
        assert "training" not in vectors.meta and "thresholds" not in vectors.meta  # one run's own meta left out
        # the mask's thresholds at the level plus the trained offsets, interpolated
        own, own_low, own_high = (calibration.thresholds(s).taus for s in (level, 0.4, 0.6))
        for name, tau in thresholds.taus.items():
            offset = (1 - weight) * (low_t.taus[name] - own_low[name]) + weight * (high_t.taus[name] - own_high[name])
            assert tau == pytest.approx(max(own[name] + offset, 0.0), rel=1e-9, abs=1e-12)
    middle = levels.at(0.5)[0].alphas
    assert not all(torch.equal(middle[n], low.alphas[n]) for n in middle)  # not a trained pair


def test_towards_no_vectors_and_the_calibration_below_the_lowest_level(tiny):
    _, _, calibration, trained = tiny
    levels = SponLevels(calibration, trained)
    vectors, _ = levels.at(0.2)
    assert levels.between(0.2) == pytest.approx((0.0, 0.4, 0.5))
    for name, alpha in vectors.alphas.items():
        assert torch.allclose(alpha, 0.5 * trained[0.4][0].alphas[name])
    vectors, thresholds = levels.at(1e-6)  # α -> 0: the calibration's own mask
    assert max(float(a.abs().max()) for a in vectors.alphas.values()) < 1e-5
    own, own_low = calibration.thresholds(1e-6).taus, calibration.thresholds(0.4).taus
    for name, tau in thresholds.taus.items():  # the trained offset, shrunk to 1e-6 / 0.4 of itself
        offset = trained[0.4][1].taus[name] - own_low[name]
        assert tau == pytest.approx(max(own[name] + 1e-6 / 0.4 * offset, 0.0), rel=1e-9, abs=1e-15)
        assert abs(tau - own[name]) <= 2.5e-6 * abs(offset) + 1e-15
    # continuous at a trained level: just below it is nearly the trained pair
    _, near = levels.at(0.4 - 1e-7)
    assert near.taus == pytest.approx(trained[0.4][1].taus, rel=1e-4)


def test_refuses_levels_it_does_not_cover(tiny):
    _, _, calibration, trained = tiny
    levels = SponLevels(calibration, trained)
    assert levels.covers(0.6) and levels.covers(0.01) and not levels.covers(0.0) and not levels.covers(0.61)
    with pytest.raises(InvalidArgumentError, match="trained at 0.4, 0.6"):
        levels.at(0.7)
    with pytest.raises(InvalidArgumentError, match="level 0 is the dense model"):
        levels.at(0.0)


def test_refuses_mixed_rules_other_models_and_mislabelled_levels(tiny):
    model, ids, calibration, trained = tiny
    wina = _trained_pair(model, ids, 0.6, 5, rule="wina")
    with pytest.raises(InvalidArgumentError, match="different mask rules"):
        SponLevels(calibration, {0.4: trained[0.4], 0.6: wina})
    other = tiny_model("llama", seed=4)  # the same shapes, other weights
    with pytest.raises(FingerprintError, match="fingerprints differ"):
        SponLevels(calibration, {0.4: trained[0.4], 0.6: _trained_pair(other, ids, 0.6, 6)})
    with pytest.raises(InvalidArgumentError, match="trained at 0.6"):
        SponLevels(calibration, {0.5: trained[0.6]})
    with pytest.raises(InvalidArgumentError, match="one level at least"):
        SponLevels(calibration, {})


def test_from_files_matches_the_pairs_in_memory(tiny, tmp_path):
    model, _, calibration, trained = tiny
    paths = {}
    for level, (vectors, thresholds) in trained.items():
        paths[level] = tmp_path / f"spon-teal-{level}.safetensors"
        save_spon(vectors, thresholds, paths[level])
    from_files = SponLevels.from_files(calibration, paths, model)
    in_memory = SponLevels(calibration, trained)
    (a, t), (b, u) = from_files.at(0.5), in_memory.at(0.5)
    assert all(torch.equal(a.alphas[n], b.alphas[n]) for n in b.alphas) and t.taus == u.taus
    # a single file at another level is still refused, with the way to get SPON there
    with pytest.raises(InvalidArgumentError, match=re.escape("made for sparsity 0.4, not 0.5")) as refused:
        resolve_mask(model, 0.5, spon=paths[0.4])
    assert "spon='shipped'" in str(refused.value) and "SponLevels" in str(refused.value)


def test_the_dashboards_show_spon_at_interpolated_levels(tiny):
    from sponlib.viz import DriftExplorer

    model, ids, calibration, trained = tiny
    levels = SponLevels(calibration, trained)
    analysis = LayerAnalysis(model, ids[:2, :16], calibration, lens_tokens=4, spon_levels={"teal": levels})
    assert analysis.has_spon("teal", 0.45) and analysis.has_spon("teal", 0.6) and analysis.has_spon("teal", 0.1)
    assert not analysis.has_spon("teal", 0.65) and not analysis.has_spon("wina", 0.45)
    assert (
        analysis.spon_between("teal", 0.45) == pytest.approx((0.4, 0.6)) and analysis.spon_between("teal", 0.4) is None
    )
    variant = analysis.variant("teal", 0.45, with_spon=True)
    expected = levels.at(0.45)[0].alphas
    assert all(torch.equal(variant.alphas[n], expected[n]) for n in expected)
    explorer = DriftExplorer(analysis, level=0.45)
    assert "SPON (interpolated 0.4–0.6)" in explorer.status.value
    explorer.level.value = 0.4
    assert "interpolated" not in explorer.status.value and "SPON " in explorer.status.value
    # the old form still works, and a pair given there wins at its level
    old = LayerAnalysis(model, ids, calibration, spon={("teal", 0.4): (trained[0.4][1], trained[0.4][0].alphas)})
    assert old.has_spon("teal", 0.4) and not old.has_spon("teal", 0.45)
    with pytest.raises(InvalidArgumentError, match="no SPON vectors for teal at 0.45"):
        old.variant("teal", 0.45, with_spon=True)


def test_eval_notes_interpolated_vectors():
    from sponlib.cli.evaluate import interpolation_note

    spon = {"spon_interpolated": {"between": [0.4, 0.5], "weight": 0.5}}
    thresholds = type("T", (), {"target": 0.45, "method": "teal"})()
    assert interpolation_note(Mask(thresholds, source=spon)) == (
        "SPON at 0.45: interpolated between the vectors trained at 0.4 and 0.5"
    )
    below = {"spon_interpolated": {"between": [0.0, 0.25], "weight": 0.4}}
    thresholds.target = 0.1
    assert "α = 0 at level 0 and the vectors trained at 0.25" in interpolation_note(Mask(thresholds, source=below))


@pytest.mark.slow
def test_shipped_vectors_at_a_level_between_the_shipped_ones(default_model):
    from sponlib.artifacts import artifacts_dir, found_spon_files
    from sponlib.spon import load_spon

    model, _ = default_model
    files = found_spon_files(artifacts_dir(model), "teal")
    lo, hi = max(t for t in files if t < 0.45), min(t for t in files if t > 0.45)
    mask = resolve_mask(model, 0.45, spon="shipped")
    weight = (0.45 - lo) / (hi - lo)
    assert mask.rule == "teal" and mask.sparsity == 0.45
    assert mask.source["spon_interpolated"]["between"] == [lo, hi]
    assert mask.source["spon_interpolated"]["weight"] == pytest.approx(weight)
    assert mask.describe()["spon_files"] == [
        f"data/artifacts/smollm2-135m/spon-teal-{t:g}.safetensors" for t in (lo, hi)
    ]
    (low, _), (high, _) = load_spon(files[lo]), load_spon(files[hi])
    for name, alpha in mask.alphas.items():
        assert torch.allclose(alpha, (1 - weight) * low.alphas[name] + weight * high.alphas[name])
    with pytest.raises(InvalidArgumentError, match="interpolated between level 0 and the highest shipped level"):
        resolve_mask(model, max(files) + 0.05, spon="shipped")
