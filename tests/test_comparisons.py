"""The comparisons experiment end to end on a tiny model (plumbing), `eval --method` with the new
rules, and the committed record against the issue's targets."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sponlib.experiments.comparisons import PRUNING, RULES
from sponlib.records import load_result
from sponlib.reports.comparisons import missing_cells, render_pruning, render_rules


def sponlib(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "sponlib", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_comparisons_run_in_parts_and_assemble_one_record(tiny_model_dir, tmp_path):
    small = [
        "comparisons",
        "--model",
        str(tiny_model_dir),
        "--windows",
        "2",
        "--window-len",
        "32",
        "--calib-windows",
        "2",
    ]
    small += ["--calib-window-len", "32", "--train-windows", "8", "--steps", "2", "--train-batch", "2"]
    small += ["--rotation-windows", "2", "--prune-windows", "2", "--levels", "0.5", "--work", str(tmp_path / "w")]
    out = tmp_path / "comparisons.json"
    for parts in ("teal,larosa", "rsparse,pruning"):  # two commands, as parallel processes would
        run = sponlib(*small, "--parts", parts, "--json", str(out))
        assert run.returncode == 0, run.stderr
    assert not out.exists()  # parts alone write no record
    run = sponlib(*small, "--parts", "record", "--json", str(out))
    assert run.returncode == 0, run.stderr
    record = json.loads(out.read_text())
    assert record["kind"] == "comparisons" and not record["complete"]  # wina and greedy were not run
    assert [c["parts"] for c in record["part_commands"]] == [["teal", "larosa"], ["rsparse", "pruning"]]
    assert [e["level"] for e in record["rules"]["larosa"]] == [0.5] and record["rules"]["wina"] == []
    assert record["rules"]["larosa"][0]["measured"]["weighted"] == pytest.approx(0.5, abs=0.01)
    assert record["rotation_check"]["float64"]["max_abs"] < 1e-9
    assert {(e["method"], e["pattern"]) for e in record["pruning"]} == set(PRUNING)
    assert all(len(e["rows"]) == 1 + len(record["settings"]["texts"]["tests"]) for e in record["pruning"])
    assert "wina at 0.5" in render_rules(record) and "sparsegpt 2:4" in render_pruning(record)

    bad = sponlib(*small, "--parts", "teal,nonsense", "--json", str(out))
    assert bad.returncode != 0 and "unknown part 'nonsense'" in bad.stderr

    # Another level in another work folder: its record keeps the cells above (same settings).
    later = [*small[: small.index("--levels")], "--levels", "0.25", "--work", str(tmp_path / "w2")]
    assert sponlib(*later, "--parts", "teal", "--json", str(out)).returncode == 0
    run = sponlib(*later, "--parts", "record", "--json", str(out))
    assert run.returncode == 0, run.stderr
    assert "kept from the record already" in run.stdout and "teal 0.5" in run.stdout
    merged = json.loads(out.read_text())
    assert [e["level"] for e in merged["rules"]["teal"]] == [0.25, 0.5] and merged["settings"]["levels"] == [0.25, 0.5]
    assert [e["level"] for e in merged["rules"]["larosa"]] == [0.5]  # same rotations: larosa's cell kept too
    assert merged["rules"]["teal"][1] == record["rules"]["teal"][0] | {"made_by": merged["rules"]["teal"][1]["made_by"]}
    assert "--parts teal,larosa" in merged["rules"]["teal"][1]["made_by"]["commands"][0]
    assert merged["rules"]["teal"][1]["made_by"]["record_created"] == record["created"]
    assert "--parts teal " in merged["rules"]["teal"][0]["made_by"]["commands"][0]
    assert len(merged["pruning"]) == len(PRUNING) and merged["rotation_check"] == record["rotation_check"]
    assert [c["parts"] for c in merged["part_commands"]] == [["teal", "larosa"], ["rsparse", "pruning"], ["teal"]]

    # Other settings (more training steps): nothing is kept, and the output says why.
    other = [*later[: later.index("--steps")], "--steps", "3", *later[later.index("--steps") + 2 :]]
    run = sponlib(*other, "--parts", "record", "--json", str(out))
    assert run.returncode == 0 and "kept nothing" in run.stdout and "training" in run.stdout
    assert json.loads(out.read_text())["rules"]["larosa"] == []


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["larosa", "rsparse"])
def test_eval_runs_the_new_rules(tiny_model_dir, tmp_path, rule):
    out = tmp_path / "eval.json"
    base = ["eval", "--model", str(tiny_model_dir), "--corpus", "persuasion", "--windows", "2", "--window-len", "32"]
    calibration = ["--calibration", str(tmp_path / "c.safetensors"), "--calib-windows", "2", "--calib-window-len", "32"]
    run = sponlib(*base, *calibration, "--sparsity", "0.5", "--method", rule, "--json", str(out))
    assert run.returncode == 0, run.stderr
    record = json.loads(out.read_text())
    assert record["method"] == rule
    bad = sponlib(*base, "--sparsity", "0.5", "--method", "larosa-wina", "--json", str(out))
    assert bad.returncode != 0 and "invalid choice" in bad.stderr


def test_the_committed_record_meets_the_targets_it_holds():
    """Every cell the record has: masks at their level on held-out text (larosa exactly, rsparse in
    bytes), SPON never worse than its mask on any test text, and pruning beside teal + SPON."""
    record = load_result("comparisons.json")
    assert list(record["rules"]) == list(RULES)
    for rule, entries in record["rules"].items():
        for entry in entries:
            measured = entry["measured"]
            key = "bytes_not_read" if rule == "rsparse" else "weighted"
            assert abs(measured[key] - entry["level"]) <= 0.01, (rule, entry["level"], measured)
            assert not any(row["worse_than_mask"] for row in entry["rows"]), (rule, entry["level"])
            if rule == "rsparse":
                assert abs(measured["weighted"] - measured["channel_target"]) <= 0.01
    assert {(e["method"], e["pattern"]) for e in record["pruning"]} == set(PRUNING)
    assert all(abs(e["zero_share"] - 0.5) < 1e-4 for e in record["pruning"])
    assert record["complete"] and missing_cells(record) == []
    assert [e["level"] for e in record["rules"]["larosa"]] == record["settings"]["levels"]
    assert {e["made_by"]["device"] for entries in record["rules"].values() for e in entries} == {
        record["device"]["name"]
    }
    assert Path(record["command"].split("--json ")[1]).as_posix() == "data/results/comparisons.json"


def test_a_record_assembled_elsewhere_names_the_device_its_cells_were_made_on():
    from sponlib.experiments.carried import where_made

    gpu = {"device": "cuda", "name": "NVIDIA H200", "cuda": "13.0"}
    versions = {"torch": "2.11.0"}
    rules = {"teal": [{"made_by": {"device": "NVIDIA H200", "versions": versions}}], "wina": [{"made_by": {}}]}
    assert where_made(rules, [], {"device": gpu}) == (gpu, versions)  # the earlier record's fuller description
    assert where_made(rules, [], None) == ({"name": "NVIDIA H200"}, versions)
    rules["wina"][0]["made_by"] = {"device": "cpu", "versions": versions}
    assert where_made(rules, [], None) is None  # cells from two machines: no one device to name


def test_larosa_cells_made_with_other_rotations_are_named_when_left_out():
    from sponlib.experiments.carried import carry_rules, rotations_left_out

    def record(digest, levels):
        cells = [{"level": level, "made_by": {}} for level in levels]
        return {"settings": {"rotations": {"sha256": digest}}, "rules": {"larosa": cells}}

    earlier, now = record("a" * 64, [0.25, 0.5]), {"rotations": {"sha256": "b" * 64}}
    rules = {"larosa": [{"level": 0.4, "made_by": {}}]}
    why = rotations_left_out(earlier, rules, now)
    assert why.startswith("larosa 0.25,0.5: made with other rotations (sha256 aaaaaaaaaaaa…, these bbbbbbbbbbbb…)")
    assert "--levels 0.25,0.5" in why
    assert carry_rules(earlier, rules, now) == [] and [e["level"] for e in rules["larosa"]] == [0.4]
    assert rotations_left_out(earlier, rules, earlier["settings"]) is None  # same rotations: all kept
    made_now = {"larosa": [{"level": 0.25}, {"level": 0.5}]}
    assert rotations_left_out(earlier, made_now, now) is None  # every earlier level remade
