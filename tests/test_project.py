"""The project's promises about itself: a README of one screen with its quickstart, figure and
links, docs pages whose links resolve and whose commands today's command line accepts, the CI
entry, the conda file, and result tables that match their records."""

import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from sponlib.cli import build_parser
from sponlib.records import results_dir
from sponlib.reports.readme import _BLOCK, RENDERERS, result_pages, update_readme

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250  # one screen's worth: the rest lives in docs/
# the pages that hold generated tables since the README moved them to docs/
TABLE_PAGES = {"README.md", "results.md", "library.md", "analysis.md", "tasks.md", "multigpu.md", "kernels.md"}
TABLE_PAGES |= {"comparisons.md", "scale.md"}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """A page without its code blocks, inline code and generated blocks: what its author wrote."""
    text = _BLOCK.sub("", text)
    text = FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def shown_commands(text: str) -> list[list[str]]:
    """The sponlib commands of a page's shell blocks, as the words after `sponlib` (run as
    `sponlib`, `.venv/bin/sponlib`, `python -m sponlib`, or `-m sponlib` under a launcher); `[...]` marks an optional
    part, which is left out."""
    commands = []
    for kind, body in FENCE.findall(text):
        if kind not in ("bash", "sh"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = re.sub(r"\[[^\]]*\]", "", line.split(" #", 1)[0]).strip()
            found = re.search(r"(?:^|-m |/bin/)sponlib (.*)$", line)
            if found:
                commands.append(shlex.split(found.group(1)))
    return commands


def test_readme_quickstart_is_exactly_two_commands():
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"```(?:bash|sh)?\n(.*?)```", quickstart, re.S)
    commands = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert commands == ["make lab", "make test"]


def test_ci_runs_the_readme_test_command():
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), re.M)


def test_environment_yml_installs_the_project_through_pip():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert any(str(d).startswith("python=3.11") for d in deps) and "pip" in deps
    [pip_section] = [d["pip"] for d in deps if isinstance(d, dict)]
    assert pip_section == ["--editable .[dev]"]


def test_readme_and_docs_result_tables_match_their_json():
    pages = result_pages(ROOT)
    assert {page.name for page in pages} == TABLE_PAGES
    for page in pages:
        assert update_readme(page, check=True) is False, f"{page.name}: run `python -m sponlib readme`"
    # every table the renderers know is on some page: moving a section cannot drop one
    shown = {m.group("name") for page in pages for m in _BLOCK.finditer(page.read_text())}
    assert shown == set(RENDERERS)


def test_readme_is_one_screen_with_its_figure_and_license():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    assert "](docs/figures/spon_perplexity.png)" in readme and "<!-- results: spon_robust.json headline -->" in readme
    assert "](LICENSE)" in readme and "Apache-2.0" in readme
    headings = re.findall(r"^## (.+)$", readme, re.M)
    assert headings[:4] == ["Quickstart", "In Python", "SPON on your own model", "What is inside"]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_points_to_a_file(page):
    text = FENCE.sub("", page.read_text())
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address or an anchor on the same page
        path = (page.parent / target.split("#", 1)[0]).resolve()
        assert path.exists(), f"{page.name}: {target} does not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_commands_shown_in_the_docs_are_accepted_by_todays_command_line(page):
    parser = build_parser()
    for words in shown_commands(page.read_text()):
        said = io.StringIO()
        try:
            with contextlib.redirect_stderr(said):
                parser.parse_args(words)
        except SystemExit:
            pytest.fail(f"{page.name}: `sponlib {shlex.join(words)}`: {said.getvalue().strip()}")
    # American spelling in prose and examples; records keep the commands as they were run
    assert "sponlib analyse" not in _BLOCK.sub("", page.read_text())


def test_dense_baseline_is_recorded_as_the_protocol_asks():
    record = json.loads((results_dir() / "dense_baseline.json").read_text())
    assert record["model"]["name"] == "smollm2-135m" and record["dtype"] == "float32"
    assert (record["windows"], record["window_len"], record["seed"]) == (64, 512, 0)
    rows = {r["corpus"]: r for r in record["results"]}
    assert set(rows) == {"persuasion", "brown"}
    for row in rows.values():
        assert row["windows"] == 64 and row["tokens"] == 64 * 511 and 5 < row["ppl"] < 100


def test_sparsity_sweep_covers_the_protocol_and_hits_its_targets():
    record = json.loads((results_dir() / "sparsity_sweep.json").read_text())
    assert record["model"]["name"] == "smollm2-135m" and record["dtype"] == "float32"
    assert record["levels"] == [0.25, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert record["methods"] == ["teal", "wina", "greedy"]
    rows = {(r["method"], r["target"], r["corpus"]): r for r in record["results"]}
    assert len(rows) == len(record["results"]) == 2 * (1 + 3 * 7)
    for (method, target, corpus), row in rows.items():
        assert corpus in ("persuasion", "brown") and row["windows"] == 64 and row["window_len"] == 512
        if method != "dense":
            assert abs(row["measured"] - target) <= 0.02, (method, target, corpus, row["measured"])
            assert row["ppl"] >= rows[("dense", 0.0, corpus)]["ppl"] * 0.99  # sparsity never helps here


def test_calibration_record_compares_dense_only_and_sparse_aware_thresholds():
    record = json.loads((results_dir() / "calibration_cpu.json").read_text())
    assert record["device"]["device"] == "cpu" and record["calibration"]["windows"] == 64
    for row in record["results"]:
        assert abs(row["sparse_aware"]["measured"] - row["target"]) <= 0.02


def test_spon_recovery_covers_the_protocol():
    record = json.loads((results_dir() / "spon_recovery.json").read_text())
    assert record["model"]["name"] == "smollm2-135m" and record["dtype"] == "float32"
    assert [(t["source"], t["windows"], t["window_len"], t["seed"]) for t in record["settings"]["test"]] == [
        ("persuasion", 64, 512, 0),
        ("brown", 64, 512, 0),
    ]
    assert record["settings"]["validation"]["source"] == "austen-val"
    names = [r["name"] for r in record["experiments"]]
    assert names == [
        "teal@0.25",
        "teal@0.4",
        "teal@0.5",
        "teal@0.6",
        "teal@0.7",
        "wina@0.5",
        "greedy@0.5",
        "teal@0.5 roles=attention",
        "teal@0.5 roles=mlp",
        "teal@0.5 roles=down",
        "teal@0.5 windows=256",
        "teal@0.5 windows=4096",
    ]
    dense = {r["corpus"]: r["ppl"] for r in json.loads((results_dir() / "dense_baseline.json").read_text())["results"]}
    sweep = {
        (r["method"], r["target"], r["corpus"]): r["ppl"]
        for r in json.loads((results_dir() / "sparsity_sweep.json").read_text())["results"]
    }
    for row in record["experiments"]:
        for corpus, text in row["texts"].items():
            assert abs(text["ppl_dense"] - dense[corpus]) < 0.01  # GPU dense rows reproduce the CPU baseline
            assert abs(text["ppl_masked"] / sweep[row["method"], row["level"], corpus] - 1) < 0.01
            assert abs(text["measured_spon"] - row["level"]) <= 0.02  # SPON runs at its target sparsity
            gap = text["ppl_masked"] - text["ppl_dense"]
            assert text["recovery"] == (text["ppl_masked"] - text["ppl_spon"]) / gap
        assert row["training"]["val_kl_best"] <= row["training"]["val_kl_base"]
    assert set(record["summary"]) == {"0.25", "0.4", "0.5", "0.6", "0.7"}
    for headline in record["summary"].values():
        assert {"recovery_in", "recovery_out", "train_tokens_per_s", "device"} <= set(headline)
        assert headline["device"] == "NVIDIA H200" and headline["train_tokens_per_s"] >= 50_000


def test_spon_throughput_records_compare_against_a_plain_loop():
    for name, device in (("spon_throughput_h200.json", "cuda"), ("spon_throughput_cpu.json", "cpu")):
        record = json.loads((results_dir() / name).read_text())
        assert record["device"]["device"] == device
        loops = {(r["loop"], r["batch"]) for r in record["results"]}
        assert {b for loop, b in loops if loop == "plain"} == {b for loop, b in loops if loop == "sponlib"}
    h200 = json.loads((results_dir() / "spon_throughput_h200.json").read_text())
    assert h200["summary"]["best_tokens_per_s"] > 50_000


def test_folded_export_matches_spon_at_run_time_on_the_protocol_windows():
    folded = json.loads((results_dir() / "spon_folded_cpu.json").read_text())
    runtime = json.loads((results_dir() / "spon_runtime_cpu.json").read_text())
    assert folded["thresholds"].endswith("sparsity_thresholds.json") and runtime["spon"].endswith(
        "spon-teal-0.5.safetensors"
    )
    for a, b in zip(folded["results"], runtime["results"]):
        assert a["corpus"] == b["corpus"] and a["windows"] == b["windows"] == 64
        assert abs(a["ppl"] / b["ppl"] - 1) < 0.01 and abs(a["measured"] - b["measured"]) < 0.002


def test_analysis_record_compares_dense_masked_and_spon_layer_by_layer():
    import math

    import numpy as np

    from sponlib.analysis import separation

    record = json.loads((results_dir() / "analysis_smollm2.json").read_text())
    assert record["model"]["name"] == "smollm2-135m" and record["dtype"] == "float32"
    assert record["windows"]["source"] == "persuasion" and record["rule"] == "teal" and record["main_level"] == 0.5
    assert {"torch", "transformers"} <= set(record["versions"]) and record["windows"]["seed"] == 0
    for kind in ("masked", "spon"):
        layers = record["per_layer"][f"{kind}@0.5"]
        assert {"drift", "cosine", "cka", "lens_kl"} <= set(layers)
        assert all(len(v) == 30 and all(math.isfinite(x) for x in v) for v in layers.values())
        assert abs(record["measured_sparsity"][f"{kind}@0.5"] - 0.5) <= 0.02
    # SPON brings the output distribution closer to dense at every level (output KL = last lens layer)
    for level in record["levels"]:
        assert (
            record["per_layer"][f"spon@{level}"]["lens_kl"][-1] < record["per_layer"][f"masked@{level}"]["lens_kl"][-1]
        )
    # the separation table is what the per-window values give
    main = record["per_window_main"]
    recomputed = separation(main, [0.5], 0.5)
    for metric, entry in recomputed.items():
        assert entry["t_median"] == pytest.approx(record["separation"][metric]["t_median"], rel=1e-3, abs=1e-3)
    assert record["metric_order"] == sorted(record["separation"], key=lambda m: -record["separation"][m]["t_median"])
    assert np.array(record["cka_heatmap"]["masked"]).shape == (30, 30)


def test_widget_latency_summary_is_computed_from_its_rows():
    record = json.loads((results_dir() / "widget_latency_cpu.json").read_text())
    assert record["model"]["name"] == "smollm2-135m" and record["probe"]["window_len"] == 256
    assert record["threads"] == 2
    for key, entry in record["summary"].items():
        dashboard, kind = key.split("/")
        times = [r["seconds"] for r in record["rows"] if r["dashboard"] == dashboard and r["kind"] == kind]
        assert entry["max_s"] == max(times) and entry["met"] == (max(times) < entry["goal_s"])


def test_progress_bars_honour_tqdm_disable(monkeypatch):
    from sponlib.progress import no_bars

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert not no_bars(True) and no_bars(False)
    for value, hides in (("1", True), ("true", True), ("0", False), ("", False)):
        monkeypatch.setenv("TQDM_DISABLE", value)
        assert no_bars(True) is hides
