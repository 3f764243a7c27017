"""Tables of the comparisons record (data/results/comparisons.json): SPON's recovery on each mask
rule at each level, in domain and held out, and weight pruning beside teal + SPON at 0.5."""

from __future__ import annotations

from ..experiments.protocol import LEVELS
from .provenance import run_line
from .robust import _cells, _fmt, _interval

RULE_NAMES = {
    "teal": "teal",
    "wina": "wina",
    "greedy": "greedy (teal scores)",
    "larosa": "larosa (rotated Top-K)",
    "rsparse": "rsparse (mask + low rank)",
}


def render_rules(record: dict) -> str:
    """One row per rule and level: measured sparsity, γ, perplexity in domain under the mask and
    with SPON, recovery there with its interval, the held-out genres' least and median, and texts
    where SPON is worse than its mask; then the (rule, level) cells the record lacks."""
    lines = [
        "| rule | level | measured (bytes not read) | γ | Persuasion ppl: mask → SPON | recovery | "
        "held-out genres: least | median | worse than mask |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for rule, entries in record["rules"].items():
        for entry in entries:
            measured = entry["measured"] or {}
            inside = entry["rows"][1]
            least, median, worse = _cells(entry["rows"])
            lines.append(
                f"| {RULE_NAMES.get(rule, rule)} | {entry['level']:g} | {_fmt(measured.get('weighted'))} "
                f"({_fmt(measured.get('bytes_not_read'))}) | {entry['gamma']:g} | {_fmt(inside['ppl_masked'], 2)} → "
                f"{_fmt(inside['ppl_spon'], 2)} | {_interval(inside)} | {least} | {median} | {worse} |"
            )
    missing = missing_cells(record)
    note = f"Not in this record: {', '.join(missing)}.\n\n" if missing else ""
    dense = next((e["rows"][1]["ppl_dense"] for entries in record["rules"].values() for e in entries), None)
    return "\n".join(lines) + f"\n\nDense Persuasion perplexity: {_fmt(dense, 2)}. " + note + _line(record)


def missing_cells(record: dict) -> list[str]:
    """'rule at level' for each protocol level a rule of the record has no entry at."""
    have = {(rule, e["level"]) for rule, entries in record["rules"].items() for e in entries}
    return [f"{rule} at {level:g}" for rule in record["rules"] for level in LEVELS if (rule, level) not in have]


def render_pruning(record: dict) -> str:
    """Perplexity in domain and on the worst held-out genre for dense, teal, teal + SPON and each
    pruned model, and on how many test texts each side is better (paired 95% interval)."""
    if not record["pruning"]:
        return "(no pruning results in this record yet)\n"
    level = record["settings"]["pruning_level"]
    rows = record["pruning"][0]["rows"][1:]  # the tests; validation chose SPON's scale
    inside, held = rows[0], rows[1:]
    worst = max(held, key=lambda r: r["ppl_teal_spon"] / r["ppl_dense"])
    lines = [
        f"| model ({level:g} of the weights or inputs) | weights zeroed | Persuasion ppl | "
        f"{worst['text'].removeprefix('brown-')} ppl (held-out, teal + SPON's worst) | better than teal + SPON on | "
        "worse on |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| dense | 0 | {_fmt(inside['ppl_dense'], 2)} | {_fmt(worst['ppl_dense'], 2)} | | |",
        f"| teal (mask) | per token | {_fmt(inside['ppl_teal'], 2)} | {_fmt(worst['ppl_teal'], 2)} | | |",
        f"| teal + SPON | per token | {_fmt(inside['ppl_teal_spon'], 2)} | {_fmt(worst['ppl_teal_spon'], 2)} | | |",
    ]
    for entry in record["pruning"]:
        tests = entry["rows"][1:]
        by_text = {r["text"]: r for r in tests}
        better = sum(r["log_ratio_high"] < 0 for r in tests)
        worse = sum(r["spon_better"] for r in tests)
        lines.append(
            f"| {entry['method']} {entry['pattern']} | {entry['zero_share']:.3f} | "
            f"{_fmt(by_text[inside['text']]['ppl_pruned'], 2)} | {_fmt(by_text[worst['text']]['ppl_pruned'], 2)} | "
            f"{better} of {len(tests)} | {worse} of {len(tests)} |"
        )
    paired = "better or worse: the paired 95% bootstrap interval of log(ppl_pruned / ppl_spon) lies below or above 0"
    return "\n".join(lines) + "\n\n" + _line(record, paired)


def _line(record: dict, what: str = "recovery with its paired 95% bootstrap interval") -> str:
    texts = record["settings"]["texts"]["tests"]
    return (
        f"{len(texts)} test texts of {texts[0]['windows']} windows × {texts[0]['window_len']} tokens (seed "
        f"{texts[0]['seed']}); {what}. " + run_line(record)
    )


def render_targets(record: dict) -> str:
    """The issue's targets against what the record measured."""
    rules = record["rules"]

    def worst(rule: str, key: str) -> float | None:
        return max((abs(e["measured"][key] - e["level"]) for e in rules.get(rule, [])), default=None)

    check = record.get("rotation_check") or {}
    f32, f64 = check.get("float32", {}), check.get("float64", {})
    entries = [e for es in rules.values() for e in es]
    worse = sum(row["worse_than_mask"] for e in entries for row in e["rows"][1:])
    tests = sum(len(e["rows"]) - 1 for e in entries)
    channel_gap = max(
        (abs(e["measured"]["weighted"] - e["measured"]["channel_target"]) for e in rules.get("rsparse", [])),
        default=None,
    )
    missing = len(missing_cells(record))
    not_run = f"; {missing} protocol cells not run" if missing else ""
    lines = [
        "| measure | target | measured |",
        "| --- | --- | --- |",
        f"| larosa: measured sparsity on held-out text | within 0.01 | largest gap "
        f"{_fmt(worst('larosa', 'weighted'), 4)} |",
        f"| rsparse: weight bytes not read, on held-out text | within 0.01 | largest gap "
        f"{_fmt(worst('rsparse', 'bytes_not_read'), 4)} (channels dropped: {_fmt(channel_gap, 4)} from their level) |",
        f"| rotation folded in: dense logits, float32 | within 1e-5 | largest gap {f32.get('max_abs', 0):.1e} "
        f"({f32.get('max_rel', 0):.1e} of the largest logit); the same model on one window at a time "
        f"instead of a batch moves them by {f32.get('noise_floor_abs', 0):.1e} |",
        f"| rotation folded in: dense logits, float64 | | largest gap {f64.get('max_abs', 0):.1e} (one window "
        f"at a time: {f64.get('noise_floor_abs', 0):.1e}) |",
        f"| SPON never worse than its mask (paired 95% interval) | 0 texts | {worse} of {tests} (rule, level, "
        f"text) cells{not_run} |",
        f"| Wanda and SparseGPT, 50% and 2:4, beside teal + SPON | 4 rows | {len(record['pruning'])} rows |",
    ]
    return "\n".join(lines) + "\n\n" + f"Rotation check on {check.get('windows')} windows of {check.get('text')}.\n"


def render_share(record: dict) -> str:
    """rsparse's masked perplexity on validation text at each share of the bytes given to low rank."""
    shares = sorted({row["share"] for row in record["rows"]})
    lines = [
        "| level | " + " | ".join(f"ρ = {share:g}" + (" (teal)" if share == 0 else "") for share in shares) + " |",
        "| ---: | " + " | ".join("---:" for _ in shares) + " |",
    ]
    for level in sorted({row["level"] for row in record["rows"]}):
        cells = {row["share"]: row for row in record["rows"] if row["level"] == level}
        lines.append(f"| {level:g} | " + " | ".join(_fmt(cells[s]["perplexity"], 2) for s in shares) + " |")
    text = record["text"]
    return (
        "\n".join(lines)
        + f"\n\nMasked perplexity (no SPON) on {text['windows']} windows × {text['window_len']} tokens of "
        f"{text['source']} (seed {text['seed']}); dense {record['dense_perplexity']:.2f}. " + run_line(record)
    )
