"""`python -m sponlib`: the eval command end to end on the real model, and its errors."""

import json
import subprocess
import sys

import pytest


def sponlib(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "sponlib", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_eval_writes_a_complete_record(tmp_path):
    text = tmp_path / "letter.txt"
    text.write_text("My dear Fanny, I write to tell you that we are all well at Mansfield. " * 40)
    out = tmp_path / "res" / "eval.json"
    run = sponlib("eval", "--corpus", "persuasion", "--text-file", str(text), "--windows", "2",
                  "--window-len", "64", "--seed", "1", "--json", str(out))
    assert run.returncode == 0, run.stderr
    assert "persuasion" in run.stdout and "letter" in run.stdout
    record = json.loads(out.read_text())
    assert record["kind"] == "perplexity" and record["dtype"] == "float32"
    assert record["device"]["device"] == "cpu"
    assert record["model"]["name"] == "smollm2-135m" and record["model"]["parameters"] > 100e6
    assert {"torch", "transformers", "datasets", "sponlib", "python"} <= set(record["versions"])
    assert (record["windows"], record["window_len"], record["seed"]) == (2, 64, 1)
    for row in record["results"]:
        assert row["windows"] == 2 and row["tokens"] == 2 * 63
        assert 1 < row["ppl"] < 1000
    assert record["command"].startswith("python -m sponlib eval")
    assert not list(out.parent.glob(".*.tmp"))  # the atomic write left no temporary file


@pytest.mark.parametrize("args, message", [
    (["eval", "--corpus", "wiki"], "unknown corpus 'wiki'"),
    (["eval", "--text-file", "/nonexistent/file.txt"], "does not exist"),
    (["eval"], "name some text"),
    (["eval", "--corpus", "persuasion", "--model", "smollm-9000"], "Known names: smollm2-135m"),
    (["prepare", "--model", "smollm-9000"], "Known names: smollm2-135m"),
])
def test_bad_input_prints_one_clear_line(args, message):
    run = sponlib(*args)
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr


@pytest.mark.slow
def test_too_short_text_and_too_many_windows(tmp_path):
    (tmp_path / "short.txt").write_text("Only a few words.")
    run = sponlib("eval", "--text-file", str(tmp_path / "short.txt"), "--window-len", "512")
    assert run.returncode == 2 and "fewer than one window of 512" in run.stderr
    run = sponlib("eval", "--corpus", "brown-humor", "--windows", "100000")
    assert run.returncode == 2 and "holds only" in run.stderr and "Traceback" not in run.stderr


def test_corpora_lists_the_named_splits():
    run = sponlib("corpora")
    assert run.returncode == 0
    names = [line.split()[0] for line in run.stdout.splitlines()]
    assert names[:4] == ["austen-train", "austen-val", "persuasion", "brown"]


def test_calibrate_eval_and_sweep_on_a_tiny_model(tiny_model_dir, tmp_path):
    model = str(tiny_model_dir)
    calibration = tmp_path / "cal.safetensors"
    run = sponlib("calibrate", "--model", model, "--out", str(calibration), "--windows", "4",
                  "--window-len", "64", "--refine-windows", "2", "--refine-levels", "0.5", "--greedy-windows", "1")
    assert run.returncode == 0, run.stderr
    out = tmp_path / "eval.json"
    run = sponlib("eval", "--model", model, "--corpus", "persuasion", "--windows", "2", "--window-len", "64",
                  "--sparsity", "0.5", "--method", "greedy", "--calibration", str(calibration), "--json", str(out))
    assert run.returncode == 0, run.stderr
    record = json.loads(out.read_text())
    [row] = record["results"]
    assert (record["method"], record["sparsity"], row["method"], row["target"]) == ("greedy", 0.5, "greedy", 0.5)
    assert 0.4 < row["measured"] < 0.6 and row["measured_min"] <= row["measured"] <= row["measured_max"]
    sweep = tmp_path / "sweep.json"
    run = sponlib("sweep", "--model", model, "--corpus", "persuasion", "--windows", "2", "--window-len", "64",
                  "--levels", "0.3,0.5", "--methods", "teal,wina", "--calibration", str(calibration),
                  "--json", str(sweep))
    assert run.returncode == 0, run.stderr
    rows = json.loads(sweep.read_text())["results"]
    assert [(r["method"], r["target"]) for r in rows] == [
        ("dense", 0.0), ("teal", 0.3), ("teal", 0.5), ("wina", 0.3), ("wina", 0.5)]


def test_sparsity_errors_on_the_command_line(tiny_model_dir, tmp_path):
    model = str(tiny_model_dir)
    base = ["eval", "--model", model, "--corpus", "persuasion", "--windows", "1", "--window-len", "32"]
    run = sponlib(*base, "--sparsity", "1.2")
    assert run.returncode == 2 and "target sparsity must be in [0, 1)" in run.stderr
    run = sponlib(*base, "--sparsity", "0.5", "--method", "topk")
    assert run.returncode == 2 and "unknown mask rule 'topk'" in run.stderr
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 100)
    run = sponlib(*base, "--sparsity", "0.5", "--calibration", str(broken))
    assert run.returncode == 2 and "not a complete sponlib calibration file" in run.stderr
    assert "Traceback" not in run.stderr
