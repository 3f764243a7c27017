"""README tables of the robust-SPON record (data/results/spon_robust.json): the recipes side by
side on the genre protocol, the chosen recipe at every level against its targets, and the
README's headline (perplexity dense / mask / SPON at the main level)."""

from __future__ import annotations

from ..experiments import protocol
from ..experiments.figures import perplexity_panels
from ..experiments.robust_record import chosen_entries, interpolation_gaps, tested

TEST_TEXTS = "the test novel and 7 held-out Brown genres"


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _interval(row: dict) -> str:
    return f"{_fmt(row['recovery'])} [{_fmt(row['recovery_low'], 2)}, {_fmt(row['recovery_high'], 2)}]"


def _cells(rows: list[dict]) -> tuple[str, str, str]:
    """Least held-out recovery (with its genre), the median, and the worse-than-mask count."""
    result = tested(rows)
    least = result["recovery_heldout_min"]
    where = "" if least is None else f" ({result['worst_heldout'].removeprefix('brown-')})"
    return (
        f"{_fmt(least)}{where}",
        _fmt(result["recovery_heldout_median"]),
        f"{result['worse_than_mask']} of {len(rows) - 1}",
    )


def render_ablation(record: dict) -> list[str]:
    lines = [
        "| recipe | level | γ | validation genres | Persuasion | held-out genres: least | median | worse than mask |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    order = [r["name"] for r in record["settings"]["recipes"]]
    for entry in sorted(record["ablation"], key=lambda e: (e["level"], order.index(e["recipe"]))):
        rows = entry["rows"]
        least, median, worse = _cells(rows)
        lines.append(
            f"| {entry['recipe']} | {entry['level']:g} | {entry['gamma']:g} | {_interval(rows[0])} | "
            f"{_interval(rows[1])} | {least} | {median} | {worse} |"
        )
    return lines


def render_final(record: dict) -> list[str]:
    lines = [
        "| level | γ (safeguard) | Persuasion | held-out genres: least | median | worse than mask |",
        "| ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for entry in chosen_entries(record, "final"):  # as the summary takes them
        least, median, worse = _cells(entry["rows"])
        lines.append(
            f"| {entry['level']:g} | {entry['safeguard']['gamma']:g} | {_interval(entry['rows'][1])} | {least} | "
            f"{median} | {worse} |"
        )
    return lines


def render_interpolation(record: dict) -> list[str]:
    """SPON between trained levels against vectors trained at the level: Persuasion, the least
    held-out genre, and the largest gap over every text."""
    lines = [
        "| level | between | Persuasion: interpolated / trained | held-out least: interpolated / trained "
        "| largest gap, any text | worse than mask |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for entry in chosen_entries(record, "interpolation"):
        rows = entry["rows"]
        genres = [r for r in rows[2:] if r["recovery"] is not None and r["recovery_trained"] is not None]
        gap = max(interpolation_gaps(entry))
        least = min(r["recovery"] for r in genres)
        least_trained = min(r["recovery_trained"] for r in genres)
        lines.append(
            f"| {entry['level']:g} | {' and '.join(f'{b:g}' for b in entry['between'])} | "
            f"{_fmt(rows[1]['recovery'])} / {_fmt(rows[1]['recovery_trained'])} | {_fmt(least)} / "
            f"{_fmt(least_trained)} | {_fmt(gap)} | {sum(r['worse_than_mask'] for r in rows[1:])} of {len(rows) - 1} |"
        )
    return lines


def target_rows(record: dict) -> list[tuple[str, str, float | None, bool]]:
    """(measure, target, measured, met) for each target the record's model is held to
    (protocol.robust_targets), the never-worse rule and, where the model's protocol has them, the
    interpolation tolerance, from the record's summary and interpolation checks."""
    summary = record.get("summary", {})
    goals = protocol.robust_targets(record.get("model", {}).get("name"))
    rows = []
    for level, (least_in, least_out) in goals.items():
        found = summary.get(f"{level:g}")
        for label, goal, key in (
            ("in domain", least_in, "recovery_in"),
            ("held-out min", least_out, "recovery_heldout_min"),
        ):
            if goal is not None:
                value = None if found is None else found[key]
                rows.append(
                    (f"recovery at {level:g}, {label}", f"≥ {goal:.2f}", value, value is not None and value >= goal)
                )
    worse = sum(row["worse_than_mask"] for row in summary.values())
    rows.append(("test texts where SPON is worse than the mask, all levels", "0", worse, bool(summary) and worse == 0))
    if goals is not protocol.ROBUST_TARGETS and not record.get("interpolation"):
        return rows  # a family held to fewer targets, without interpolation checks
    gap = max((g for entry in chosen_entries(record, "interpolation") for g in interpolation_gaps(entry)), default=None)
    tolerance = protocol.INTERPOLATION_TOLERANCE
    rows.append(
        ("interpolated vs trained, largest gap", f"≤ {tolerance:.2f}", gap, gap is not None and gap <= tolerance)
    )
    return rows


def render_targets(record: dict) -> list[str]:
    lines = ["| measure | target | measured | met |", "| --- | ---: | ---: | :---: |"]
    for measure, goal, value, met in target_rows(record):
        shown = value if isinstance(value, int) else _fmt(value)
        lines.append(f"| {measure} | {goal} | {shown} | {'yes' if met else '**no**'} |")
    return lines


def _run(record: dict) -> str:
    model, device, training = record["model"], record["device"], record["settings"]["training"]
    return (
        f"Training: AdamW at {training['lr']:g}, {training['batch_size']} windows per step "
        f"({training['steps']} steps unless the recipe says otherwise). "
        f"Model `{model['name']}`, {record.get('dtype', 'dtype not recorded')}, {device['device']} "
        f"({device['name']}), torch {record['versions']['torch']}. Command: `{record['command']}`"
    )


def _missing(record: dict) -> str:
    """What a record that is not complete holds, and which parts it lacks."""
    done = ", ".join(f"{e['level']:g}" for e in sorted(record.get("final", []), key=lambda e: e["level"]))
    lacking = [
        name
        for name, part in (
            ("the final recipe", record.get("final")),
            ("interpolation checks", record.get("interpolation")),
            ("the diagnosis", record.get("diagnosis")),
        )
        if not part
    ]
    measured = f"the final recipe at {done}" if done else "the ablation alone"
    if not lacking:
        return f"Partial record: it holds {measured} so far."
    return f"This record holds {measured}; not in it: {', '.join(lacking)}."


def render_robust(record: dict) -> str:
    """Both tables, the choice and the provenance."""
    texts = record["settings"]["texts"]
    tests = texts["tests"][0]
    choice = record.get("choice", {})
    parts = ["Recipes side by side (recovery [95% interval]):", "", *render_ablation(record), ""]
    if choice:
        parts += [f"Chosen on the validation genres alone: **{choice['recipe']}**.", ""]
    if record.get("final"):
        parts += ["The chosen recipe behind the safeguard, by level:", "", *render_final(record), ""]
    if record.get("interpolation"):
        parts += ["SPON between trained levels against vectors trained there:", "", *render_interpolation(record), ""]
    if record.get("summary"):
        parts += ["Against the targets (the chosen recipe):", "", *render_targets(record), ""]
    if not record.get("complete"):
        parts += [_missing(record), ""]
    parts.append(
        f"Tests: {TEST_TEXTS}, {tests['windows']} windows of {tests['window_len']} tokens each (humour: all "
        f"it holds), seed {tests['seed']}; validation: {texts['validation']['source']}; teal mask; worse than "
        f"mask: the paired 95% interval of log ppl_SPON − log ppl_mask above 0. {_run(record)}"
    )
    return "\n".join(parts) + "\n"


def render_headline(record: dict, level: float = 0.5) -> str:
    """Perplexity of the dense model, the teal mask and the shipped SPON vectors at `level`, on the
    test novel and over the held-out genres (the numbers of the README's figure), with the
    recoveries the record's summary gives."""
    summary = record["summary"][f"{level:g}"]
    least, median = summary["recovery_heldout_min"], summary["recovery_heldout_median"]
    low, high = summary["recovery_in_interval"]
    worst = summary["worst_heldout"].removeprefix("brown-")
    recoveries = [
        f"{_fmt(summary['recovery_in'], 2)} [{_fmt(low, 2)}, {_fmt(high, 2)}]",
        f"per genre: median {_fmt(median, 2)}, least {_fmt(least, 2)} ({worst})",
    ]
    lines = [
        f"| text | dense | teal mask at {level:g} | SPON at {level:g} | share of the loss SPON wins back |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for (title, values), recovery in zip(perplexity_panels(record).items(), recoveries):
        at = values["level"].index(level)
        cells = " | ".join(f"{values[kind][at]:.2f}" for kind in ("dense", "masked", "spon"))
        lines.append(f"| {title} | {cells} | {recovery} |")
    worse = sum(row["worse_than_mask"] for row in record["summary"].values())
    levels = ", ".join(record["summary"])
    tests = record["settings"]["texts"]["tests"]
    fewest = min(tests, key=lambda t: t["windows"])
    lines += [
        "",
        f"Perplexity on {tests[0]['windows']} windows of {tests[0]['window_len']} tokens per text "
        f"({fewest['source'].removeprefix('brown-')}: the {fewest['windows']} it holds), seed {tests[0]['seed']}; "
        f"share won back = (ppl_mask − ppl_SPON) / (ppl_mask − ppl_dense), 95% interval in brackets. "
        f"SPON is worse than the mask on {worse} test text × level pairs (levels {levels}). "
        f"Vectors: recipe {summary['recipe']}, as shipped in `data/artifacts/{record['model']['name']}/`. "
        f"Model `{record['model']['name']}`, {record['dtype']}, {record['device']['name']}; "
        f"record `data/results/spon_robust.json`.",
    ]
    return "\n".join(lines) + "\n"
