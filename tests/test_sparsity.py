"""Thresholds, the Sparsifier's hooks, calibration files and greedy allocation (tiny models), and
measured sparsity on held-out text (the real model)."""

import math

import pytest
import torch
import torch.nn.functional as F

from sponlib.errors import CorruptFileError, FingerprintError, InvalidArgumentError
from sponlib.experiments.protocol import SWEEP_LEVELS
from sponlib.models import block_projections, decoder_layers, iter_projections
from sponlib.models.tiny import TINY_ARCHITECTURES, tiny_model
from sponlib.sparsity import METHODS, Calibration, Sparsifier, Thresholds, calibrate, check_sparsity
from sponlib.sparsity.allocation import GRID, _BlockProbe, capture_blocks


@pytest.fixture(scope="module")
def tiny_llama():
    """A tiny Llama, its calibration (greedy included) and the calibration token ids."""
    model = tiny_model("llama")
    ids = torch.randint(0, 256, (8, 48), generator=torch.Generator().manual_seed(1))
    return model, calibrate(model, ids, refine_windows=8, greedy_windows=2, progress=False), ids


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
@pytest.mark.parametrize("method", ["teal", "wina"])
def test_hooked_forward_equals_a_manual_masked_matmul(arch, method):
    model = tiny_model(arch)
    ids = torch.randint(0, 256, (4, 32))
    thresholds = calibrate(model, ids, scores=(method,), refine_levels=(0.5,), progress=False).thresholds(0.5, method)
    inputs, outputs, handles = {}, {}, []
    for p in iter_projections(model):  # registered before the sparsifier's hooks: sees the raw input
        handles.append(p.module.register_forward_pre_hook(lambda m, a, n=p.name: inputs.__setitem__(n, a[0])))
        handles.append(p.module.register_forward_hook(lambda m, a, o, n=p.name: outputs.__setitem__(n, o)))
    with torch.no_grad(), Sparsifier(model, thresholds):
        model(torch.randint(0, 256, (2, 16)))
    for h in handles:
        h.remove()
    for p in iter_projections(model):
        x, w, b = inputs[p.name], p.module.weight, p.module.bias  # x: (B, T, in)
        score = x.abs() * w.norm(dim=0) if method == "wina" else x.abs()
        expected = F.linear(torch.where(score > thresholds.taus[p.name], x, torch.zeros_like(x)), w, b)
        torch.testing.assert_close(outputs[p.name], expected, rtol=0, atol=1e-6)
        assert (x == 0).sum() < (score <= thresholds.taus[p.name]).sum()  # the mask did zero entries


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("score", ["teal", "wina"])
def test_masked_input_and_its_count_follow_the_definition(dtype, score):
    from sponlib.sparsity.rules import input_scores, masked_input, sparse_input, zeroed_entries

    x = torch.randn(3, 7, 64, generator=torch.Generator().manual_seed(0)).to(dtype)
    x[0, 0, :5] = torch.tensor([0.0, -0.0, 0.5, -0.5, 2.0], dtype=dtype)  # exact zeros, entries at tau
    col_norm = torch.rand(64, generator=torch.Generator().manual_seed(1)) + 0.5 if score == "wina" else None
    for tau in (0.0, 0.5, 1.0, -1.0):
        keep = input_scores(x, col_norm) > tau
        sparse = masked_input(x, tau, col_norm)
        assert sparse.dtype == x.dtype and torch.equal(sparse, sparse_input(x, keep, None))
        assert int(zeroed_entries(sparse, tau)) == int((~keep).sum())


def test_hooks_are_removed_on_exit_and_on_exceptions(tiny_llama):
    model, calibration, ids = tiny_llama
    modules = [p.module for p in iter_projections(model)]
    sparsifier = Sparsifier(model, calibration.thresholds(0.5))
    with sparsifier:
        assert all(len(m._forward_pre_hooks) == 1 for m in modules) and sparsifier.active
    assert all(len(m._forward_pre_hooks) == 0 for m in modules) and not sparsifier.active
    with pytest.raises(RuntimeError, match="boom"):
        with Sparsifier(model, calibration.thresholds(0.5)):
            model(ids[:1])
            raise RuntimeError("boom")
    assert all(len(m._forward_pre_hooks) == 0 for m in modules)
    dense = model(ids[:1]).logits
    with Sparsifier(model, calibration.thresholds(0.7)):
        sparse = model(ids[:1]).logits
    assert not torch.equal(dense, sparse) and torch.equal(dense, model(ids[:1]).logits)


def test_measured_sparsity_is_reported_per_projection(tiny_llama):
    model, calibration, ids = tiny_llama
    with Sparsifier(model, calibration.thresholds(0.6, "teal")) as sparsifier:
        with pytest.raises(InvalidArgumentError, match="no forward pass"):
            sparsifier.summary()
        model(ids)  # the calibration text itself: thresholds were refined on it
    measured = sparsifier.measured()
    assert set(measured) == {p.name for p in iter_projections(model)}
    assert sparsifier.summary()["weighted"] == pytest.approx(0.6, abs=0.01)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), float("inf"), "half", None])
def test_bad_targets_are_refused(tiny_llama, bad):
    with pytest.raises(InvalidArgumentError, match=r"target sparsity must be"):
        tiny_llama[1].thresholds(bad)
    with pytest.raises(InvalidArgumentError):
        check_sparsity(bad)


def test_nan_activations_stop_calibration():
    from sponlib.errors import NumericalError

    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(NumericalError, match="NaN or infinite activations while calibrating"):
        calibrate(model, torch.randint(0, 256, (2, 16)), progress=False)


def test_unknown_method_and_missing_greedy_table(tiny_llama):
    model, calibration, ids = tiny_llama
    with pytest.raises(InvalidArgumentError, match="unknown mask rule 'topk'.*teal, wina, greedy"):
        calibration.thresholds(0.5, "topk")
    plain = calibrate(model, ids, refine_levels=(), progress=False)
    with pytest.raises(InvalidArgumentError, match="no greedy allocation"):
        plain.thresholds(0.5, "greedy")
    with pytest.raises(InvalidArgumentError, match="greedy allocation reaches 0.95"):
        calibration.thresholds(0.97, "greedy")


def test_thresholds_and_calibration_round_trip(tiny_llama, tmp_path):
    model, calibration, _ = tiny_llama
    calibration.save(tmp_path / "cal.safetensors")
    loaded = Calibration.load(tmp_path / "cal.safetensors", model)
    for method in METHODS:
        for target in (0.25, 0.33, 0.9):
            a, b = calibration.thresholds(target, method), loaded.thresholds(target, method)
            assert a.levels == pytest.approx(b.levels) and a.taus == pytest.approx(b.taus, rel=1e-6)
    thresholds = calibration.thresholds(0.4, "greedy")
    thresholds.save(tmp_path / "t.json")
    again = Thresholds.load(tmp_path / "t.json", model)
    assert again == thresholds
    assert not list(tmp_path.glob(".*.tmp"))


def test_files_made_for_another_model_are_refused(tiny_llama, tmp_path):
    model, calibration, _ = tiny_llama
    calibration.save(tmp_path / "cal.safetensors")
    calibration.thresholds(0.5).save(tmp_path / "t.json")
    for other in (tiny_model("llama", seed=1), tiny_model("qwen3")):
        with pytest.raises(FingerprintError, match="was made for .* but this model is"):
            Calibration.load(tmp_path / "cal.safetensors", other)
        with pytest.raises(FingerprintError, match="differ"):
            Thresholds.load(tmp_path / "t.json", other)
        with pytest.raises(FingerprintError):
            Sparsifier(other, calibration.thresholds(0.5))


def test_corrupt_and_truncated_files_get_clear_errors(tiny_llama, tmp_path):
    model, calibration, _ = tiny_llama
    calibration.save(tmp_path / "cal.safetensors")
    calibration.thresholds(0.5).save(tmp_path / "t.json")
    data = (tmp_path / "cal.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    for name in ("cut.safetensors", "junk.safetensors"):
        with pytest.raises(CorruptFileError, match="not a complete sponlib calibration file"):
            Calibration.load(tmp_path / name)
    text = (tmp_path / "t.json").read_text()
    (tmp_path / "cut.json").write_text(text[: len(text) // 2])
    with pytest.raises(CorruptFileError, match="not a complete sponlib thresholds file"):
        Thresholds.load(tmp_path / "cut.json")
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        Calibration.load(tmp_path / "none.safetensors")


@pytest.mark.parametrize("score", ["teal", "wina"])
def test_greedy_skips_as_many_weights_as_uniform_with_no_more_block_error(tiny_llama, score):
    model, calibration, ids = tiny_llama
    method = "greedy" if score == "teal" else "greedy-wina"
    table = calibration.greedy[score]
    blocks = block_projections(model)
    for target in list(GRID) + [0.33, 0.61]:
        levels = calibration.thresholds(target, method).levels
        for block in blocks:
            sizes = {p.name: p.module.weight.numel() for p in block.values()}
            skipped = sum(levels[n] * sizes[n] for n in sizes)
            assert skipped == pytest.approx(target * sum(sizes.values()), rel=1e-9)
    # Re-measure the block errors independently of the stored ones, on the calibration windows.
    captures = capture_blocks(model, ids[: table["windows"]])
    with torch.inference_mode():
        for index, block in enumerate(blocks):
            probe = _BlockProbe(decoder_layers(model)[index], block, calibration, score, captures[index])
            for g_index, g in enumerate(GRID):
                chosen = {r: table["levels"][p.name][g_index] for r, p in block.items()}
                greedy, uniform = probe.error(chosen), probe.error({r: g for r in block})
                assert greedy <= uniform * (1 + 1e-6)
                assert greedy == pytest.approx(table["block_error"]["greedy"][index][g_index], rel=1e-5)
    # And it is not uniform in disguise: somewhere it moves sparsity between projections.
    assert any(len(set(v)) > 1 for v in zip(*(table["levels"][p.name] for p in blocks[0].values())))


@pytest.fixture(scope="module")
def real_calibration(default_model):
    from sponlib.data import load_corpus, load_windows

    model, tokenizer = default_model
    windows = load_windows(load_corpus("austen-train"), tokenizer, 256, 16, 0)
    return calibrate(model, windows, refine_windows=8, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["teal", "wina"])
def test_measured_sparsity_on_held_out_text_is_within_two_points(default_model, real_calibration, method):
    from sponlib.data import load_corpus, load_windows

    model, tokenizer = default_model
    held_out = load_windows(load_corpus("persuasion"), tokenizer, 256, 4, 0)
    for target in SWEEP_LEVELS:
        with Sparsifier(model, real_calibration.thresholds(target, method)) as sparsifier, torch.inference_mode():
            model(held_out.ids, logits_to_keep=1)
        measured = sparsifier.summary()["weighted"]
        assert math.isclose(measured, target, abs_tol=0.02), (method, target, measured)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_teal_masks_in_its_own_dtype_exactly_as_in_float32(dtype):
    """The one-pass teal mask of bf16/fp16 inputs keeps exactly the entries that the float32
    comparison keeps, for thresholds on, just above and just below the dtype's values."""
    from sponlib.sparsity.rules import half_threshold, masked_input

    x = (torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 3).to(dtype)
    big = torch.finfo(dtype).max
    x[:4] = torch.tensor([0.0, -0.0, big, -big], dtype=dtype)
    values = x.abs().float().unique()[:: len(x) // 64]  # thresholds on values the inputs take
    between = torch.nextafter(values, torch.full_like(values, float("inf")))  # float32 values just above
    below = torch.nextafter(values, torch.zeros_like(values))
    for tau in [*values.tolist(), *between.tolist(), *below.tolist(), 1e-30, 70000.0, 1e39, -1.0]:
        expected = x * (x.abs().float() > tau)
        assert torch.equal(masked_input(x, tau, None), expected), tau
    assert half_threshold(0.5, torch.float32) is None and half_threshold(float("nan"), dtype) is None
    assert half_threshold(-0.1, dtype) is None and half_threshold(1e39, dtype) is None
