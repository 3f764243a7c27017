"""`python -m sponlib`: eval end to end on the real model, the SPON commands on a tiny one, and their errors."""

import json
import os
import subprocess
import sys

import pytest

from sponlib.io import sha256_file


def sponlib(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "sponlib", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_eval_writes_a_complete_record(tmp_path):
    text = tmp_path / "letter.txt"
    text.write_text("My dear Fanny, I write to tell you that we are all well at Mansfield. " * 40)
    out = tmp_path / "res" / "eval.json"
    run = sponlib(
        "eval",
        "--corpus",
        "persuasion",
        "--text-file",
        str(text),
        "--windows",
        "2",
        "--window-len",
        "64",
        "--seed",
        "1",
        "--json",
        str(out),
    )
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


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval", "--corpus", "wiki"], "unknown corpus 'wiki'"),
        (["eval", "--text-file", "/nonexistent/file.txt"], "does not exist"),
        (["eval"], "name some text"),
        (["eval", "--corpus", "persuasion", "--model", "smollm-9000"], "Known names: gemma3-270m, smollm2-135m"),
        (["prepare", "--model", "smollm-9000"], "Known names: gemma3-270m, smollm2-135m"),
    ],
)
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


def calibrate_tiny(model: str, out, levels: str = "0.5", *extra: str):
    """A quick calibration of the tiny model on 4 windows of 64 tokens."""
    run = sponlib(
        "calibrate",
        "--model",
        model,
        "--out",
        str(out),
        "--windows",
        "4",
        "--window-len",
        "64",
        "--refine-windows",
        "2",
        "--refine-levels",
        levels,
        *extra,
    )
    assert run.returncode == 0, run.stderr
    return out


def test_calibrate_eval_and_sweep_on_a_tiny_model(tiny_model_dir, tmp_path):
    model = str(tiny_model_dir)
    calibration = calibrate_tiny(model, tmp_path / "cal.safetensors", "0.5", "--greedy-windows", "1")
    out = tmp_path / "eval.json"
    run = sponlib(
        "eval",
        "--model",
        model,
        "--corpus",
        "persuasion",
        "--windows",
        "2",
        "--window-len",
        "64",
        "--sparsity",
        "0.5",
        "--method",
        "greedy",
        "--calibration",
        str(calibration),
        "--json",
        str(out),
    )
    assert run.returncode == 0, run.stderr
    record = json.loads(out.read_text())
    [row] = record["results"]
    assert (record["method"], record["sparsity"], row["method"], row["target"]) == ("greedy", 0.5, "greedy", 0.5)
    assert 0.4 < row["measured"] < 0.6 and row["measured_min"] <= row["measured"] <= row["measured_max"]
    sweep = tmp_path / "sweep.json"
    run = sponlib(
        "sweep",
        "--model",
        model,
        "--corpus",
        "persuasion",
        "--windows",
        "2",
        "--window-len",
        "64",
        "--levels",
        "0.3,0.5",
        "--methods",
        "teal,wina",
        "--calibration",
        str(calibration),
        "--json",
        str(sweep),
    )
    assert run.returncode == 0, run.stderr
    rows = json.loads(sweep.read_text())["results"]
    assert [(r["method"], r["target"]) for r in rows] == [
        ("dense", 0.0),
        ("teal", 0.3),
        ("teal", 0.5),
        ("wina", 0.3),
        ("wina", 0.5),
    ]


def test_sparsity_errors_on_the_command_line(tiny_model_dir, tmp_path):
    model = str(tiny_model_dir)
    base = ["eval", "--model", model, "--corpus", "persuasion", "--windows", "1", "--window-len", "32"]
    run = sponlib(*base, "--sparsity", "1.2")
    assert run.returncode == 2 and "target sparsity must be in [0, 1)" in run.stderr
    run = sponlib(*base, "--sparsity", "0.5", "--method", "topk")
    assert run.returncode == 2 and "invalid choice: 'topk'" in run.stderr  # --help lists the rules
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 100)
    run = sponlib(*base, "--sparsity", "0.5", "--calibration", str(broken))
    assert run.returncode == 2 and "not a complete sponlib calibration file" in run.stderr
    assert "Traceback" not in run.stderr


def test_train_eval_and_export_spon_on_a_tiny_model(tiny_model_dir, tmp_path):
    model = str(tiny_model_dir)
    calibration = calibrate_tiny(model, tmp_path / "cal.safetensors")
    spon = tmp_path / "spon" / "spon-teal-0.5.safetensors"
    small = [
        "--train-windows",
        "4",
        "--train-window-len",
        "64",
        "--stride",
        "32",
        "--val-windows",
        "2",
        "--steps",
        "4",
        "--train-batch",
        "2",
        "--eval-every",
        "2",
    ]
    run = sponlib(
        "train",
        "--model",
        model,
        "--sparsity",
        "0.5",
        "--calibration",
        str(calibration),
        "--out",
        str(spon),
        *small,
        "--json",
        str(tmp_path / "train.json"),
    )
    assert run.returncode == 0, run.stderr
    assert "validation KL" in run.stdout and (tmp_path / "spon" / "spon-teal-0.5.thresholds.json").exists()
    record = json.loads((tmp_path / "train.json").read_text())
    assert record["kind"] == "spon_training" and record["training"]["steps_done"] == 4
    assert record["training"]["tokens_per_s"] > 0 and record["training"]["train_text"]["stride"] == 32
    assert record["parameters"] == 2 * (32 * 6 + 48)

    base = ["eval", "--model", model, "--corpus", "persuasion", "--windows", "2", "--window-len", "64"]
    run = sponlib(*base, "--spon", str(spon), "--json", str(tmp_path / "eval.json"))
    assert run.returncode == 0, run.stderr
    [row] = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert row["spon"] is True and (row["method"], row["target"]) == ("teal", 0.5) and "teal+spon" in run.stdout
    run = sponlib(*base, "--spon", str(spon), "--sparsity", "0.7")
    assert run.returncode == 2 and "made for sparsity 0.5, not 0.7" in run.stderr

    out = tmp_path / "export"
    run = sponlib("export", "--spon", str(spon), "--out", str(out), "--model", model)
    assert run.returncode == 0, run.stderr
    assert {"config.json", "model.safetensors", "sparsity_thresholds.json", "tokenizer.json"} <= set(os.listdir(out))
    run = sponlib(
        "eval",
        "--model",
        str(out),
        "--corpus",
        "persuasion",
        "--windows",
        "2",
        "--window-len",
        "64",
        "--thresholds",
        str(out / "sparsity_thresholds.json"),
        "--json",
        str(tmp_path / "folded.json"),
    )
    assert run.returncode == 0, run.stderr
    [folded] = json.loads((tmp_path / "folded.json").read_text())["results"]
    assert folded["ppl"] == pytest.approx(row["ppl"], rel=1e-4) and folded["measured"] == pytest.approx(row["measured"])
    run = sponlib(*base, "--spon", str(spon), "--thresholds", str(out / "sparsity_thresholds.json"))
    assert run.returncode == 2 and "one source of thresholds" in run.stderr

    # the same vectors on two texts: the in-domain row repeats what eval measured
    generalize = [
        "generalize",
        "--model",
        model,
        "--corpus",
        "persuasion",
        "--corpus",
        "brown-humor",
        "--windows",
        "2",
        "--window-len",
        "64",
        "--spon-dir",
        str(spon.parent),
        "--calibration",
        str(calibration),
    ]
    run = sponlib(*generalize, "--json", str(tmp_path / "general.json"))
    assert run.returncode == 0, run.stderr
    record = json.loads((tmp_path / "general.json").read_text())
    assert record["kind"] == "spon_generalization" and [t["source"] for t in record["texts"]] == [
        "persuasion",
        "brown-humor",
    ]
    own, other = record["rows"]
    assert (own["text"], own["level"]) == ("persuasion", 0.5) and own["ppl_spon"] == pytest.approx(row["ppl"])
    for r in record["rows"]:
        gap = r["ppl_masked"] - r["ppl_dense"]
        assert (
            r["recovery"] is None
            if gap <= 0
            else r["recovery"] == pytest.approx((r["ppl_masked"] - r["ppl_spon"]) / gap)
        )
    assert record["summary"]["0.5"]["others"] == (other["recovery"] is not None)
    run = sponlib(*generalize, "--levels", "0.7", "--json", str(tmp_path / "x.json"))
    assert run.returncode == 2 and "no SPON vectors for teal at 0.7" in run.stderr
    run = sponlib("generalize", "--model", model, "--corpus", "brown-nonsense", "--json", str(tmp_path / "x.json"))
    assert run.returncode == 2 and "brown-nonsense" in run.stderr and not (tmp_path / "x.json").exists()


def test_training_errors_on_the_command_line(tiny_model_dir, tmp_path):
    model = str(tiny_model_dir)
    run = sponlib("train", "--model", model, "--sparsity", "1.5", "--out", str(tmp_path / "s.safetensors"))
    assert run.returncode == 2 and "target sparsity must be in [0, 1)" in run.stderr
    run = sponlib(
        "train", "--model", model, "--sparsity", "0.5", "--roles", "q,ffn", "--out", str(tmp_path / "s.safetensors")
    )
    assert run.returncode == 2 and "subset of q, k, v, o, gate, up, down" in run.stderr
    run = sponlib("eval", "--model", model, "--corpus", "persuasion", "--spon", str(tmp_path / "missing.safetensors"))
    assert run.returncode == 2 and "does not exist" in run.stderr
    assert "Traceback" not in run.stderr


def test_recovery_runs_and_resumes_on_a_tiny_model(tiny_model_dir, tmp_path):
    model = str(tiny_model_dir)
    calibration = calibrate_tiny(model, tmp_path / "cal.safetensors", "0.5,0.7")
    args = [
        "recovery",
        "--model",
        model,
        "--levels",
        "0.5,0.7",
        "--only",
        "levels",
        "--windows",
        "2",
        "--window-len",
        "64",
        "--calibration",
        str(calibration),
        "--train-windows",
        "4",
        "--train-window-len",
        "64",
        "--val-windows",
        "2",
        "--steps",
        "2",
        "--train-batch",
        "2",
        "--eval-every",
        "1",
        "--artifacts",
        str(tmp_path / "art"),
        "--json",
        str(tmp_path / "rec.json"),
    ]
    run = sponlib(*args)
    assert run.returncode == 0, run.stderr
    record = json.loads((tmp_path / "rec.json").read_text())
    assert [e["name"] for e in record["experiments"]] == ["teal@0.5", "teal@0.7"]
    assert set(record["summary"]) == {"0.5", "0.7"}
    row = record["experiments"][0]
    assert set(row["texts"]) == {"persuasion", "brown"}
    for text in row["texts"].values():
        gap = text["ppl_masked"] - text["ppl_dense"]
        if gap > 0:
            assert text["recovery"] == pytest.approx((text["ppl_masked"] - text["ppl_spon"]) / gap)
    assert sorted(os.listdir(tmp_path / "art")) == [
        "spon-teal-0.5.safetensors",
        "spon-teal-0.5.thresholds.json",
        "spon-teal-0.7.safetensors",
        "spon-teal-0.7.thresholds.json",
    ]
    assert row["artifact"] == {
        "file": "spon-teal-0.5.safetensors",
        "sha256": sha256_file(tmp_path / "art" / "spon-teal-0.5.safetensors"),
    }
    run = sponlib(*args)  # everything done: nothing is trained again
    assert run.returncode == 0 and "SPON" not in run.stderr
    assert json.loads((tmp_path / "rec.json").read_text())["experiments"] == record["experiments"]
