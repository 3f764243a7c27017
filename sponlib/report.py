"""README result tables, rendered from the JSON files under data/results/.

The README holds each table between two markers naming its source file:

    <!-- results: dense_baseline.json -->
    ...generated markdown...
    <!-- /results -->

`python -m sponlib readme` rewrites those blocks; a test checks they match, so a number in the
README is always the one its JSON records.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

from .data import data_dir
from .errors import CorruptFileError, InvalidArgumentError
from .io import atomic_write_text

_BLOCK = re.compile(r"(<!-- results: (?P<file>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


def results_dir() -> Path:
    return data_dir() / "results"


def load_result(filename: str) -> dict:
    """A record of data/results/ by file name, e.g. `load_result("spon_recovery.json")`."""
    path = results_dir() / filename
    if not path.is_file():
        known = ", ".join(sorted(p.name for p in results_dir().glob("*.json")))
        raise InvalidArgumentError(f"no result record {filename!r} in {results_dir()}; known: {known}")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CorruptFileError(f"{path} is not valid JSON ({err}); restore it with git or rerun its command")
    if not isinstance(record, dict) or "kind" not in record:
        raise CorruptFileError(f"{path} is not a sponlib result record (no 'kind'); restore it with git")
    return record


def source_line(record: dict) -> str:
    """Where a record's numbers come from, in one line: model, dtype, device, date and command."""
    device = record.get("device", {})
    parts = [record["model"]["name"]] if "model" in record else []  # benchmarks of bare kernels have none
    parts += [record.get("dtype", "?"), device.get("name", device.get("device", "?")), record.get("created", "?")[:10]]
    return f"{', '.join(parts)}: `{record.get('command', '?')}`"


def _provenance_line(record: dict) -> str:
    model, device, versions = record["model"], record["device"], record["versions"]
    return (f"Model `{model['name']}` ({model['architecture']}, {model['parameters']:,} parameters), "
            f"{record['dtype']}, {device['device']} ({device['name']}), torch {versions['torch']}, "
            f"transformers {versions['transformers']}; {record['windows']} windows of "
            f"{record['window_len']} tokens per text, seed {record['seed']}. "
            f"Command: `{record['command']}`")


def _run_line(record: dict) -> str:
    """Model, dtype, device, torch and command of a record that has no protocol windows."""
    model, device = record["model"], record["device"]
    return (f"Model `{model['name']}`, {record['dtype']}, {device['device']} ({device['name']}), torch "
            f"{record['versions']['torch']}. Command: `{record['command']}`\n")


def render_perplexity(record: dict) -> str:
    lines = ["| text | windows | predicted tokens | perplexity |", "| --- | ---: | ---: | ---: |"]
    for row in record["results"]:
        lines.append(f"| {row['corpus']} | {row['windows']} | {row['tokens']:,} | {row['ppl']:.2f} |")
    return "\n".join(lines) + "\n\n" + _provenance_line(record) + "\n"


def render_sweep(record: dict) -> str:
    """Perplexity (measured sparsity) per level and mask rule, then how each rule fares against
    teal, counted from the same rows."""
    rows = record["results"]
    corpora = list(dict.fromkeys(r["corpus"] for r in rows))
    methods = record["methods"]
    cell = {(r["method"], r["target"], r["corpus"]): r for r in rows}
    header = "| target | " + " | ".join(f"{m} ({c})" for m in methods for c in corpora) + " |"
    lines = [header, "| ---: |" + " ---: |" * (len(methods) * len(corpora))]
    dense = " | ".join(f"{cell[('dense', 0.0, c)]['ppl']:.2f}" for _ in methods for c in corpora)
    lines.append(f"| dense | {dense} |")
    for level in record["levels"]:
        values = [cell[(m, level, c)] for m in methods for c in corpora]
        lines.append(f"| {level:g} | " + " | ".join(f"{v['ppl']:.2f} ({v['measured']:.3f})" for v in values) + " |")
    notes = []
    for m in methods:
        if m == "teal":
            continue
        pairs = [(level, c) for level in record["levels"] for c in corpora]
        wins = [(level, c) for level, c in pairs if cell[(m, level, c)]["ppl"] < cell[("teal", level, c)]["ppl"]]
        notes.append(f"{m} has lower perplexity than teal in {len(wins)} of {len(pairs)} (level, text) pairs"
                     + (f" (levels {', '.join(sorted({f'{l:g}' for l, _ in wins}))})" if wins else ""))
    cal = record["calibration"]
    return ("\n".join(lines) + "\n\nCells: perplexity (measured sparsity, weighted by weights skipped). "
            + "; ".join(notes) + ". Calibration: " + f"{cal['windows']} windows of {cal['window_len']} tokens "
            f"of {cal['corpus']}, sparse-aware refinement on {cal['refine_windows']}, greedy allocation on "
            f"{cal['greedy_windows']}, {cal['elapsed_s']:.0f} s on {cal['device']['name']}.\n\n"
            + _provenance_line(record) + "\n")


def render_calibration(record: dict) -> str:
    """Measured sparsity on held-out text, thresholds from dense statistics alone vs sparse-aware."""
    lines = ["| rule | target | dense statistics only | sparse-aware |", "| --- | ---: | ---: | ---: |"]
    for row in record["results"]:
        cells = [f"{row[k]['measured']:.3f} ({row[k]['projections_off']} of {row[k]['projections']} off)"
                 for k in ("dense_only", "sparse_aware")]
        lines.append(f"| {row['method']} | {row['target']:g} | {cells[0]} | {cells[1]} |")
    cal, check = record["calibration"], record["check"]
    rules = len(record["results"]) // max(len(cal["refine_levels"]), 1)
    passes = {"dense_statistics_s": f"dense statistics ({cal['windows']} windows of {cal['window_len']} tokens)",
              "greedy_s": f"greedy allocations ({cal['greedy_windows']} windows)",
              "refine_s": f"sparse-aware refinement ({rules} rules x {len(cal['refine_levels'])} levels, "
                          f"{cal['refine_windows']} windows)"}
    spent = "; ".join(f"{passes[k]}: {v:.0f} s" for k, v in cal.get("timings", {}).items())
    return ("\n".join(lines) + f"\n\nCells: measured sparsity on {check['windows']} windows of "
            f"{check['window_len']} tokens of {check['source']} (weighted by weights skipped), and how many "
            f"projections miss their target by more than {record['tolerance']}. Calibrating on "
            f"{cal['corpus']} took {cal['elapsed_s']:.0f} s on {cal['device']['device']} ({cal['device']['name']}, "
            f"{cal['device'].get('torch_threads', '?')} threads): {spent}.\n\n" + _provenance_line(
                {**record, "windows": check["windows"], "window_len": check["window_len"], "seed": check["seed"]}) + "\n")


def _recovery_cell(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def render_recovery(record: dict, targets: bool = True) -> str:
    """SPON recovery per teal level, then the ablations at one level, from spon_recovery.json.
    `targets`: say whether the default model's recovery targets are met (not for other models)."""
    rows = record["experiments"]
    texts = [t["source"] for t in record["settings"]["test"]]
    header = ("| run | " + " | ".join(f"{t}: dense / masked / SPON | recovery" for t in texts)
              + " | measured sparsity masked / SPON | validation KL mask → SPON | training tokens/s |")
    lines = [header, "| --- |" + " ---: | ---: |" * len(texts) + " ---: | ---: | ---: |"]
    groups = {"levels": "teal, every projection, default data", "rules": "other mask rules",
              "roles": "vectors on some projections only", "data": "distinct training windows"}
    for group, title in groups.items():
        members = [r for r in rows if r["group"] == group]
        if not members:
            continue
        lines.append(f"| *{title}* |" + " |" * (2 * len(texts) + 3))
        for r in members:
            cells = []
            for t in texts:
                x = r["texts"][t]
                cells += [f"{x['ppl_dense']:.2f} / {x['ppl_masked']:.2f} / {x['ppl_spon']:.2f}",
                          _recovery_cell(x["recovery"])]
            first = r["texts"][texts[0]]
            training = r["training"]
            lines.append(f"| {r['name']} | " + " | ".join(cells)
                         + f" | {first['measured_masked']:.3f} / {first['measured_spon']:.3f}"
                         + f" | {training['val_kl_base']:.3f} → {training['val_kl_best']:.3f}"
                         + f" | {training['tokens_per_s']:,.0f} |")
    t0 = rows[0]["training"] if rows else {}
    tuning = record.get("tuning")
    lr_note = ""
    if tuning:
        tried = ", ".join(f"{r['lr']:g} ({r['val_kl_best']:.3f})" for r in tuning["results"])
        lr_note = (f" Learning rate {tuning['chosen_lr']:g}, the lowest validation KL after {tuning['steps']} steps "
                   f"of {tuning['method']} at {tuning['target']:g} among {tried}.")
    test = record["settings"]["test"][0]
    return ("\n".join(lines) + "\n\n"
            f"Recovery = (ppl_masked − ppl_SPON) / (ppl_masked − ppl_dense). Measured sparsity on "
            f"{texts[0]}, weighted by weights skipped. SPON: {rows[0]['parameters']:,} parameters "
            f"({rows[0]['parameter_share']:.3%} of the model) with every projection; AdamW at {t0.get('lr'):g}, "
            f"{t0.get('steps')} steps of {t0.get('batch_size')} windows of {t0.get('window_len')} tokens "
            f"({t0.get('train_tokens', 0):,} tokens), {t0.get('precision')} autocast, thresholds refitted under "
            f"the vectors every {t0.get('eval_every')} steps, best of {len(rows[0]['val_history'])} validations "
            f"on {record['settings']['validation']['windows']} windows of {record['settings']['validation']['source']} "
            f"kept.{lr_note}\n\n" + ("Targets: " + "; ".join(recovery_verdicts(record)) + ".\n\n" if targets else "")
            + _provenance_line({**record, "windows": test["windows"], "window_len": test["window_len"],
                                "seed": test["seed"]}) + "\n")


# The targets set for the default model with the teal mask: (level, text index, least recovery).
RECOVERY_TARGETS = ((0.5, 0, 0.70), (0.5, 1, 0.50), (0.7, 0, 0.85))


def recovery_verdicts(record: dict) -> list[str]:
    """Each recovery target, met or missed by how much, and every negative recovery."""
    texts = [t["source"] for t in record["settings"]["test"]]
    levels = {r["level"]: r for r in record["experiments"] if r["group"] == "levels"}
    verdicts = []
    for level, index, least in RECOVERY_TARGETS:
        if level in levels:
            value = levels[level]["texts"][texts[index]]["recovery"]
            outcome = "met" if value is not None and value >= least else f"missed by {least - (value or 0):.2f}"
            verdicts.append(f"teal {level:g} on {texts[index]}: {_recovery_cell(value)} against ≥ {least:.2f}, "
                            f"{outcome}")
    negative = [f"{r['name']} on {t} ({x['recovery']:.2f}: {x['ppl_spon']:.2f} with SPON, {x['ppl_masked']:.2f} masked)"
                for r in record["experiments"] for t, x in r["texts"].items()
                if x["recovery"] is not None and x["recovery"] < 0]
    total = sum(len(r["texts"]) for r in record["experiments"])
    verdicts.append(f"negative recoveries: {len(negative)} of {total}"
                    + (f", {'; '.join(negative)}" if negative else ""))
    return verdicts


def render_recovery_brief(record: dict) -> str:
    """A side run of the recovery experiment (other settings): recovery, the sparsity it really ran
    at, steps, learning rate and the best validation KL."""
    texts = [t["source"] for t in record["settings"]["test"]]
    lines = ["| run | " + " | ".join(f"recovery {t}" for t in texts)
             + " | measured sparsity masked / SPON | steps x windows | lr | validation KL mask → SPON (step) |",
             "| --- |" + " ---: |" * (len(texts) + 4)]
    for r in record["experiments"]:
        first, t = r["texts"][texts[0]], r["training"]
        lines.append(f"| {r['name']} | " + " | ".join(_recovery_cell(r["texts"][x]["recovery"]) for x in texts)
                     + f" | {first['measured_masked']:.3f} / {first['measured_spon']:.3f}"
                     + f" | {t['steps']} x {t['batch_size']} | {t['lr']:g}"
                     + f" | {t['val_kl_base']:.3f} → {t['val_kl_best']:.3f} ({t['best_step']}) |")
    return "\n".join(lines) + f"\n\nCommand: `{record['command']}` ({record['device']['name']})\n"


def render_fold_check(record: dict) -> str:
    """Perplexity of the folded export (spon_folded_cpu.json) against SPON applied at run time on
    the same device (spon_runtime_cpu.json) and in the recovery record (GPU)."""
    runtime = json.loads((results_dir() / "spon_runtime_cpu.json").read_text())
    recovery = json.loads((results_dir() / "spon_recovery.json").read_text())
    level = next(r for r in recovery["experiments"] if r["name"] == f"teal@{record['sparsity']:g}")
    texts = [r["corpus"] for r in record["results"]]
    lines = ["| SPON | device | " + " | ".join(texts) + " |", "| --- | --- |" + " ---: |" * len(texts)]
    rows = [("vectors at run time (`eval --spon`)", runtime["device"]["name"],
             {r["corpus"]: r["ppl"] for r in runtime["results"]}),
            ("folded export (`eval --thresholds`)", record["device"]["name"],
             {r["corpus"]: r["ppl"] for r in record["results"]}),
            ("vectors at run time (recovery record)", recovery["device"]["name"],
             {t: level["texts"][t]["ppl_spon"] for t in texts})]
    for label, device, ppl in rows:
        lines.append(f"| {label} | {device} | " + " | ".join(f"{ppl[t]:.2f}" for t in texts) + " |")
    return ("\n".join(lines) + f"\n\nteal {record['sparsity']:g}, {record['windows']} windows of "
            f"{record['window_len']} tokens per text, seed {record['seed']}. "
            f"Commands: `{runtime['command']}`; `{record['command']}`\n")


def render_throughput(record: dict) -> str:
    """SPON training tokens/s, sponlib's loop against a plain loop, from spon_throughput_*.json."""
    lines = ["| loop | precision | windows per step | tokens/s | vs plain loop |", "| --- | --- | ---: | ---: | ---: |"]
    for row in record["results"]:
        ratio = row.get("speedup_vs_plain", 1.0)
        lines.append(f"| {row['loop']} | {row['precision']} | {row['batch']} | {row['tokens_per_s']:,.0f} "
                     f"| {ratio:.2f} |")
    device = record["device"]
    return ("\n".join(lines) + f"\n\n{device['device']} ({device['name']}), teal at {record['sparsity']:g}, "
            f"windows of {record['window_len']} tokens, {record['steps']} timed steps per sponlib row, torch "
            f"{record['versions']['torch']}. Command: `{record['command']}`\n")


def render_analysis(record: dict) -> str:
    """Which metrics separate masked from SPON (from analysis_<model>.json), then the per-level
    drift and output KL, the CKA-saturation counts and the SPON-versus-mean-residual check."""
    main, sep = record["main_level"], record["separation"]
    lines = [f"| metric (distance from dense) | masked {main:g} | SPON {main:g} | SPON / masked | median t | "
             "separated | mask within 0.02 of dense |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for metric in record["metric_order"]:
        e = sep[metric]
        lines.append(f"| {metric} | {e['distance_masked']:.4f} | {e['distance_spon']:.4f} | "
                     f"{e['distance_spon'] / e['distance_masked']:.2f} | {e['t_median']:.1f} | {e['separated']:.0%} | "
                     f"{e['near_ideal']:.0%} |")
    levels = ["", "| level | drift masked / SPON | output KL masked / SPON (nats) | measured sparsity masked / SPON |",
              "| ---: | ---: | ---: | ---: |"]
    for level in record["levels"]:
        m, s_ = record["per_layer"][f"masked@{level}"], record["per_layer"][f"spon@{level}"]
        mean = lambda values: sum(values) / len(values)  # noqa: E731
        levels.append(f"| {level:g} | {mean(m['drift']):.3f} / {mean(s_['drift']):.3f} | {m['lens_kl'][-1]:.3f} / "
                      f"{s_['lens_kl'][-1]:.3f} | {record['measured_sparsity'][f'masked@{level}']:.3f} / "
                      f"{record['measured_sparsity'][f'spon@{level}']:.3f} |")
    high = lambda values: sum(v >= 0.98 for v in values)  # noqa: E731
    n_layers = len(record["per_layer"][f"masked@{main}"]["cka"])
    with_first, without = ({k: record["per_layer"][f"{k}@{main}"][metric] for k in ("masked", "spon")}
                           for metric in ("cka_all_positions", "cka"))
    align = record["spon_alignment"][str(main)]
    windows, tokens = record["windows"], record["tokens"]
    return ("\n".join(lines + levels) + "\n\n"
            f"Distances, mean over the {n_layers} layers, on {tokens['per_variant']:,} tokens of "
            f"{windows['windows']} windows of {windows['window_len']} tokens of {windows['source']} "
            f"(first position of each window left out), {record['rule']} mask. t: paired t statistic of masked minus "
            f"SPON distance across windows (median over layers); separated: share of (layer, level) pairs where SPON "
            f"is closer with t above {sep[record['metric_order'][0]]['critical_t']:.2f} (5 %, two-sided). "
            f"CKA saturation: plain CKA over every position reads ≥ 0.98 in {high(with_first['masked'])} of {n_layers} "
            f"layers for the mask at {main:g} and {high(with_first['spon'])} for SPON; without the first position of "
            f"each window, in {high(without['masked'])} and {high(without['spon'])}. SPON against the mean residual "
            f"at {main:g}: median cosine of W α with W E[x − S(x)] {align['median_cosine_mask_states']:.2f} (masked "
            f"states) / {align['median_cosine_spon_states']:.2f} (SPON states), median ‖W α‖ / ‖W E[x − S(x)]‖ "
            f"{align['median_norm_ratio']:.1f}.\n\n" + _run_line(record))


def render_widget_latency(record: dict) -> str:
    """Dashboard redraw times after a slider move (benchmarks/widget_latency.py)."""
    lines = ["| dashboard | level | median s | max s | goal | met |", "| --- | --- | ---: | ---: | ---: | --- |"]
    for key, s_ in record["summary"].items():
        dashboard, kind = key.split("/")
        lines.append(f"| {dashboard} | {kind} | {s_['median_s']:.3f} | {s_['max_s']:.3f} | < {s_['goal_s']:g} s | "
                     f"{'yes' if s_['met'] else 'no'} |")
    probe = record["probe"]
    return ("\n".join(lines) + f"\n\nProbe: {probe['windows']} window of {probe['window_len']} tokens of "
            f"{probe['source']}, logit lens on {record['lens_tokens']} tokens, {record['threads']} torch threads. "
            f"A new level with SPON vectors runs two forward passes (masked, then SPON).\n\n" + _run_line(record))


# result file -> renderer; later stages register their tables here.
def render_generalization(record: dict) -> str:
    """Recovery of the shipped vectors on each Brown genre against the in-domain novel, per level
    (from spon_generalization.json)."""
    lines = ["| level | in domain | Brown genres, median | least | most | genres below in domain |",
             "| ---: | ---: | ---: | --- | --- | ---: |"]
    for level, s in record["summary"].items():
        least, most = s["least_other"], s["most_other"]
        lines.append(f"| {level} | {s['in_domain']:.3f} | {s['median_other']:.3f} | {least['recovery']:.3f} "
                     f"({least['text']}) | {most['recovery']:.3f} ({most['text']}) | "
                     f"{s['others_below_in_domain']} of {s['others']} |")
    first = record["texts"][0]
    return ("\n".join(lines) + f"\n\n{len(record['texts'])} texts ({first['source']} first), {first['windows']} windows of "
            f"{first['window_len']} tokens each, seed {first['seed']}, {record['rule']} mask. " + _run_line(record))


def render_gemv_cpu(record: dict) -> str:
    """The CPU row path of the sparse GEMV against dense and against itself at s = 0
    (from gemv_cpu.json, benchmarks/sparse_gemv_cpu.py)."""
    lines = ["| sparsity | row path vs dense `F.linear`, median | best (shape) | row path vs itself at 0, median | "
             "ideal 1/(1−s) |", "| ---: | ---: | --- | ---: | ---: |"]
    for level, s in record["summary"].items():
        lines.append(f"| {level} | {s['rows_median_speedup']:.2f} | {s['rows_best_speedup']:.2f} "
                     f"({s['rows_best_shape']}) | {s['rows_median_speedup_vs_rows_at_0']:.2f} | {s['ideal_speedup']:.2f} |")
    device = record["device"]
    return ("\n".join(lines) + f"\n\nBatch {record['batch']}, {record['dtype']}, {record['threads']} threads on "
            f"{device['name']}, medians of {record['rounds']} interleaved rounds of {record['repeats']} calls, each "
            f"call on a fresh weight copy and input ({len({(r['model'], r['projection']) for r in record['rows']})} "
            f"SmolLM2-135M and Llama-3-8B shapes), torch {record['versions']['torch']}. "
            f"Command: `{record['command']}`\n")


def _pct(x: float) -> str:
    return f"{x:+.1%}"


def render_kernels(record: dict) -> str:
    """The Triton sparse GEMV against cuBLAS: per decoder layer, end-to-end decoding and the
    headline summary (from kernels_h200.json, benchmarks/kernels_h200.py)."""
    summary = record["summary"]
    head = (f"Headline on the {summary['gpu']}, sparsity 0.5, Llama-3-8B shapes, bf16: all seven projections of a "
            f"layer {summary['layer_speedup_at_0.5']:.2f}x cuBLAS ({summary['layer_fused_speedup_at_0.5']:.2f}x with "
            f"q/k/v and gate/up fused), {_pct(summary['overhead_at_0'])} time at sparsity 0; batch-1 decoding "
            f"{summary['e2e_speedup_at_0.5']:.2f}x dense ({summary['e2e_fused_speedup_at_0.5']:.2f}x fused) against "
            f"a byte-count bound of {summary['e2e_bound_at_0.5']:.2f}x, {_pct(summary['e2e_overhead_at_0'])} time "
            "at sparsity 0.\n\n")
    lines = ["| model | sparsity | measured | dense µs | sparse µs | vs cuBLAS | fused µs | fused vs cuBLAS | "
             "ideal 1/(1−s) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in record["layer"]:
        lines.append(f"| {r['model']} layer | {r['sparsity']} | {r['measured_sparsity']:.3f} | {r['dense_us']:.1f} | "
                     f"{r['sparse_us']:.1f} | {r['speedup']:.2f} | {r['fused_us']:.1f} | {r['fused_speedup']:.2f} | "
                     f"{r['ideal']:.2f} |")
    gemv = ["| projection | in → out | sparsity | dense µs | dense GB/s | sparse µs | sparse GB/s | vs cuBLAS | "
            "share of 1/(1−s) |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in record["gemv"]:
        if r["sparsity"] in (0.0, 0.5, 0.7):
            gemv.append(f"| {r['model']} {r['roles']} | {r['in']} → {r['out']} | {r['sparsity']} | {r['dense_us']:.2f} | "
                        f"{r['dense_GBps']:.0f} | {r['sparse_us']:.2f} | {r['sparse_GBps']:.0f} | {r['speedup']:.2f} | "
                        f"{r['share_of_ideal']:.0%} |")
    e2e = ["| model | variant | sparsity | measured | tokens/s | GB/s | vs dense | byte bound |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, run in record.get("e2e", {}).items():
        for r in run["rows"]:
            if r["variant"] == "dense":
                e2e.append(f"| {name} | dense | 0 | | {r['tokens_per_s']:.1f} | {r['GBps']:.0f} | 1.00 | |")
            elif r["sparsity"] in (0.0, 0.25, 0.5, 0.7):
                e2e.append(f"| {name} | {r['variant']} | {r['sparsity']} | {r['measured_sparsity']:.3f} | "
                           f"{r['tokens_per_s']:.1f} | {r['GBps']:.0f} | {r['speedup']:.2f} | {r['bound']:.2f} |")
    runs = record["runs"]
    first = runs[0]
    return (head + "\n".join(gemv) + "\n\n" + "\n".join(lines) + "\n\n" + "\n".join(e2e) + "\n\n"
            f"{first['gpu']}, torch {first['torch']}, Triton {first['triton']}, CUDA {first['cuda']}, bf16. Layer rows: "
            "each call reads its own weight copy and a fresh N(0, 1) input, the calls captured in one CUDA graph. "
            "Decoding: batch 1, greedy, static KV cache of "
            f"{next(iter(record['e2e'].values()))['max_len']} tokens, torch.compile(mode=\"reduce-overhead\") for "
            "dense and sparse alike; the SmolLM2 rows use the shipped calibration with SPON folded into biases. "
            "Commands: " + "; ".join(f"`{r['command']}`" for r in runs) + "\n")


# What the README's task table shows, in order: (task, source, metric, label, higher is better).
TASK_ROWS = (
    ("cloze", "persuasion", "accuracy", "last-word cloze, Persuasion", True),
    ("cloze", "brown", "accuracy", "last-word cloze, Brown", True),
    ("choice", "persuasion", "accuracy", "next-sentence choice, Persuasion", True),
    ("choice", "brown", "accuracy", "next-sentence choice, Brown", True),
    ("knowledge", "all", "top1", "knowledge, first token top-1", True),
    ("knowledge", "all", "top5", "knowledge, first token top-5", True),
    ("knowledge", "all", "exact", "knowledge, whole answer", True),
    ("drift", "persuasion", "first_divergence", "generation, first divergent token, Persuasion", True),
    ("drift", "brown", "first_divergence", "generation, first divergent token, Brown", True),
    ("drift", "persuasion", "repetition", "generation, repeated 4-grams, Persuasion", False),
    ("drift", "brown", "repetition", "generation, repeated 4-grams, Brown", False),
)
TASK_LEVELS = (0.25, 0.5, 0.7)


def _task_cell(row: dict) -> str:
    """masked → SPON, the SPON value in bold when the paired interval of SPON − mask excludes 0."""
    fmt = "{:.1f}" if row["metric"] == "first_divergence" else "{:.3f}"
    low, high = row["spon_minus_masked"]["ci"]
    spon = fmt.format(row["spon"]["value"])
    if low > 0 or high < 0:
        spon = f"**{spon}**"
    return f"{fmt.format(row['masked']['value'])} → {spon}"


def task_verdicts(entry: dict) -> dict[str, list[str]]:
    """Where SPON beats the mask, loses to it, or cannot be told apart (paired 95% interval of the
    difference), over the README's rows and levels."""
    rows = {(r["task"], r["source"], r["metric"], r["level"]): r for r in entry["summary"]}
    out = {"better": [], "worse": [], "same": []}
    for task, source, metric, label, higher in TASK_ROWS:
        for level in TASK_LEVELS:
            row = rows.get((task, source, metric, level))
            if row is None:
                continue
            low, high = row["spon_minus_masked"]["ci"]
            gain = (low > 0) if higher else (high < 0)
            loss = (high < 0) if higher else (low > 0)
            out["better" if gain else "worse" if loss else "same"].append(f"{label} at {level:g}")
    return out


def render_tasks(record: dict) -> str:
    """Per model family: each task's dense value and, at each level, masked → SPON, from tasks.json."""
    parts = []
    for family, entry in record["families"].items():
        rows = {(r["task"], r["source"], r["metric"], r["level"]): r for r in entry["summary"]}
        levels = [level for level in TASK_LEVELS if any(k[3] == level for k in rows)]
        lines = [f"**{family}** ({entry['model']['architecture']}, {entry['model']['parameters'] / 1e6:.0f} M parameters)",
                 "", "| task | n | dense | " + " | ".join(f"{level:g}: masked → SPON" for level in levels) + " |",
                 "| --- | ---: | ---: |" + " ---: |" * len(levels)]
        for task, source, metric, label, _ in TASK_ROWS:
            at = [rows.get((task, source, metric, level)) for level in levels]
            if not any(at):
                continue
            first = next(r for r in at if r)
            fmt = "{:.1f}" if metric == "first_divergence" else "{:.3f}"
            lines.append(f"| {label} | {first['dense']['n']} | {fmt.format(first['dense']['value'])} | "
                         + " | ".join(_task_cell(r) if r else "-" for r in at) + " |")
        verdicts = task_verdicts(entry)
        cells = sum(len(v) for v in verdicts.values())
        measured = {k: v["measured_sparsity"] for k, v in entry["cells"].items() if "measured_sparsity" in v}
        lines += ["", f"SPON against the mask alone, paired 95% intervals over {cells} task × level cells: better in "
                  f"{len(verdicts['better'])}, worse in {len(verdicts['worse'])}, not distinguishable in "
                  f"{len(verdicts['same'])}."
                  + (f" Worse: {'; '.join(verdicts['worse'])}." if verdicts["worse"] else ""),
                  "", "Measured sparsity over the task inputs: " + ", ".join(f"{k} {v:.3f}" for k, v in measured.items())
                  + f". {entry['device']['name']}, {entry['settings']['dtype']}, torch {entry['versions'].get('torch')}, "
                  f"transformers {entry['versions'].get('transformers')}; command `{entry['command']}`."]
        parts.append("\n".join(lines))
    settings = next(iter(record["families"].values()))["settings"]
    sizes = settings["sizes"]
    return ("\n\n".join(parts) + "\n\n"
            f"n = examples (cloze and choice per text, knowledge items, generation prompts per text; seed {sizes['seed']}). "
            "Bold: the paired 95% bootstrap interval of SPON − mask excludes zero (Wilson intervals for each "
            "accuracy, bootstrap for the generation means, are in the record). Generation: greedy, "
            f"{settings['tasks']['drift_new_tokens']} new tokens after {settings['tasks']['drift']['persuasion'][1]}-token "
            "prompts; the dense model diverges from itself nowhere (64.0) and repeats its own 4-grams at the rate in "
            "the dense column. Created " + record["created"] + ".\n")


def render_multigpu(record: dict) -> str:
    """SPON training on 1 GPU, 2 data-parallel GPUs and one model spread over 2 GPUs, and how far
    their vectors land from the 1-GPU run's (multigpu*.json); evaluation on 1 and 2 processes."""
    lines = ["| setup | windows per step | devices | training tokens/s | vs 1 GPU | validation KL, mask → SPON "
             "| ‖Δα‖ / ‖α‖ vs 1 GPU | cosine |", "| --- | ---: | --- | ---: | ---: | --- | ---: | ---: |"]
    for row in record["training"]:
        devices = ", ".join(row["placement"]["devices"]) if row["processes"] == 1 else (
            f"{row['processes']} processes, one GPU each")
        difference = row["vs_1gpu"]
        lines.append(f"| {row['setup']} | {row['batch']} | {devices} | {row['tokens_per_s']:,.0f} | "
                     f"{row['speedup_vs_1gpu']:.2f} | {row['val_kl_base']:.4f} → {row['val_kl_best']:.4f} | "
                     f"{difference['relative_l2']:.2g} | {difference['cosine']:.6f} |")
    arguments = " ".join(record["training_arguments"]) or "default settings"
    text = ("\n".join(lines) + f"\n\n{record['gpus'][0]} ×{len(record['gpus'])}, {record['model']['name']}, teal at "
            f"{record['sparsity']:g}, {record['steps']} steps at lr {record['lr']:g}, {record['train_windows']} training "
            f"windows of {record['window_len']} tokens, precision {record['precision']}, {arguments}; NCCL_NVLS_ENABLE="
            f"{record['environment']['NCCL_NVLS_ENABLE']}. Command: `{record['command']}`\n")
    if record["evaluation"]:
        lines = ["| eval | windows per pass | perplexity | vs the first row | measured sparsity |",
                 "| --- | ---: | ---: | ---: | ---: |"]
        for row in record["evaluation"]:
            lines.append(f"| {row['processes']} process{'es' if row['processes'] > 1 else ''} | {row['batch_size']} | "
                         f"{row['ppl']:.4f} | {row['ppl_relative_to_first']:+.1e} | {row['measured']:.5f} |")
        text += ("\n" + "\n".join(lines) + f"\n\nThe 1-GPU vectors above, evaluated on all "
                 f"{record['evaluation'][0]['windows']} Persuasion windows.\n")
    return text


RENDERERS: dict[str, Callable[[dict], str]] = {
    "dense_baseline.json": render_perplexity,
    "sparsity_sweep.json": render_sweep,
    "calibration_cpu.json": render_calibration,
    "spon_recovery.json": render_recovery,
    "spon_recovery_fixed_thresholds.json": render_recovery_brief,
    "spon_recovery_longer.json": render_recovery_brief,
    "spon_folded_cpu.json": render_fold_check,
    "spon_throughput_h200.json": render_throughput,
    "spon_throughput_cpu.json": render_throughput,
    "analysis_smollm2.json": render_analysis,
    "widget_latency_cpu.json": render_widget_latency,
    "spon_generalization.json": render_generalization,
    "gemv_cpu.json": render_gemv_cpu,
    "kernels_h200.json": render_kernels,
    "spon_recovery_gemma3.json": lambda record: render_recovery(record, targets=False),
    "tasks.json": render_tasks,
    "multigpu.json": render_multigpu,
    "multigpu_agreement.json": render_multigpu,
    "multigpu_halves.json": render_multigpu,
}


def render_block(filename: str) -> str:
    if filename not in RENDERERS:
        raise KeyError(f"no README renderer for {filename}; known: {', '.join(RENDERERS)}")
    return RENDERERS[filename](load_result(filename))


def update_readme(path: str | Path = "README.md", check: bool = False) -> bool:
    """Re-render every results block of the README at `path`. Returns True if anything changed
    (with check=True the file is left untouched)."""
    path = Path(path)
    text = path.read_text()
    new = _BLOCK.sub(lambda m: m.group(1) + render_block(m.group("file")) + m.group(4), text)
    if new != text and not check:
        atomic_write_text(path, new)
    return new != text
