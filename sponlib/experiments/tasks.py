"""The task record: every task (sponlib.tasks) for one model family, dense, masked and with SPON at
each level: data/results/tasks.json.

    payload = run_family(model, tokenizer, calibration, spon, levels, sizes)

A cell is one variant of the model (dense; the calibrated mask at a level; the mask plus SPON
vectors with their own thresholds); each cell runs every task on the same examples, so cells
compare pairwise. Per-example outcomes are kept in the record: the summary's paired intervals
(SPON minus mask) come from them, and so can any later analysis. Families accumulate in one file;
a family's cells are written as they finish, and a rerun with the same settings resumes, keeping
only the cells made with the same calibration and SPON files (`run_family`'s `provenance`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import CorruptFileError
from ..io import atomic_write_json
from ..models.placement import device_record, input_device
from ..paths import display_path
from ..progress import no_bars
from ..records import command_line, library_versions, model_record
from ..sparsity.sparsifier import Sparsifier
from ..tasks import choice, cloze, drift, knowledge
from ..tasks.intervals import bootstrap_mean, paired_difference, wilson
from ..tasks.passages import HELD_OUT_SOURCES
from .protocol import TASK_LEVELS

DRIFT_METRICS = ("agreement", "first_divergence", "repetition")


@dataclass(frozen=True)
class TaskSizes:
    """Examples per held-out source (cloze, choice, drift) and the seed that picks them."""

    cloze: int = 200
    choice: int = 250
    drift: int = 50  # prompts per source: 100 in all
    seed: int = 0


@dataclass
class TaskSet:
    """The examples every cell of one family is scored on."""

    cloze: dict[str, list]
    choice: dict[str, list]
    probe: knowledge.Probe
    drift: dict[str, torch.Tensor]  # source -> (n, PROMPT_TOKENS) prompt ids
    probe_file: str  # where the knowledge probe was read from

    def describe(self) -> dict:
        return {
            "cloze": {s: len(v) for s, v in self.cloze.items()},
            "choice": {s: len(v) for s, v in self.choice.items()},
            "knowledge": {
                "file": self.probe_file,
                "name": self.probe.name,
                "version": self.probe.version,
                "items": len(self.probe.items),
            },
            "drift": {s: list(v.shape) for s, v in self.drift.items()},
            "drift_new_tokens": drift.NEW_TOKENS,
            "repetition_ngram": drift.NGRAM,
        }


def build_tasks(tokenizer, sizes: TaskSizes, probe_path=None) -> TaskSet:
    return TaskSet(
        cloze={s: cloze.build(s, sizes.cloze, sizes.seed) for s in HELD_OUT_SOURCES},
        choice={s: choice.build(s, sizes.choice, sizes.seed) for s in HELD_OUT_SOURCES},
        probe=knowledge.load_probe(probe_path),
        drift={s: drift.build(s, sizes.drift, tokenizer, sizes.seed) for s in HELD_OUT_SOURCES},
        probe_file=display_path(Path(probe_path) if probe_path else knowledge.default_path()),
    )


def run_cell(
    model, tokenizer, tasks: TaskSet, dense_generations: dict | None, batch_size: int = 16, progress: bool = True
) -> dict:
    """Outcomes of every task for the model as it is now (hooks attached or not): name -> per-example
    lists, plus the drift continuations. `dense_generations` (source -> (n, T) ids) is the reference
    for agreement; None means this is the dense cell, whose continuations become the reference."""
    out: dict = {}
    for source in HELD_OUT_SOURCES:
        out[f"cloze/{source}/accuracy"] = cloze.score(model, tokenizer, tasks.cloze[source], batch_size, progress)
        out[f"choice/{source}/accuracy"] = choice.score(model, tokenizer, tasks.choice[source], batch_size, progress)
    for metric, values in knowledge.score(model, tokenizer, tasks.probe, 2 * batch_size, progress).items():
        out[f"knowledge/all/{metric}"] = values
    generations = {}
    for source in HELD_OUT_SOURCES:
        generated = drift.greedy_continuations(model, tasks.drift[source], drift.NEW_TOKENS, progress=progress)
        reference = generated if dense_generations is None else torch.tensor(dense_generations[source])
        out[f"drift/{source}/agreement"] = [round(v, 6) for v in drift.agreement(generated, reference)]
        out[f"drift/{source}/first_divergence"] = drift.first_divergence(generated, reference)
        out[f"drift/{source}/repetition"] = [round(v, 6) for v in drift.repetition(generated)]
        generations[source] = generated.tolist()
    return {"outcomes": out, "generations": generations}


def _value_summary(name: str, values: list) -> dict:
    metric = name.rsplit("/", 1)[1]
    n = len(values)
    if metric in DRIFT_METRICS:
        return {"n": n, "value": float(np.mean(values)), "ci": list(bootstrap_mean(values)), "interval": "bootstrap"}
    k = int(sum(values))
    return {"n": n, "value": k / n, "ci": list(wilson(k, n)), "interval": "wilson"}


def cell_key(variant: str, level: float) -> str:
    return "dense" if variant == "dense" else f"{variant}@{level:g}"


def task_summary(cells: dict, levels) -> list[dict]:
    """One row per (task/source/metric, level): dense, masked and SPON with intervals, the share of
    the mask's loss SPON recovers, and SPON minus mask with a paired bootstrap interval."""
    dense = cells["dense"]["outcomes"]
    rows = []
    for name in dense:
        base = _value_summary(name, dense[name])
        for level in levels:
            masked_cell, spon_cell = cells.get(cell_key("masked", level)), cells.get(cell_key("spon", level))
            if masked_cell is None or spon_cell is None:
                continue
            masked, spon = masked_cell["outcomes"][name], spon_cell["outcomes"][name]
            m, s = _value_summary(name, masked), _value_summary(name, spon)
            task, source, metric = name.split("/")
            gap = base["value"] - m["value"]
            # Only a loss well outside the noise can be "recovered"; otherwise the ratio is noise.
            lost = abs(gap) > 1e-12 and not (m["ci"][0] <= base["value"] <= m["ci"][1])
            rows.append(
                {
                    "task": task,
                    "source": source,
                    "metric": metric,
                    "level": level,
                    "dense": base,
                    "masked": m,
                    "spon": s,
                    "recovery": (s["value"] - m["value"]) / gap if lost else None,
                    "spon_minus_masked": paired_difference(spon, masked),
                    "retention_masked": m["value"] / base["value"] if base["value"] else None,
                    "retention_spon": s["value"] / base["value"] if base["value"] else None,
                }
            )
    return rows


def _settings(sizes: TaskSizes, levels, method: str, tasks: TaskSet, dtype) -> dict:
    return {
        "sizes": asdict(sizes),
        "levels": [float(x) for x in levels],
        "method": method,
        "tasks": tasks.describe(),
        "dtype": str(dtype).removeprefix("torch."),
    }


def _load_record(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        record = json.loads(path.read_text())
    except ValueError as e:
        raise CorruptFileError(f"{path} is not valid JSON ({e}); move it aside or repair it, then rerun") from e
    if record.get("kind") != "tasks":
        raise CorruptFileError(f"{path} is a {record.get('kind')!r} record, not a tasks record; choose another --json")
    return record


def _reusable_cells(earlier: dict, settings: dict, provenance: dict) -> dict:
    """The cells of an earlier run of the family that still hold: every cell needs the same
    settings; a masked cell also the same calibration, a SPON cell the same vectors at its level
    (by the files' sha256 in the provenance), so that new vectors never meet old results."""
    if earlier.get("settings") != settings:
        return {}

    def same(key: str, level: float | None = None) -> bool:
        old, new = earlier.get(key), provenance.get(key)
        if level is not None:
            old, new = (old or {}).get(f"{level:g}"), (new or {}).get(f"{level:g}")
        return old == new

    kept = {}
    for name, cell in earlier.get("cells", {}).items():
        variant = cell.get("variant")
        if (
            variant == "dense"
            or (variant == "masked" and same("calibration_sha256"))
            or (variant == "spon" and same("spon_sha256", cell["level"]))
        ):
            kept[name] = cell
    return kept


def run_family(
    path: str | os.PathLike,
    model,
    tokenizer,
    calibration,
    spon: dict,
    levels,
    method: str = "teal",
    sizes: TaskSizes = TaskSizes(),
    batch_size: int = 16,
    provenance: dict | None = None,
    progress: bool = True,
    probe_path=None,
) -> dict:
    """Run (or resume) every cell for one model family and merge it into the record at `path`.
    `spon` maps level -> (SponVectors, Thresholds). Returns the family's entry."""
    path = Path(path)
    tasks = build_tasks(tokenizer, sizes, probe_path)
    device = input_device(model)
    settings = _settings(sizes, levels, method, tasks, next(model.parameters()).dtype)
    record = _load_record(path)
    family = model_record(model)["name"]
    cells = _reusable_cells(record.get("families", {}).get(family, {}), settings, provenance or {})
    entry = {
        "model": model_record(model),
        "device": device_record(device),
        "versions": library_versions(),
        "command": command_line(),
        "settings": settings,
        **(provenance or {}),
        "cells": cells,
    }

    def save() -> None:
        entry["summary"] = task_summary(cells, levels) if "dense" in cells else []
        record.update(kind="tasks", created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        record.setdefault("families", {})[family] = entry
        atomic_write_json(path, record)

    plan = [("dense", 0.0)] + [(v, level) for level in levels for v in ("masked", "spon")]
    for variant, level in tqdm(plan, desc=family, unit="cell", disable=no_bars(progress)):
        key = cell_key(variant, level)
        if key in cells:
            continue
        started = time.perf_counter()
        if variant == "dense":
            result = run_cell(model, tokenizer, tasks, None, batch_size, progress)
        else:
            vectors, spon_thresholds = spon[level]
            thresholds = calibration.thresholds(level, method) if variant == "masked" else spon_thresholds
            alphas = None if variant == "masked" else {n: a.to(device) for n, a in vectors.alphas.items()}
            with Sparsifier(model, thresholds, alphas=alphas) as sparsifier:
                result = run_cell(model, tokenizer, tasks, cells["dense"]["generations"], batch_size, progress)
            result["measured_sparsity"] = sparsifier.summary()["weighted"]
        result.update(variant=variant, level=level, elapsed_s=round(time.perf_counter() - started, 1))
        cells[key] = result
        save()
    save()
    return entry


# What the task tables show, in order: (task, source, metric, label, higher is better).
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


def task_verdicts(entry: dict) -> dict[str, list[str]]:
    """Where SPON beats the mask, loses to it, or cannot be told apart (paired 95% interval of the
    difference), over the TASK_ROWS at the protocol's TASK_LEVELS, for one family's entry."""
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
