"""The project's figures, each drawn with the builders of `sponlib.viz.plots` from one of its
records under data/results/ (shown in the notebooks; `python -m sponlib figures` exports them as
the PNGs of the README and docs/, docs/figures/<name>.png):

    drift_per_layer  drift_figure: hidden-state drift from dense per layer, masked and SPON, at
                     several teal levels
    spon_recovery    recovery_figure: share of the perplexity lost to the teal mask that SPON wins
                     back, per level, with the protocol's targets (the first recipe)
    spon_robust      robust_figure: the same for the shipped, robust recipe: in domain and the
                     least and median genre it never saw
    cka_heatmaps     cka_figure: CKA between dense layers and masked / SPON layers at the record's
                     main level
    task_scores      tasks_figure: task accuracy, knowledge and generation drift against the level,
                     dense / masked / SPON, for each model family
    spon_perplexity  perplexity_figure: perplexity against the teal level, dense / masked / SPON
                     (the shipped recipe), in domain and on the held-out genres

Every number in a figure is read from its record, so a figure changes only when the code that
measured it writes a new record.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..records import load_result
from ..viz import plots
from .protocol import LEVELS, RECOVERY_TARGETS
from .protocol import robust_targets as robust_targets_of
from .robust_record import chosen_entries

ANALYSIS_RECORD = "analysis_smollm2.json"
RECOVERY_RECORD = "spon_recovery.json"
ROBUST_RECORD = "spon_robust.json"
ROBUST_BARS = ("Persuasion (in domain)", "held-out genres: least", "held-out genres: median")
TASKS_RECORD = "tasks.json"
# (task, source, metric, panel title) of the task figure's rows
TASK_PANELS = (
    ("knowledge", "all", "top1", "knowledge: first token top-1"),
    ("drift", "persuasion", "first_divergence", "generation: first divergent token (dense: never)"),
    ("drift", "persuasion", "repetition", "generation: repeated 4-grams"),
)


def _model_and_text(record: dict) -> str:
    """The model and the text a record analysed, for a title."""
    return f"{record['model']['name']}, {record['windows']['source']}"


def drift_levels(record: dict) -> list[float]:
    """The levels the drift figure shows: the lowest, the record's main level and the highest."""
    levels = sorted(record["levels"])
    return sorted({levels[0], record["main_level"], levels[-1]})


def drift_figure(record: dict | None = None) -> go.Figure:
    """Relative L2 drift of the residual stream from dense, per layer, for the teal mask and SPON at
    the lowest, main and highest level of the analysis record."""
    record = load_result(ANALYSIS_RECORD) if record is None else record
    curves = {
        f"{kind}@{level}": record["per_layer"][f"{kind}@{level}"]["drift"]
        for level in drift_levels(record)
        for kind in ("masked", "spon")
    }
    return plots.drift_per_layer(
        curves,
        title=f"Drift of the residual stream from dense: {record['rule']} mask vs SPON ({_model_and_text(record)})",
    )


def recovery_rows(record: dict) -> list[dict]:
    """One row per level of the teal runs: {"run": name, text: recovery, ...}, texts in record order."""
    texts = [test["source"] for test in record["settings"]["test"]]
    return [
        {"run": row["name"], **{text: row["texts"][text]["recovery"] for text in texts}}
        for row in record["experiments"]
        if row["group"] == "levels"
    ]


def recovery_targets(record: dict) -> list[tuple[str, str, float]]:
    """(run, text, least recovery) of each target in `protocol.RECOVERY_TARGETS` that the record ran."""
    texts = [test["source"] for test in record["settings"]["test"]]
    runs = {row["level"]: row["name"] for row in record["experiments"] if row["group"] == "levels"}
    return [(runs[level], texts[index], least) for level, index, least in RECOVERY_TARGETS if level in runs]


def recovery_figure(record: dict | None = None) -> go.Figure:
    """Recovery of the perplexity lost to the teal mask, per level and test text, each target a
    short black bar over the bar it is set for (targets hold for one level, so no line across)."""
    record = load_result(RECOVERY_RECORD) if record is None else record
    fig = plots.recovery_bars(
        recovery_rows(record), title=f"Perplexity lost to the teal mask that SPON wins back ({record['model']['name']})"
    )
    fig.update_layout(xaxis_title="teal level (run)")
    return _with_target_marks(fig, recovery_targets(record))


def robust_rows(record: dict) -> list[dict]:
    """One row per protocol level of the robust record's chosen recipe: recovery on the test novel
    and the least and median over the held-out genres."""
    summary = record["summary"]
    return [
        {
            "run": f"teal {level:g}",
            ROBUST_BARS[0]: summary[f"{level:g}"]["recovery_in"],
            ROBUST_BARS[1]: summary[f"{level:g}"]["recovery_heldout_min"],
            ROBUST_BARS[2]: summary[f"{level:g}"]["recovery_heldout_median"],
        }
        for level in LEVELS
        if f"{level:g}" in summary
    ]


def robust_targets(record: dict) -> list[tuple[str, str, float]]:
    """(run, bar, least recovery) of each target the record's model is held to
    (`protocol.robust_targets`) at a level the record measured."""
    marks = []
    for level, goals in robust_targets_of(record.get("model", {}).get("name")).items():
        if f"{level:g}" in record["summary"]:
            marks += [(f"teal {level:g}", bar, goal) for bar, goal in zip(ROBUST_BARS, goals) if goal is not None]
    return marks


def robust_figure(record: dict | None = None) -> go.Figure:
    """The shipped (robust) recipe's recovery per level: in domain, and the least and median
    held-out genre, with the targets."""
    record = load_result(ROBUST_RECORD) if record is None else record
    fig = plots.recovery_bars(
        robust_rows(record),
        title=f"Perplexity lost to the teal mask that SPON wins back, on text it never saw ({record['model']['name']})",
    )
    fig.update_layout(xaxis_title="teal level")
    return _with_target_marks(fig, robust_targets(record))


def _with_target_marks(fig: go.Figure, marks: list[tuple[str, str, float]]) -> go.Figure:
    """A short black bar over the bar each (run, bar name, least recovery) target is set for."""
    # Bars and target marks share an offset group per bar name, so each mark sits over its own bar.
    fig.for_each_trace(lambda bar: bar.update(offsetgroup=bar.name, alignmentgroup="recovery"))
    for number, (run, text, least) in enumerate(marks):
        fig.add_trace(
            go.Scatter(
                x=[run],
                y=[least],
                name="target",
                legendgroup="target",
                showlegend=number == 0,
                offsetgroup=text,
                alignmentgroup="recovery",
                mode="markers",
                marker=dict(symbol="line-ew", size=34, line=dict(width=3, color="#000000")),
                hovertemplate=f"target for {text}<br>%{{x}}<br>recovery ≥ %{{y:.2f}}<extra></extra>",
            )
        )
    fig.update_layout(scattermode="group")
    return fig


def cka_figure(record: dict | None = None) -> go.Figure:
    """CKA of every dense layer with every masked layer, and with every SPON layer, at the record's
    main level, side by side on one colour scale."""
    record = load_result(ANALYSIS_RECORD) if record is None else record
    level, matrices = record["main_level"], record["cka_heatmap"]
    low = float(np.nanmin([matrices["masked"], matrices["spon"]]))  # one colour scale for both panels
    panels = [plots.cka_heatmap(matrices[kind], zmin=low, x_label=f"layer ({kind})") for kind in ("masked", "spon")]
    fig = make_subplots(
        rows=1, cols=2, horizontal_spacing=0.12, subplot_titles=[f"dense vs masked@{level}", f"dense vs spon@{level}"]
    )
    for column, panel in enumerate(panels, start=1):
        fig.add_trace(panel.data[0].update(showscale=column == 2), row=1, col=column)  # one colour bar
        fig.update_xaxes(panel.layout.xaxis, row=1, col=column)
        fig.update_yaxes(panel.layout.yaxis, scaleanchor="x" if column == 1 else f"x{column}", row=1, col=column)
    # the builder's look, with room at the top for the panel titles under the figure's title
    fig.update_layout(
        template=panels[0].layout.template,
        height=panels[0].layout.height,
        margin=panels[0].layout.margin,
        margin_t=95,
        title_text=f"CKA between layers at {record['rule']} {level} ({_model_and_text(record)})",
    )
    return fig


def task_rows(entry: dict, task: str, source: str, metric: str) -> list[dict]:
    """The summary rows of one family's task metric, by level."""
    return sorted(
        (r for r in entry["summary"] if (r["task"], r["source"], r["metric"]) == (task, source, metric)),
        key=lambda r: r["level"],
    )


def tasks_figure(record: dict | None = None) -> go.Figure:
    """One column per model family, one row per task metric (TASK_PANELS): masked and SPON against
    the level with their 95% intervals, the dense value as a dotted line."""
    record = load_result(TASKS_RECORD) if record is None else record
    families = list(record["families"])
    fig = make_subplots(
        rows=len(TASK_PANELS),
        cols=len(families),
        horizontal_spacing=0.1,
        vertical_spacing=0.1,
        subplot_titles=[f"{family}: {title}" for _, _, _, title in TASK_PANELS for family in families],
    )
    for row, (task, source, metric, _) in enumerate(TASK_PANELS, start=1):
        for column, family in enumerate(families, start=1):
            rows = task_rows(record["families"][family], task, source, metric)
            levels = [r["level"] for r in rows]
            for variant in ("masked", "spon"):
                values = [r[variant]["value"] for r in rows]
                fig.add_trace(
                    go.Scatter(
                        x=levels,
                        y=values,
                        name=variant,
                        legendgroup=variant,
                        showlegend=row == 1 and column == 1,
                        mode="lines+markers",
                        line=dict(color=plots.VARIANT_COLOURS[variant], dash="dash" if variant == "spon" else "solid"),
                        error_y=dict(
                            type="data",
                            symmetric=False,
                            width=3,
                            thickness=1.2,
                            array=[r[variant]["ci"][1] - v for r, v in zip(rows, values)],
                            arrayminus=[v - r[variant]["ci"][0] for r, v in zip(rows, values)],
                        ),
                        hovertemplate=f"{family} {variant}<br>level %{{x}}<br>%{{y:.3f}}<extra></extra>",
                    ),
                    row=row,
                    col=column,
                )
            if metric != "first_divergence":  # the dense model never diverges from itself: off the scale
                # after the traces: plotly draws no line on a subplot that has no data yet
                fig.add_hline(
                    y=rows[0]["dense"]["value"],
                    line=dict(color=plots.VARIANT_COLOURS["dense"], dash="dot"),
                    row=row,
                    col=column,
                )
            fig.update_xaxes(title_text="teal level", title_standoff=2, tickvals=levels, row=row, col=column)
    fig.update_layout(
        template=plots.TEMPLATE,
        height=230 * len(TASK_PANELS),
        margin=dict(l=60, r=20, t=90, b=55),
        title_text="Beyond perplexity: dense (dotted), the teal mask and SPON, with 95% intervals",
        yaxis_title="value",
        font_size=11,
    )
    fig.update_annotations(font_size=12)
    return fig


def perplexity_panels(record: dict) -> dict[str, dict[str, list[float]]]:
    """Panel title -> {"level", "dense", "masked", "spon": one value per level} for the chosen
    recipe of a robust record: the test novel, and the geometric mean over the held-out genres
    (exp of the mean log perplexity, each genre counting once)."""
    entries = chosen_entries(record, "final")
    novel = "Persuasion (in domain)"
    genres = f"{len(entries[0]['rows']) - 2} held-out genres (geometric mean)"
    panels = {title: {"level": [], "dense": [], "masked": [], "spon": []} for title in (novel, genres)}
    for entry in entries:
        for title, rows in ((novel, entry["rows"][1:2]), (genres, entry["rows"][2:])):
            panels[title]["level"].append(entry["level"])
            for kind in ("dense", "masked", "spon"):
                values = [row[f"ppl_{kind}"] for row in rows]  # the novel's own value, exactly
                panels[title][kind].append(values[0] if len(values) == 1 else float(np.exp(np.mean(np.log(values)))))
    return panels


def perplexity_figure(record: dict | None = None) -> go.Figure:
    """Perplexity against the teal level: the dense model, the mask alone and the mask with the
    shipped SPON vectors, on the test novel and on the genres neither training nor validation saw."""
    record = load_result(ROBUST_RECORD) if record is None else record
    panels = perplexity_panels(record)
    fig = make_subplots(rows=1, cols=len(panels), horizontal_spacing=0.1, subplot_titles=list(panels))
    for column, values in enumerate(panels.values(), start=1):
        for kind, dash in (("dense", "dot"), ("masked", "solid"), ("spon", "dash")):
            fig.add_trace(
                go.Scatter(
                    x=values["level"],
                    y=values[kind],
                    name=kind,
                    legendgroup=kind,
                    showlegend=column == 1,
                    mode="lines" if kind == "dense" else "lines+markers",
                    line=dict(color=plots.VARIANT_COLOURS[kind], dash=dash),
                    hovertemplate=f"{kind}<br>level %{{x}}<br>perplexity %{{y:.2f}}<extra></extra>",
                ),
                row=1,
                col=column,
            )
        fig.update_xaxes(title_text="teal level (share of inputs zeroed)", row=1, col=column)
        fig.update_yaxes(type="log", row=1, col=column)  # the mask at 0.7 is an order of magnitude off
    fig.update_layout(
        template=plots.TEMPLATE,
        height=420,
        margin=dict(l=60, r=20, t=90, b=55),
        title_text=f"Perplexity against sparsity: dense, the teal mask, SPON ({record['model']['name']})",
        yaxis_title="perplexity (log scale)",
    )
    return fig


# figure name (the PNG's file stem) -> builder reading its record
FIGURES: dict[str, Callable[[], go.Figure]] = {
    "drift_per_layer": drift_figure,
    "spon_recovery": recovery_figure,
    "spon_robust": robust_figure,
    "cka_heatmaps": cka_figure,
    "task_scores": tasks_figure,
    "spon_perplexity": perplexity_figure,
}
