"""benchmarks/scale_extrapolation.py on the committed 8B records: the ratios come from the two
configs, the memory terms from the records, and records that do not belong together are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REHEARSAL = ROOT / "data/results/scale_rehearsal_h200.json"
SPEED = ROOT / "data/results/training_speed_h200.json"


def _extrapolate(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "benchmarks/scale_extrapolation.py", "--json", str(tmp_path / "x.json"), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
    )


def test_the_70b_estimate_scales_each_stage_by_ratios_of_the_configs(tmp_path):
    done = _extrapolate(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "x.json").read_text())
    small, large = record["models"]["llama3-8b"], record["models"]["llama3-70b"]
    assert (small["parameters_B"], large["parameters_B"]) == (8.03, 70.554)  # the published sizes
    # 80 x (8192 + 28672) against 32 x (4096 + 14336): exactly 5
    assert record["ratios"]["activations"] == 5.0
    assert 9.0 < record["ratios"]["flops"] < 9.4 and record["ratios"]["bytes"] == round(141.11 / 16.06, 3)
    rehearsal, speed = json.loads(REHEARSAL.read_text()), json.loads(SPEED.read_text())
    eager = {row["windows_per_pass"]: row["peak_gpu_GB"] for row in speed["variants"]["eager"]["sizes"]}
    assert record["memory"]["per_window_GB"]["llama3-8b"] == round((eager[16] - eager[8]) / 8, 2)
    assert record["memory"]["teacher_GB"] == round(1024 * 512 * 8192 * 2 / 1e9, 2)
    train = record["stages"]["train"]
    assert train["low_s"] == round(rehearsal["stages"]["train"]["seconds"] * 5.0, 1)
    assert train["high_s"] > train["low_s"]
    peaks = [row["peak_GB"] for row in record["passes"]]
    assert peaks == sorted(peaks) and all(row["gpus"] * 141 * 0.9 >= row["peak_GB"] for row in record["passes"])
    assert record["stages"]["export"]["folder_GB"] > 140 and "low_s" not in record["stages"]["decode"]
    suggested = record["suggested"]
    assert f"--micro-batch {suggested['micro_batch']}" in record["commands"][1]
    assert record["total_s"][0] < record["total_s"][1]


def test_records_of_different_shapes_are_refused(tmp_path):
    other = json.loads(SPEED.read_text()) | {"shape": "qwen3-8b"}
    (tmp_path / "speed.json").write_text(json.dumps(other))
    done = _extrapolate(tmp_path, "--speed", str(tmp_path / "speed.json"))
    assert done.returncode != 0 and "different shapes (llama3-8b, qwen3-8b)" in done.stderr
    done = _extrapolate(tmp_path, "--speed", str(tmp_path / "missing.json"))
    assert done.returncode != 0 and "cannot read the record" in done.stderr
