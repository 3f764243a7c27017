"""benchmarks/training_speed.py on a tiny Llama on the CPU: a variant that runs records its
throughput at each windows-per-pass size; one that runs past --variant-limit-s (compiling the
whole decoder, here) is stopped and recorded as such, even where torch catches the first
interruption inside a compile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _speed(tmp_path, *extra: str) -> dict:
    out = tmp_path / "speed.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/training_speed.py", "--shape", "tiny", "--device", "cpu", "--train-batch", "2"]
        + ["--tokenizer", "data/tokenizers/smollm2-135m", *extra, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=os.environ | {"TQDM_DISABLE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_eager_training_throughput_is_recorded_per_pass_size(tmp_path):
    record = _speed(tmp_path, "--variants", "eager", "--sizes", "1,2")
    assert record["kind"] == "training-speed" and record["train_batch"] == 2
    rows = record["variants"]["eager"]["sizes"]
    assert [row["windows_per_pass"] for row in rows] == [1, 2]
    assert all(row["tokens_per_s"] > 0 and row["vs_eager"] == 1.0 for row in rows)
    ceiling = record["ceiling"]  # the step's matrix products alone: faster than the step
    assert ceiling["GFLOP_per_token"] > 0 and ceiling["tokens_per_s"] > max(row["tokens_per_s"] for row in rows)
    mask = record["mask_op"]  # both ways of masking timed on a pass's widest input
    assert mask["shape"] == [8192, 128] and mask["compare_multiply_ms"] > 0 and mask["hardshrink_ms"] > 0
    assert all(row["of_ceiling"] == round(row["tokens_per_s"] / ceiling["tokens_per_s"], 3) for row in rows)


@pytest.mark.slow
def test_a_variant_past_its_time_limit_is_stopped_and_recorded(tmp_path):
    record = _speed(tmp_path, "--variants", "decoder", "--sizes", "1", "--variant-limit-s", "1")
    result = record["variants"]["decoder"]
    assert result["error"] == "not finished in 1 s" and result["limit_s"] == 1
    assert result["sizes"] == [] and result["wall_s"] < 30  # no size finished in a second
