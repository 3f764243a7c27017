"""The scale pages' tables (sponlib.reports.scale) on records built here: targets judged from the
record's own numbers, variants that did not finish shown as such, ratios against eager and the
ceiling computed from the rows."""

from __future__ import annotations

import copy
import json

from sponlib.records import results_dir
from sponlib.reports import scale


def _record(name: str) -> dict:
    return json.loads((results_dir() / name).read_text())


def _met(table: str, measure: str) -> str:
    [row] = [line for line in table.splitlines() if line.startswith(f"| {measure}")]
    return row.rstrip(" |").rsplit("| ", 1)[1]


def test_targets_are_judged_from_the_record():
    record = _record("scale_rehearsal_h200.json")
    table = scale.render_targets(record)
    slow = record["stages"]["train"]["tokens_per_s"] < 20e3
    assert _met(table, "SPON training throughput") == ("**no**" if slow else "yes")
    faster = copy.deepcopy(record)
    faster["stages"]["train"]["tokens_per_s"] = 25e3
    faster["stages"]["train"]["peak_gpu_GB"] = 90.0
    faster["stages"]["export"] = {"seconds": 0.1, "refused": "no biases"}
    table = scale.render_targets(faster)
    assert _met(table, "SPON training throughput") == "yes"
    assert _met(table, "peak GPU memory, any stage") == "**no**"
    assert _met(table, "nothing fails or needs a flag a user would not know") == "**no**"


def test_training_speed_rows_show_ratios_and_unfinished_variants():
    record = {
        "shape": "llama3-8b",
        "dtype": "bfloat16",
        "level": 0.5,
        "train_batch": 32,
        "device": {"name": "GPU"},
        "versions": {"torch": "2"},
        "command": "benchmarks/training_speed.py",
        "ceiling": {"tokens_per_s": 40000.0, "GFLOP_per_token": 31.0, "matmul_TFLOPs": 700.0, "tokens": 8192},
        "mask_op": {"shape": [8192, 14336], "dtype": "bfloat16", "compare_multiply_ms": 4.0, "hardshrink_ms": 1.0},
        "variants": {
            "eager": {"sizes": [{"windows_per_pass": 16, "tokens_per_s": 10000.0, "peak_gpu_GB": 70.0}], "wall_s": 30},
            "norms": {"sizes": [{"windows_per_pass": 16, "tokens_per_s": 12000.0, "peak_gpu_GB": 65.0}], "wall_s": 31},
            "decoder": {
                "sizes": [{"windows_per_pass": 4, "tokens_per_s": 15000.0, "peak_gpu_GB": 30.0}],
                "error": "not finished in 240 s",
                "limit_s": 240,
                "wall_s": 241,
            },
        },
    }
    table = scale.render_training_speed(record)
    assert "| norms | 16 | 12,000 | ×1.20 | 30% | 65.0 | 31 |" in table
    # the size it finished before its time ran out, then why it stopped
    assert "| decoder | 4 | 15,000 |  | 38% | 30.0 | 241 |\n| decoder | | not finished in 240 s |" in table
    assert "4.00 ms compared in float32 and multiplied, 1.00 ms as one hardshrink" in table


def test_the_extrapolation_table_gives_ranges_and_the_commands():
    record = _record("scale_extrapolation_70b.json")
    text = scale.render_extrapolation(record)
    train = record["stages"]["train"]
    assert f"{train['low_s'] / 60:.1f}–{train['high_s'] / 60:.1f}" in text
    assert all(command in text for command in record["commands"])
