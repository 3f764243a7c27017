"""Shipped artifacts and result records: found by model name, checked, and clear errors otherwise."""

import json

import pytest
import torch

from sponlib.artifacts import artifacts_dir, shipped_calibration, shipped_spon, spon_files
from sponlib.errors import CorruptFileError, InvalidArgumentError
from sponlib.models.tiny import tiny_model
from sponlib.records import load_result, source_line


def test_spon_files_lists_levels_and_names_what_is_missing(tmp_path):
    for name in (
        "spon-teal-0.5.safetensors",
        "spon-teal-0.25.safetensors",
        "spon-wina-0.5.safetensors",
        "spon-teal-0.5-longer.safetensors",
        "notes.txt",
    ):
        (tmp_path / name).write_bytes(b"")
    found = spon_files(tmp_path, "teal")
    assert list(found) == [0.25, 0.5] and found[0.5].name == "spon-teal-0.5.safetensors"
    assert list(spon_files(tmp_path, "teal", [0.5])) == [0.5]
    with pytest.raises(InvalidArgumentError, match="0.7.*found: 0.25, 0.5"):
        spon_files(tmp_path, "teal", [0.7])
    with pytest.raises(InvalidArgumentError, match="python -m sponlib train"):
        spon_files(tmp_path, "greedy")


def test_unknown_models_have_no_shipped_artifacts():
    model = tiny_model("llama")
    with pytest.raises(InvalidArgumentError, match="known models only"):
        artifacts_dir(model)
    with pytest.raises(InvalidArgumentError, match="calibrate --out"):
        shipped_calibration(model)


@pytest.mark.slow
def test_shipped_artifacts_load_for_the_default_model(default_model):
    model, _ = default_model
    assert artifacts_dir(model).name == "smollm2-135m"
    calibration = shipped_calibration(model)
    spon = shipped_spon(model, "teal")
    assert sorted(level for _, level in spon) == [0.25, 0.4, 0.5, 0.6, 0.7]
    thresholds, alphas = spon[("teal", 0.5)]
    assert thresholds.method == "teal" and thresholds.target == 0.5
    assert len(alphas) == 7 * model.config.num_hidden_layers
    assert all(torch.isfinite(a).all() for a in alphas.values())
    assert calibration.thresholds(0.5, "teal").taus.keys() == thresholds.taus.keys()


def test_load_result_reads_records_and_refuses_bad_ones(monkeypatch, tmp_path):
    record = load_result("dense_baseline.json")
    assert record["kind"] == "perplexity" and "smollm2-135m" in source_line(record)
    assert record["command"] in source_line(record)
    assert source_line(load_result("gemv_cpu.json")).startswith("float32, ")  # no model: none named
    monkeypatch.setattr("sponlib.records.results_dir", lambda: tmp_path)
    (tmp_path / "broken.json").write_text('{"kind": "perplexity", "results": [')
    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        load_result("broken.json")
    with pytest.raises(CorruptFileError, match="no 'kind'"):
        load_result("other.json")
    with pytest.raises(InvalidArgumentError, match="known: broken.json, other.json"):
        load_result("missing.json")
