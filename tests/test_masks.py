"""The one mask resolver: every way of naming a mask gives the thresholds (and vectors) it names,
each bad combination fails before a model loads with one message, and a mask's hooks leave with it."""

import re

import pytest
import torch

from sponlib.errors import FingerprintError, InvalidArgumentError
from sponlib.masks import Mask, MaskRequest, resolve_mask
from sponlib.models.tiny import tiny_model
from sponlib.sparsity import Sparsifier, calibrate, quantile_thresholds
from sponlib.spon import SponVectors, save_spon


@pytest.fixture(scope="module")
def tiny():
    """A tiny Llama, its calibration, exact thresholds at 0.5 and small SPON vectors."""
    model = tiny_model("llama", seed=3)
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    calibration = calibrate(model, ids, refine_levels=(0.5,), progress=False)
    thresholds = quantile_thresholds(model, ids, "teal", 0.5)
    vectors = SponVectors.zeros(model)
    for alpha in vectors.alphas.values():
        alpha.normal_(0, 0.01)
    return model, ids, calibration, thresholds, vectors


def hooks_left(model) -> int:
    return sum(len(m._forward_pre_hooks) for m in model.modules())


def test_each_way_of_naming_a_mask(tiny, tmp_path):
    model, _, calibration, thresholds, vectors = tiny
    assert resolve_mask(model).dense and resolve_mask(model).describe()["method"] == "dense"

    from_calibration = resolve_mask(model, 0.5, "wina", calibration=calibration)
    assert from_calibration.thresholds.taus == calibration.thresholds(0.5, "wina").taus
    calibration.save(tmp_path / "c.safetensors")
    from_file = resolve_mask(model, 0.5, calibration=tmp_path / "c.safetensors")
    # teal unless named; the file keeps the statistics in float32
    assert from_file.thresholds.taus == pytest.approx(calibration.thresholds(0.5, "teal").taus, rel=1e-6)
    assert from_file.source == {"calibration_file": str(tmp_path / "c.safetensors")}  # outside the project

    thresholds.save(tmp_path / "t.json")
    assert resolve_mask(model, thresholds=tmp_path / "t.json").thresholds.taus == thresholds.taus
    assert resolve_mask(model, 0.5, "teal", thresholds=thresholds).thresholds is thresholds  # agreeing names

    save_spon(vectors, thresholds, tmp_path / "spon-teal-0.5.safetensors")
    spon = resolve_mask(model, spon=tmp_path / "spon-teal-0.5.safetensors")
    assert (spon.rule, spon.sparsity) == ("teal", 0.5) and spon.spon is not None
    assert all(torch.equal(spon.alphas[n], a) for n, a in vectors.alphas.items())
    assert spon.describe()["spon"] is True and "spon_file" in spon.describe()


def test_a_mask_applies_its_thresholds_and_vectors_and_leaves_with_its_hooks(tiny, tmp_path):
    model, ids, _, thresholds, vectors = tiny
    save_spon(vectors, thresholds, tmp_path / "s.safetensors")
    mask = resolve_mask(model, spon=tmp_path / "s.safetensors")
    with torch.no_grad():
        with mask.applied(model) as sparsifier:
            through_mask = model(ids).logits
        with Sparsifier(model, mask.thresholds, alphas=mask.alphas):
            by_hand = model(ids).logits
        with Mask().applied(model) as nothing:
            dense = model(ids).logits
    assert torch.equal(through_mask, by_hand) and not torch.equal(through_mask, dense)
    assert nothing is None and 0.4 < sparsifier.summary()["weighted"] < 0.6
    assert hooks_left(model) == 0
    with pytest.raises(RuntimeError), mask.applied(model):
        raise RuntimeError("the body fails")
    assert hooks_left(model) == 0


@pytest.mark.parametrize(
    "request_args, message",
    [
        (dict(sparsity=1.5), "must be in [0, 1)"),
        (dict(sparsity=0.5, rule="topk"), "unknown mask rule 'topk'"),
        (dict(spon="s.safetensors", thresholds="t.json"), "give one source of thresholds"),
        (dict(sparsity=0.5, calibration="c.safetensors", thresholds="t.json"), "give one source of thresholds"),
        (dict(spon="shipped"), "name the sparsity too"),
        (dict(calibration="c.safetensors"), "a calibration without a sparsity"),
        (dict(rule="wina"), "the dense model has no mask rule"),
    ],
)
def test_bad_requests_fail_without_a_model(request_args, message):
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        MaskRequest(**request_args)


def test_a_file_must_agree_with_what_is_named_beside_it(tiny, tmp_path):
    model, _, _, thresholds, vectors = tiny
    save_spon(vectors, thresholds, tmp_path / "s.safetensors")
    thresholds.save(tmp_path / "t.json")
    with pytest.raises(InvalidArgumentError, match="made for sparsity 0.5, not 0.7"):
        resolve_mask(model, 0.7, spon=tmp_path / "s.safetensors")
    with pytest.raises(InvalidArgumentError, match="made for mask rule teal, not wina"):
        resolve_mask(model, rule="wina", thresholds=tmp_path / "t.json")
    with pytest.raises(InvalidArgumentError, match="ship for the known models"):  # a tiny model has no artifacts
        resolve_mask(model, 0.5, spon="shipped")
    with pytest.raises(InvalidArgumentError, match="no calibration shipped"):
        resolve_mask(model, 0.5)
    other = tiny_model("llama", seed=4)  # the same shapes, other weights
    with pytest.raises(FingerprintError):
        resolve_mask(other, thresholds=tmp_path / "t.json")


def test_needs_calibration_says_when_a_calibration_is_read():
    assert MaskRequest(0.5).needs_calibration and MaskRequest(0.5, "greedy").needs_calibration
    assert not MaskRequest().needs_calibration and not MaskRequest(0.5, spon="s.safetensors").needs_calibration
    assert not MaskRequest(thresholds="t.json").needs_calibration


@pytest.mark.slow
def test_the_shipped_files_of_the_default_model(default_model):
    model, _ = default_model
    mask = resolve_mask(model, 0.5, spon="shipped")
    assert mask.source == {"spon_file": "data/artifacts/smollm2-135m/spon-teal-0.5.safetensors"}
    masked = resolve_mask(model, 0.5, "greedy")
    assert masked.rule == "greedy" and masked.source == {
        "calibration_file": "data/artifacts/smollm2-135m/calibration.safetensors"
    }
    with pytest.raises(InvalidArgumentError, match="no SPON vectors for wina at 0.5"):
        resolve_mask(model, 0.5, "wina", spon="shipped")
