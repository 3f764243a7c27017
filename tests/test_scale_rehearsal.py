"""benchmarks/scale_rehearsal.py on a tiny Llama on the CPU: every stage of the user's path runs,
in order, and lands in the record with its time; the export it wrote reloads; the record says
that its quality numbers mean nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_TOKENIZER = "data/tokenizers/smollm2-135m"
STAGES = ["build", "text", "calibrate", "train", "evaluate", "export", "reload", "decode"]


def _rehearse(tmp_path, shape: str, *extra: str) -> tuple[dict, Path]:
    """The rehearsal on a tiny shape, on the CPU, at the smallest settings -> (record, work folder)."""
    out, work = tmp_path / "rehearsal.json", tmp_path / "work"
    small = ["--steps", "2", "--train-batch", "4", "--train-windows", "8", "--windows", "8", "--val-windows", "2"]
    small += ["--eval-windows", "2", "--tokens", "4", *extra]
    done = subprocess.run(
        [sys.executable, "benchmarks/scale_rehearsal.py", "--shape", shape, "--device", "cpu", *small]
        + ["--work", str(work), "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=os.environ | {"TQDM_DISABLE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), work


@pytest.mark.slow
def test_the_rehearsal_runs_every_stage_on_a_tiny_config(tmp_path):
    record, work = _rehearse(tmp_path, "tiny")
    assert record["kind"] == "scale-rehearsal" and "meaningless" in record["note"]
    assert list(record["stages"]) == STAGES
    assert all(stage["seconds"] > 0 and stage["host_peak_rss_GB"] > 0 for stage in record["stages"].values())
    rows = record["stages"]["evaluate"]["rows"]
    assert [(r["corpus"], r["method"], r.get("spon", False)) for r in rows] == [
        (text, method, spon)
        for method, spon in (("dense", False), ("teal", False), ("teal", True))
        for text in ("persuasion", "brown")
    ]
    assert record["stages"]["train"]["out_of_memory"] == []  # nothing halved on the CPU
    assert record["stages"]["train"]["forward_batch"] == 4
    assert abs(record["stages"]["reload"]["relative_gap"]) < 1e-2
    assert (work / "export" / "sparsity_thresholds.json").is_file()
    assert not (work / "spon.ckpt").exists()  # a finished run leaves no checkpoint behind
    assert record["stages"]["decode"]["sparse_fused_tokens_per_s"] > 0


@pytest.mark.slow
def test_a_config_without_mlp_biases_decodes_with_its_vectors_and_profiling_names_the_costly_operators(tmp_path):
    """Qwen3's config has no bias switch for the MLP: the export's refusal is recorded and the
    rehearsal goes on as the refusal tells a user to, decoding the trained model with its vectors
    applied at run time; --profile adds a table of the operators that took the time, --pass-sizes
    the throughput at each number of windows per pass."""
    record, work = _rehearse(
        tmp_path, "tiny-qwen3", "--profile", "--pass-sizes", "1,2", "--tokenizer", SHIPPED_TOKENIZER
    )
    assert list(record["stages"]) == STAGES[:5] + ["profile", "passes", "export", "decode"]
    sizes = record["stages"]["passes"]["sizes"]
    assert [row["windows_per_pass"] for row in sizes] == [1, 2]
    assert all(row["tokens_per_s"] > 0 and "out_of_memory" not in row for row in sizes)
    assert "cannot give 6 projections a bias" in record["stages"]["export"]["refused"]
    assert not (work / "export").exists()
    profile = record["stages"]["profile"]
    assert profile["clock"] == "cpu" and len(profile["ops"]) == 20
    assert all(row["op"].startswith("aten::") for row in profile["ops"][:3])
    assert sum(row["share"] for row in profile["ops"]) <= 1.0
    assert record["stages"]["decode"]["sparse_fused_tokens_per_s"] > 0


def test_the_shipped_tokenizer_encodes_the_corpora_as_the_default_models_own():
    """The tokenizer files under data/ (for GPU machines without the model's package) cut every
    shipped text into the very ids the installed default model's tokenizer gives."""
    from transformers import AutoTokenizer

    from sponlib.data import load_corpus
    from sponlib.experiments import protocol
    from sponlib.models.gguf import prepare_model

    shipped = AutoTokenizer.from_pretrained(ROOT / SHIPPED_TOKENIZER)
    installed = AutoTokenizer.from_pretrained(prepare_model(protocol.MODEL))
    assert shipped.get_vocab() == installed.get_vocab()
    for name in (protocol.TRAIN_TEXT, protocol.VALIDATION_TEXT, *protocol.TEST_TEXTS):
        text = "\n\n".join(doc for _, doc in load_corpus(name).documents())[:50_000]
        assert shipped(text)["input_ids"] == installed(text)["input_ids"], name


def test_the_rehearsal_refuses_an_unknown_shape_before_building_anything(tmp_path):
    done = subprocess.run(
        [sys.executable, "benchmarks/scale_rehearsal.py", "--shape", "llama3-70b", "--json", str(tmp_path / "x.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "invalid choice: 'llama3-70b'" in done.stderr
    assert not (tmp_path / "x.json").exists()


def test_the_rehearsal_says_what_a_tokenizer_folder_lacks(tmp_path):
    done = subprocess.run(
        [sys.executable, "benchmarks/scale_rehearsal.py", "--shape", "tiny", "--device", "cpu"]
        + ["--tokenizer", str(tmp_path), "--json", str(tmp_path / "x.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "nor a folder of tokenizer files" in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "x.json").exists()  # refused before anything was built or written


def test_the_rehearsal_table_reads_both_forms_of_the_out_of_memory_record():
    """The committed first record (the micro-batch tried, cut before decoding) and the same with
    the form training now records, (step, windows a pass), and a decode stage (format only)."""
    import copy

    from sponlib.records import load_result
    from sponlib.reports.scale import render_rehearsal

    record = load_result("scale_rehearsal_h200_before_fixes.json")
    text = render_rehearsal(record)
    assert "10,414 tokens/s, 16 windows a pass (out of memory at 32 windows a pass)" in text
    assert "The run stopped before: decode." in text
    later = copy.deepcopy(record)
    later["stages"]["train"]["out_of_memory"] = [[0, 32], [0, 16]]
    later["stages"]["train"]["forward_batch"] = 8
    later["stages"]["decode"] = {"seconds": 80.9, "dense_tokens_per_s": 172.0, "sparse_fused_tokens_per_s": 237.1}
    later["stages"]["decode"]["speedup"] = 1.379
    text = render_rehearsal(later)
    assert "8 windows a pass (out of memory at 32, 16 windows a pass)" in text
    assert "| batch-1 decoding | 80.9 |  |  | 172 → 237 tokens/s (×1.38)" in text
    assert "stopped before" not in text
