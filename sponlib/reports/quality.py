"""README tables of the quality records: perplexity, the sparsity sweep, calibration, SPON recovery
and its side runs, the folded export, representation analysis, generalisation and tasks."""

from __future__ import annotations

from ..experiments.protocol import TASK_LEVELS
from ..experiments.recovery import format_recovery, recovery_verdicts
from ..experiments.robust_record import chosen_entries
from ..experiments.tasks import TASK_ROWS, task_verdicts
from ..records import load_result
from .provenance import provenance_line, run_line


def render_perplexity(record: dict) -> str:
    lines = ["| text | windows | predicted tokens | perplexity |", "| --- | ---: | ---: | ---: |"]
    for row in record["results"]:
        lines.append(f"| {row['corpus']} | {row['windows']} | {row['tokens']:,} | {row['ppl']:.2f} |")
    return "\n".join(lines) + "\n\n" + provenance_line(record) + "\n"


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
        notes.append(
            f"{m} has lower perplexity than teal in {len(wins)} of {len(pairs)} (level, text) pairs"
            + (f" (levels {', '.join(sorted({f'{level:g}' for level, _ in wins}))})" if wins else "")
        )
    cal = record["calibration"]
    return (
        "\n".join(lines)
        + "\n\nCells: perplexity (measured sparsity, weighted by weights skipped). "
        + "; ".join(notes)
        + ". Calibration: "
        + f"{cal['windows']} windows of {cal['window_len']} tokens "
        f"of {cal['corpus']}, sparse-aware refinement on {cal['refine_windows']}, greedy allocation on "
        f"{cal['greedy_windows']}, {cal['elapsed_s']:.0f} s on {cal['device']['name']}.\n\n"
        + provenance_line(record)
        + "\n"
    )


def render_calibration(record: dict) -> str:
    """Measured sparsity on held-out text, thresholds from dense statistics alone vs sparse-aware."""
    lines = ["| rule | target | dense statistics only | sparse-aware |", "| --- | ---: | ---: | ---: |"]
    for row in record["results"]:
        cells = [
            f"{row[k]['measured']:.3f} ({row[k]['projections_off']} of {row[k]['projections']} off)"
            for k in ("dense_only", "sparse_aware")
        ]
        lines.append(f"| {row['method']} | {row['target']:g} | {cells[0]} | {cells[1]} |")
    cal, check = record["calibration"], record["check"]
    rules = len(record["results"]) // max(len(cal["refine_levels"]), 1)
    passes = {
        "dense_statistics_s": f"dense statistics ({cal['windows']} windows of {cal['window_len']} tokens)",
        "greedy_s": f"greedy allocations ({cal['greedy_windows']} windows)",
        "refine_s": f"sparse-aware refinement ({rules} rules x {len(cal['refine_levels'])} levels, "
        f"{cal['refine_windows']} windows)",
    }
    spent = "; ".join(f"{passes[k]}: {v:.0f} s" for k, v in cal.get("timings", {}).items())
    return (
        "\n".join(lines) + f"\n\nCells: measured sparsity on {check['windows']} windows of "
        f"{check['window_len']} tokens of {check['source']} (weighted by weights skipped), and how many "
        f"projections miss their target by more than {record['tolerance']}. Calibrating on "
        f"{cal['corpus']} took {cal['elapsed_s']:.0f} s on {cal['device']['device']} ({cal['device']['name']}, "
        f"{cal['device'].get('torch_threads', '?')} threads): {spent}.\n\n"
        + provenance_line(
            {**record, "windows": check["windows"], "window_len": check["window_len"], "seed": check["seed"]}
        )
        + "\n"
    )


def _recovery_row(r: dict, texts: list[str]) -> str:
    """One run of the recovery table: perplexities and recovery per text, measured sparsity,
    validation KL and throughput."""
    cells = []
    for t in texts:
        x = r["texts"][t]
        cells += [f"{x['ppl_dense']:.2f} / {x['ppl_masked']:.2f} / {x['ppl_spon']:.2f}", format_recovery(x["recovery"])]
    first, training = r["texts"][texts[0]], r["training"]
    return (
        f"| {r['name']} | "
        + " | ".join(cells)
        + f" | {first['measured_masked']:.3f} / {first['measured_spon']:.3f}"
        + f" | {training['val_kl_base']:.3f} → {training['val_kl_best']:.3f}"
        + f" | {training['tokens_per_s']:,.0f} |"
    )


def render_recovery(record: dict, targets: bool = True) -> str:
    """SPON recovery per teal level, then the ablations at one level, from spon_recovery.json.
    `targets`: say whether the default model's recovery targets are met (not for other models)."""
    rows = record["experiments"]
    texts = [t["source"] for t in record["settings"]["test"]]
    header = (
        "| run | "
        + " | ".join(f"{t}: dense / masked / SPON | recovery" for t in texts)
        + " | measured sparsity masked / SPON | validation KL mask → SPON | training tokens/s |"
    )
    lines = [header, "| --- |" + " ---: | ---: |" * len(texts) + " ---: | ---: | ---: |"]
    groups = {
        "levels": "teal, every projection, default data",
        "rules": "other mask rules",
        "roles": "vectors on some projections only",
        "data": "distinct training windows",
    }
    for group, title in groups.items():
        members = [r for r in rows if r["group"] == group]
        if not members:
            continue
        lines.append(f"| *{title}* |" + " |" * (2 * len(texts) + 3))
        lines += [_recovery_row(r, texts) for r in members]
    t0 = rows[0]["training"] if rows else {}
    tuning = record.get("tuning")
    lr_note = ""
    if tuning:
        tried = ", ".join(f"{r['lr']:g} ({r['val_kl_best']:.3f})" for r in tuning["results"])
        lr_note = (
            f" Learning rate {tuning['chosen_lr']:g}, the lowest validation KL after {tuning['steps']} steps "
            f"of {tuning['method']} at {tuning['target']:g} among {tried}."
        )
    test = record["settings"]["test"][0]
    return (
        "\n".join(lines) + "\n\n"
        f"Recovery = (ppl_masked − ppl_SPON) / (ppl_masked − ppl_dense). Measured sparsity on "
        f"{texts[0]}, weighted by weights skipped. SPON: {rows[0]['parameters']:,} parameters "
        f"({rows[0]['parameter_share']:.3%} of the model) with every projection; AdamW at {t0.get('lr'):g}, "
        f"{t0.get('steps')} steps of {t0.get('batch_size')} windows of {t0.get('window_len')} tokens "
        f"({t0.get('train_tokens', 0):,} tokens), {t0.get('precision')} autocast, thresholds refitted under "
        f"the vectors every {t0.get('eval_every')} steps, best of {len(rows[0]['val_history'])} validations "
        f"on {record['settings']['validation']['windows']} windows of {record['settings']['validation']['source']} "
        f"kept.{lr_note}\n\n"
        + ("Targets: " + "; ".join(recovery_verdicts(record)) + ".\n\n" if targets else "")
        + provenance_line(
            {**record, "windows": test["windows"], "window_len": test["window_len"], "seed": test["seed"]}
        )
        + "\n"
    )


def render_recovery_brief(record: dict) -> str:
    """A side run of the recovery experiment (other settings): recovery, the sparsity it really ran
    at, steps, learning rate and the best validation KL."""
    texts = [t["source"] for t in record["settings"]["test"]]
    lines = [
        "| run | "
        + " | ".join(f"recovery {t}" for t in texts)
        + " | measured sparsity masked / SPON | steps x windows | lr | validation KL mask → SPON (step) |",
        "| --- |" + " ---: |" * (len(texts) + 4),
    ]
    for r in record["experiments"]:
        first, t = r["texts"][texts[0]], r["training"]
        lines.append(
            f"| {r['name']} | "
            + " | ".join(format_recovery(r["texts"][x]["recovery"]) for x in texts)
            + f" | {first['measured_masked']:.3f} / {first['measured_spon']:.3f}"
            + f" | {t['steps']} x {t['batch_size']} | {t['lr']:g}"
            + f" | {t['val_kl_base']:.3f} → {t['val_kl_best']:.3f} ({t['best_step']}) |"
        )
    return "\n".join(lines) + f"\n\nCommand: `{record['command']}` ({record['device']['name']})\n"


def render_fold_check(record: dict) -> str:
    """Perplexity of the folded export (spon_folded_cpu.json) against SPON applied at run time on
    the same device (spon_runtime_cpu.json) and in the record that made the shipped vectors (GPU;
    only the texts it scored)."""
    runtime = load_result("spon_runtime_cpu.json")
    robust = load_result("spon_robust.json")
    level = next(e for e in chosen_entries(robust, "final") if e["level"] == record["sparsity"])
    texts = [r["corpus"] for r in record["results"]]
    lines = ["| SPON | device | " + " | ".join(texts) + " |", "| --- | --- |" + " ---: |" * len(texts)]
    rows = [
        (
            "vectors at run time (`eval --spon`)",
            runtime["device"]["name"],
            {r["corpus"]: r["ppl"] for r in runtime["results"]},
        ),
        (
            "folded export (`eval --thresholds`)",
            record["device"]["name"],
            {r["corpus"]: r["ppl"] for r in record["results"]},
        ),
        (
            "vectors at run time (robust record)",
            robust["device"]["name"],
            {row["text"]: row["ppl_spon"] for row in level["rows"]},
        ),
    ]
    for label, device, ppl in rows:
        cells = [f"{ppl[t]:.2f}" if t in ppl else "–" for t in texts]
        lines.append(f"| {label} | {device} | " + " | ".join(cells) + " |")
    return (
        "\n".join(lines) + f"\n\nteal {record['sparsity']:g}, {record['windows']} windows of "
        f"{record['window_len']} tokens per text, seed {record['seed']}. "
        f"Commands: `{runtime['command']}`; `{record['command']}`\n"
    )


def render_analysis(record: dict) -> str:
    """Which metrics separate masked from SPON (from analysis_<model>.json), then the per-level
    drift and output KL, the CKA-saturation counts and the SPON-versus-mean-residual check."""
    main, sep = record["main_level"], record["separation"]
    lines = [
        f"| metric (distance from dense) | masked {main:g} | SPON {main:g} | SPON / masked | median t | "
        "separated | mask within 0.02 of dense |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for metric in record["metric_order"]:
        e = sep[metric]
        lines.append(
            f"| {metric} | {e['distance_masked']:.4f} | {e['distance_spon']:.4f} | "
            f"{e['distance_spon'] / e['distance_masked']:.2f} | {e['t_median']:.1f} | {e['separated']:.0%} | "
            f"{e['near_ideal']:.0%} |"
        )
    levels = [
        "",
        "| level | drift masked / SPON | output KL masked / SPON (nats) | measured sparsity masked / SPON |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for level in record["levels"]:
        m, s_ = record["per_layer"][f"masked@{level}"], record["per_layer"][f"spon@{level}"]
        mean = lambda values: sum(values) / len(values)  # noqa: E731
        levels.append(
            f"| {level:g} | {mean(m['drift']):.3f} / {mean(s_['drift']):.3f} | {m['lens_kl'][-1]:.3f} / "
            f"{s_['lens_kl'][-1]:.3f} | {record['measured_sparsity'][f'masked@{level}']:.3f} / "
            f"{record['measured_sparsity'][f'spon@{level}']:.3f} |"
        )
    high = lambda values: sum(v >= 0.98 for v in values)  # noqa: E731
    n_layers = len(record["per_layer"][f"masked@{main}"]["cka"])
    with_first, without = (
        {k: record["per_layer"][f"{k}@{main}"][metric] for k in ("masked", "spon")}
        for metric in ("cka_all_positions", "cka")
    )
    align = record["spon_alignment"][str(main)]
    windows, tokens = record["windows"], record["tokens"]
    return (
        "\n".join(lines + levels) + "\n\n"
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
        f"{align['median_norm_ratio']:.1f}.\n\n" + run_line(record)
    )


def render_generalization(record: dict) -> str:
    """Recovery of the shipped vectors on each Brown genre against the in-domain novel, per level
    (from spon_generalization.json)."""
    lines = [
        "| level | in domain | Brown genres, median | least | most | genres below in domain |",
        "| ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for level, s in record["summary"].items():
        least, most = s["least_other"], s["most_other"]
        lines.append(
            f"| {level} | {s['in_domain']:.3f} | {s['median_other']:.3f} | {least['recovery']:.3f} "
            f"({least['text']}) | {most['recovery']:.3f} ({most['text']}) | "
            f"{s['others_below_in_domain']} of {s['others']} |"
        )
    first = record["texts"][0]
    return (
        "\n".join(lines) + f"\n\n{len(record['texts'])} texts ({first['source']} first), {first['windows']} windows of "
        f"{first['window_len']} tokens each, seed {first['seed']}, {record['rule']} mask. " + run_line(record)
    )


def _task_cell(row: dict) -> str:
    """masked → SPON, the SPON value in bold when the paired interval of SPON − mask excludes 0."""
    fmt = "{:.1f}" if row["metric"] == "first_divergence" else "{:.3f}"
    low, high = row["spon_minus_masked"]["ci"]
    spon = fmt.format(row["spon"]["value"])
    if low > 0 or high < 0:
        spon = f"**{spon}**"
    return f"{fmt.format(row['masked']['value'])} → {spon}"


def render_tasks(record: dict) -> str:
    """Per model family: each task's dense value and, at each level, masked → SPON, from tasks.json."""
    parts = []
    for family, entry in record["families"].items():
        rows = {(r["task"], r["source"], r["metric"], r["level"]): r for r in entry["summary"]}
        levels = [level for level in TASK_LEVELS if any(k[3] == level for k in rows)]
        lines = [
            f"**{family}** ({entry['model']['architecture']}, {entry['model']['parameters'] / 1e6:.0f} M parameters)",
            "",
            "| task | n | dense | " + " | ".join(f"{level:g}: masked → SPON" for level in levels) + " |",
            "| --- | ---: | ---: |" + " ---: |" * len(levels),
        ]
        for task, source, metric, label, _ in TASK_ROWS:
            at = [rows.get((task, source, metric, level)) for level in levels]
            if not any(at):
                continue
            first = next(r for r in at if r)
            fmt = "{:.1f}" if metric == "first_divergence" else "{:.3f}"
            lines.append(
                f"| {label} | {first['dense']['n']} | {fmt.format(first['dense']['value'])} | "
                + " | ".join(_task_cell(r) if r else "-" for r in at)
                + " |"
            )
        verdicts = task_verdicts(entry)
        cells = sum(len(v) for v in verdicts.values())
        measured = {k: v["measured_sparsity"] for k, v in entry["cells"].items() if "measured_sparsity" in v}
        lines += [
            "",
            f"SPON against the mask alone, paired 95% intervals over {cells} task × level cells: better in "
            f"{len(verdicts['better'])}, worse in {len(verdicts['worse'])}, not distinguishable in "
            f"{len(verdicts['same'])}." + (f" Worse: {'; '.join(verdicts['worse'])}." if verdicts["worse"] else ""),
            "",
            "Measured sparsity over the task inputs: "
            + ", ".join(f"{k} {v:.3f}" for k, v in measured.items())
            + f". {entry['device']['name']}, {entry['settings']['dtype']}, torch {entry['versions'].get('torch')}, "
            f"transformers {entry['versions'].get('transformers')}; command `{entry['command']}`.",
        ]
        parts.append("\n".join(lines))
    settings = next(iter(record["families"].values()))["settings"]
    sizes = settings["sizes"]
    return (
        "\n\n".join(parts) + "\n\n"
        "n = examples (cloze and choice per text, knowledge items, generation prompts per text; "
        f"seed {sizes['seed']}). "
        "Bold: the paired 95% bootstrap interval of SPON − mask excludes zero (Wilson intervals for each "
        "accuracy, bootstrap for the generation means, are in the record). Generation: greedy, "
        f"{settings['tasks']['drift_new_tokens']} new tokens after {settings['tasks']['drift']['persuasion'][1]}-token "
        "prompts; the dense model diverges from itself nowhere (64.0) and repeats its own 4-grams at the rate in "
        "the dense column. Created " + record["created"] + ".\n"
    )
