"""Models spread by an accelerate device map, on the CPU: a tiny Llama with one block offloaded
to disk (its weights are "meta" tensors outside its forward) must mask, calibrate, train SPON and
measure perplexity exactly as the same model held whole in memory."""

import json

import pytest
import torch

from sponlib.errors import InvalidArgumentError
from sponlib.models import (
    execution_device,
    input_device,
    load_model,
    model_fingerprint,
    onloaded,
    placement_record,
    prepare_model,
)
from sponlib.models.placement import is_offloaded, is_sharded
from sponlib.models.tiny import tiny_model
from sponlib.perplexity import perplexity
from sponlib.sparsity import Sparsifier, calibrate, quantile_thresholds
from sponlib.spon import SponVectors, TrainConfig, train_spon

OFFLOADED = {
    "model.embed_tokens": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "cpu",
}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny Llama with large initial weights (a masked input then costs something), saved as a
    Hugging Face folder with the real SmolLM2 tokenizer (the tests feed ids below 256)."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-placed")
    tiny_model("llama", initializer_range=0.3).save_pretrained(folder)
    AutoTokenizer.from_pretrained(prepare_model("smollm2-135m")).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def whole_and_offloaded(tiny_dir, tmp_path_factory):
    whole = load_model(tiny_dir)[0]
    offloaded = load_model(tiny_dir, device_map=OFFLOADED, offload_folder=tmp_path_factory.mktemp("offload"))[0]
    return whole, offloaded


@pytest.fixture
def ids():
    return torch.randint(0, 256, (6, 32), generator=torch.Generator().manual_seed(3))  # (N, L)


def q_proj(model, layer):
    return model.model.layers[layer].self_attn.q_proj


def test_the_offloaded_block_really_is_offloaded(whole_and_offloaded):
    whole, offloaded = whole_and_offloaded
    assert is_sharded(offloaded) and not is_sharded(whole)
    assert is_offloaded(q_proj(offloaded, 1)) and not is_offloaded(q_proj(offloaded, 0))
    assert q_proj(offloaded, 1).weight.device.type == "meta"
    assert execution_device(q_proj(offloaded, 1)) == torch.device("cpu") == input_device(offloaded)
    with onloaded(q_proj(offloaded, 1)) as module:
        assert torch.equal(module.weight, q_proj(whole, 1).weight)
    assert q_proj(offloaded, 1).weight.device.type == "meta"  # and back to its placeholder
    record = placement_record(offloaded)
    assert record["devices"] == ["cpu"] and record["device_map_modules"] == {"cpu": 5, "disk": 1}
    assert placement_record(whole) == {"devices": ["cpu"]}


def test_offloaded_model_has_the_fingerprint_and_perplexity_of_the_whole(whole_and_offloaded, ids):
    whole, offloaded = whole_and_offloaded
    assert model_fingerprint(offloaded) == model_fingerprint(whole)
    assert perplexity(offloaded, ids, batch_size=4, progress=False).nll == pytest.approx(
        perplexity(whole, ids, batch_size=4, progress=False).nll, rel=1e-6
    )


@pytest.mark.parametrize("score", ["teal", "wina"])
def test_masks_and_vectors_act_alike_on_offloaded_weights(whole_and_offloaded, ids, score):
    whole, offloaded = whole_and_offloaded
    thresholds = quantile_thresholds(whole, ids, score, 0.5)
    vectors = SponVectors.zeros(offloaded)
    assert all(a.device.type == "cpu" for a in vectors.alphas.values())  # not the meta placeholder
    alphas = {n: torch.full_like(a, 0.01) for n, a in vectors.alphas.items()}
    outputs = []
    for model in (whole, offloaded):
        with Sparsifier(model, thresholds, alphas=alphas) as sparsifier, torch.no_grad():
            outputs.append((model(ids).logits, sparsifier.summary()["weighted"]))
    torch.testing.assert_close(outputs[1][0], outputs[0][0], rtol=1e-5, atol=1e-5)
    assert outputs[1][1] == outputs[0][1]


def test_calibration_and_spon_training_on_offloaded_weights(whole_and_offloaded, ids):
    whole, offloaded = whole_and_offloaded
    calibrations = [
        calibrate(m, ids, refine_windows=2, refine_levels=[0.5], progress=False) for m in (whole, offloaded)
    ]
    assert calibrations[1].refined == calibrations[0].refined
    thresholds = calibrations[0].thresholds(0.5, "teal")
    config = TrainConfig(steps=6, batch_size=2, lr=3e-2, eval_every=3, checkpoint_every=0)
    results = [train_spon(m, thresholds, ids[:4], ids[4:], config, progress=False) for m in (whole, offloaded)]
    (whole_vectors, whole_taus), (offloaded_vectors, offloaded_taus) = results
    assert offloaded_vectors.meta["training"]["placement"]["device_map_modules"] == {"cpu": 5, "disk": 1}
    for name, alpha in whole_vectors.alphas.items():
        torch.testing.assert_close(offloaded_vectors.alphas[name], alpha, rtol=0, atol=1e-6)
    assert offloaded_taus.taus == pytest.approx(whole_taus.taus)


def test_folding_into_offloaded_weights_is_refused(whole_and_offloaded):
    _, offloaded = whole_and_offloaded
    with pytest.raises(InvalidArgumentError, match="load the model without CPU or disk offload to fold"):
        SponVectors.zeros(offloaded).fold_into(offloaded)


def test_a_strategy_bounded_by_memory_offloads_the_rest(tiny_dir, tmp_path, ids):
    whole = load_model(tiny_dir)[0]
    budget = int(0.8 * sum(p.numel() * p.element_size() for p in whole.parameters()))  # bytes
    model = load_model(tiny_dir, device_map="sequential", max_memory={"cpu": budget}, offload_folder=tmp_path)[0]
    assert "disk" in model.hf_device_map.values() and "cpu" in model.hf_device_map.values()
    assert perplexity(model, ids, progress=False).nll == pytest.approx(
        perplexity(whole, ids, progress=False).nll, rel=1e-6
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(device_map="everywhere"), "unknown device map 'everywhere'"),
        (dict(device_map={}), "non-empty dict"),
        (dict(device_map="auto", device="cuda:0"), "not both"),
        (dict(max_memory={"cpu": "1GiB"}), "only apply with a device_map"),
        (dict(device_map={"": "nonsense"}), "could not place .* nonsense"),
        (dict(device_map={"": 3}), "could not place"),  # a GPU this machine lacks
    ],
)
def test_bad_placements_are_refused_with_what_to_do(tiny_dir, kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message):
        load_model(tiny_dir, **kwargs)


def test_eval_on_the_command_line_with_a_device_map_file(tiny_model_dir, tmp_path):
    """`eval --device-map FILE --offload-folder DIR` measures what the model held whole measures."""
    import subprocess
    import sys

    def sponlib(*args):
        return subprocess.run([sys.executable, "-m", "sponlib", *args], capture_output=True, text=True, timeout=600)

    (tmp_path / "map.json").write_text(json.dumps(OFFLOADED))
    base = ["eval", "--model", str(tiny_model_dir), "--corpus", "persuasion", "--windows", "2", "--window-len", "32"]
    placed = sponlib(
        *base,
        "--device-map",
        str(tmp_path / "map.json"),
        "--offload-folder",
        str(tmp_path / "off"),
        "--json",
        str(tmp_path / "placed.json"),
    )
    assert placed.returncode == 0, placed.stderr
    whole = sponlib(*base, "--json", str(tmp_path / "whole.json"))
    assert whole.returncode == 0, whole.stderr
    records = [json.loads((tmp_path / f"{n}.json").read_text()) for n in ("placed", "whole")]
    assert records[0]["placement"]["device_map_modules"] == {"cpu": 5, "disk": 1}
    assert records[0]["results"][0]["ppl"] == pytest.approx(records[1]["results"][0]["ppl"], rel=1e-6)

    (tmp_path / "bad.json").write_text("[1, 2]")
    for args, message in (
        (["--device-map", "everywhere"], "neither a strategy"),
        (["--device-map", str(tmp_path / "bad.json")], "must hold one object"),
        (["--device-map", "auto", "--max-memory", "cpu:1GiB"], "is not DEVICE=SIZE"),
        (["--max-memory", "cpu=1GiB"], "go with --device-map"),
    ):
        run = sponlib(*base, *args)
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr, run.stderr
