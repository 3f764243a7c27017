"""The comparisons record (data/results/comparisons.json): SPON on five mask rules side by side,
and weight pruning at the same sparsity, on the genre protocol's texts.

1. Rules: teal, wina, greedy, larosa and rsparse at the protocol levels. For each, the mask's
   measured sparsity on a held-out text, then SPON trained with one robust recipe (the same for
   every rule) behind the safeguard, scored window by window on validation and every test text
   (sponlib.experiments.paired: recovery with its interval, worse than the mask or not).
2. Pruning: Wanda and SparseGPT at 50% unstructured and 2:4 (sponlib.pruning), calibrated on the
   first windows of the same training text SPON trains on, scored on the same windows, each
   beside teal + SPON at 0.5 (paired: log(ppl_pruned / ppl_spon) with its interval).

Each rule has a work folder of its own (a `RobustRun`), and pruning another, so parts can run in
parallel processes and an interrupted run resumes; the record is assembled from what is done,
with the cells of the record already at its path that the work folders lack, where that record
was made under the same settings (sponlib.experiments.carried), so a run may add levels or rules.
"""

from __future__ import annotations

import fcntl
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..io import atomic_write_json
from ..models.adapters import iter_projections
from ..models.likelihood import window_nlls
from ..models.placement import device_record, input_device
from ..pruning import format_pattern, parse_pattern, prune_model
from ..records import command_line, library_versions, model_record, write_result
from ..sparsity.lowrank import bytes_read
from ..sparsity.rotation import Rotations, fold_rotations
from ..sparsity.sparsifier import Sparsifier
from ..spon.safeguard import bootstrap_means, percentile_interval
from ..spon.vectors import load_spon
from . import carried, protocol
from .genres import GenreTexts, recipe_named
from .robust import RobustRun
from .robust_record import tested

RULES = ("teal", "wina", "greedy", "larosa", "rsparse")
RECIPE = "mixture+select+gamma"  # the robust recipe at the default step count, the same for every rule
PRUNING = (("wanda", "50%"), ("wanda", "2:4"), ("sparsegpt", "50%"), ("sparsegpt", "2:4"))
PRUNING_LEVEL = 0.5  # teal + SPON beside the pruned models: the same share of weights
MEASURE_WINDOWS = 16  # windows of the held-out text the masks' sparsity is measured on


class RuleRun(RobustRun):
    """A RobustRun of one rule; larosa's rotations go with every mask and every saved vector set."""

    rotations: Rotations | None = None

    def _attach(self, thresholds):
        return thresholds.with_rotations(self.rotations) if self.rule == "larosa" else thresholds

    def mask(self, level: float):
        return self._attach(self.calibration.thresholds(level, self.rule))

    def load(self, path: Path):
        vectors, thresholds = load_spon(path, self.model)
        return vectors, self._attach(thresholds)


@dataclass
class Comparisons:
    """Everything the comparisons record needs."""

    model: object
    calibration: object  # sponlib.sparsity.Calibration
    texts: GenreTexts
    config: object  # sponlib.spon.TrainConfig, the same for every rule
    json_path: str
    work: Path
    rotations: Rotations | None = None  # larosa's, from the calibration text
    levels: tuple = protocol.LEVELS
    batch_size: int = 16
    progress: bool = True
    settings: dict = field(default_factory=dict)  # how the texts, rotations and pruning were made
    carried: list = field(default_factory=list, init=False)  # cells the last write kept from the earlier record
    refused: str | None = field(default=None, init=False)  # why it kept none, if it kept none
    left_out: str | None = field(default=None, init=False)  # larosa cells it could not keep, and why

    def __post_init__(self):
        self.work = Path(self.work)
        self.work.mkdir(parents=True, exist_ok=True)

    def rule_run(self, rule: str) -> RuleRun:
        run = RuleRun(
            self.model,
            self.calibration,
            self.texts,
            self.config,
            str(self.work / rule / "robust.json"),
            self.work / rule,
            artifacts=None,
            rule=rule,
            batch_size=self.batch_size,
            progress=self.progress,
            recipes=(recipe_named(RECIPE),),
            levels=self.levels,
            checks=(),
        )
        run.rotations = self.rotations
        return run

    def note_command(self, parts: list[str]) -> None:
        """Keep the command line of a run that does parts, for the record: the record is assembled
        from work that several commands may have done side by side."""
        if parts:
            with open(self.work / "commands.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # parts started side by side append to one list
                done = _read(self.work / "commands.json", [])
                atomic_write_json(self.work / "commands.json", done + [{"parts": parts, "command": command_line()}])

    # ------------------------------------------------------------ rules

    def run_rule(self, rule: str) -> None:
        """SPON on `rule` at every level (resumed from its work folder), and the masks' sparsity."""
        run = self.rule_run(rule)
        run.run_final(recipe_named(RECIPE))
        path = self.work / rule / "measured.json"
        measured = _read(path, {})
        if rule == "larosa" and "rotation_check" not in measured:
            measured["rotation_check"] = self.rotation_check()
            atomic_write_json(path, measured)
        for level in self.levels:
            if f"{level:g}" not in measured:
                measured[f"{level:g}"] = self.measure(run.mask(level))
                atomic_write_json(path, measured)

    @torch.no_grad()
    def measure(self, thresholds) -> dict:
        """The mask's measured sparsity on the first windows of the first held-out test text, as
        share of inputs zeroed (weighted by weights) and as the share of weight bytes not read."""
        text = self.texts.tests[1]  # the first Brown genre: never calibrated or trained on
        with Sparsifier(self.model, thresholds) as sp:
            window_nlls(self.model, text.ids[:MEASURE_WINDOWS], self.batch_size, progress=False)
        measured, summary, bases = sp.measured(), sp.summary(), sp.completions  # bases: rsparse's (in, r)
        weights = total = 0.0
        for p in iter_projections(self.model):
            rank = bases[p.name].shape[1] if p.name in bases else 0
            weights += bytes_read(p.in_features, p.out_features, measured[p.name], rank)
            total += p.in_features * p.out_features
        return {
            "target": thresholds.target,
            "channel_target": sum(thresholds.levels.values()) / len(thresholds.levels),
            "weighted": summary["weighted"],
            "bytes_not_read": 1.0 - weights / total,
            "text": text.source,
            "windows": min(MEASURE_WINDOWS, len(text)),
        }

    @torch.no_grad()
    def rotation_check(self, windows: int = 2) -> dict:
        """The dense model's logits with larosa's rotations folded in, against without, on held-out
        windows: in float32 (the target, beside the float32 noise floor of running the same dense
        model on one window at a time instead of a batch) and in float64 (the arithmetic alone)."""
        ids = self.texts.tests[1].ids[:windows].to(input_device(self.model))  # (W, L)
        out = {"text": self.texts.tests[1].source, "windows": windows}
        for dtype in (torch.float32, torch.float64):
            original = next(self.model.parameters()).dtype
            self.model.to(dtype)  # float32 -> float64 -> float32 is exact
            try:
                dense = self.model(ids).logits.double()
                alone = torch.cat([self.model(ids[i : i + 1]).logits for i in range(windows)]).double()
                with fold_rotations(self.model, self.rotations):
                    folded = self.model(ids).logits.double()
            finally:
                self.model.to(original)
            name = str(dtype).removeprefix("torch.")
            out[name] = {
                "max_abs": float((folded - dense).abs().max()),
                "max_rel": float((folded - dense).abs().max() / dense.abs().max()),
                "noise_floor_abs": float((alone - dense).abs().max()),
            }
        return out

    # ------------------------------------------------------------ pruning

    def run_pruning(self, calibration_windows: int) -> None:
        """Wanda and SparseGPT at each pattern, each scored on every text, the weights restored
        after each; teal + SPON at 0.5 comes from teal's rule run (trained first if need be)."""
        path = self.work / "pruning.json"
        done = _read(path, [])
        ids = self.texts.train[recipe_named(RECIPE).train].ids[:calibration_windows]  # (N, L)
        texts = [self.texts.validation, *self.texts.tests]
        for method, pattern in PRUNING:
            if any(e["method"] == method and e["pattern"] == pattern for e in done):
                continue
            saved = {p.name: p.module.weight.detach().clone() for p in iter_projections(self.model)}
            started = time.perf_counter()
            summary = prune_model(self.model, ids, method, parse_pattern(pattern), progress=self.progress)
            prune_s = time.perf_counter() - started
            nlls = {w.source: window_nlls(self.model, w, self.batch_size, progress=False).tolist() for w in texts}
            with torch.no_grad():
                for p in iter_projections(self.model):
                    p.module.weight.copy_(saved[p.name])
            done.append(
                {
                    "method": method,
                    "pattern": format_pattern(parse_pattern(pattern)),
                    "zero_share": summary["overall_zero_share"],
                    "calibration": {"windows": summary["windows"], "tokens": summary["tokens"]},
                    "prune_s": round(prune_s, 1),
                    "nlls": nlls,
                }
            )
            atomic_write_json(path, done)

    # ------------------------------------------------------------ the record

    def write(self) -> dict:
        """The record from everything done so far in the work folders, with the cells of the
        record already at `json_path` that this work did not make, where its settings match
        (sponlib.experiments.carried)."""
        commands = _read(self.work / "commands.json", [])
        rules = {rule: self._rule_entries(rule, commands) for rule in RULES}
        # the pruning part keeps no run record of its own: its rows name their commands alone
        pruning = [e | {"made_by": _made_by(commands, "pruning", {})} for e in self._pruning_rows()]
        settings = {
            **self.settings,
            "rules": list(RULES),
            "levels": list(self.levels),
            "recipe": recipe_named(RECIPE).describe(),
            "training": self.config.as_dict(),
            "texts": self.texts.describe(),
            "calibration": self.calibration.meta.get("corpus"),
            "rotations": self.rotations.describe() if self.rotations is not None else None,
            "measure_windows": MEASURE_WINDOWS,
            "pruning_level": PRUNING_LEVEL,
        }
        dtype = next(self.model.parameters()).dtype
        earlier = self._earlier(settings, dtype)
        rotation_check = _read(self.work / "larosa" / "measured.json", {}).get("rotation_check")
        if earlier is not None:
            if settings["rotations"] is None and not rules["larosa"]:  # larosa's cells all come from the earlier record
                settings["rotations"] = earlier["settings"].get("rotations")
            self.left_out = carried.rotations_left_out(earlier, rules, settings)
            self.carried = carried.carry_rules(earlier, rules, settings) + carried.carry_pruning(earlier, pruning)
            levels = {e["level"] for entries in rules.values() for e in entries} | set(self.levels)
            settings["levels"] = sorted(levels)
            if rotation_check is None and carried.same_rotations(earlier, settings):
                rotation_check = earlier.get("rotation_check")
        payload = {
            "settings": settings,
            "part_commands": carried.part_commands(earlier, commands),
            "rules": rules,
            "rotation_check": rotation_check,
            "pruning": pruning,
            "complete": all(len(rules[r]) == len(settings["levels"]) for r in RULES) and len(pruning) == len(PRUNING),
            "summary": comparison_summary(rules, pruning),
        }
        device = input_device(self.model)
        made, here = carried.where_made(rules, pruning, earlier), device_record(device)
        if made is not None and made[0].get("name") != here.get("name"):  # assembled elsewhere: say both
            payload |= {"device": made[0], "versions": made[1], "assembled_on": here | {"versions": library_versions()}}
        return write_result(self.json_path, "comparisons", payload, model=self.model, device=device, dtype=dtype)

    def _rule_entries(self, rule: str, commands: list[dict]) -> list[dict]:
        """One rule's cells made in its work folder, by level, each with how it was made."""
        run_record = _read(rule_record_path(self.work, rule), {})
        measured = _read(self.work / rule / "measured.json", {})
        made_by = _made_by(commands, rule, run_record)
        entries = [e for e in run_record.get("final", []) if e.get("recipe") == RECIPE]
        return [
            {
                "level": e["level"],
                "measured": measured.get(f"{e['level']:g}"),
                "gamma": e["safeguard"].get("gamma"),
                "training": {k: v for k, v in e["training"].items() if k != "history"},
                "rows": e["rows"],
                "made_by": made_by,
            }
            for e in sorted(entries, key=lambda e: e["level"])
        ]

    def _earlier(self, settings: dict, dtype) -> dict | None:
        """The record at `json_path` if its cells can join this one; else None, and `refused` says why."""
        earlier = _read(Path(self.json_path), None)
        if earlier is None:
            return None
        provenance = {"model": model_record(self.model), "dtype": str(dtype).removeprefix("torch.")}
        self.refused = carried.refusal(earlier, settings, json.loads(json.dumps(provenance)))
        return None if self.refused else earlier

    def _pruning_rows(self) -> list[dict]:
        """Each pruned model per text, beside dense and teal (+ SPON) at PRUNING_LEVEL, paired."""
        done = _read(self.work / "pruning.json", [])
        if not done:
            return []
        spon_path = self.work / "teal" / f"final-{RECIPE}-teal-{PRUNING_LEVEL:g}.safetensors"
        if not spon_path.exists():
            return []
        run = self.rule_run("teal")
        vectors, thresholds = run.load(spon_path)
        mask = run.mask(PRUNING_LEVEL)
        out = []
        for entry in done:
            rows = []
            for windows in [self.texts.validation, *self.texts.tests]:
                pruned = torch.tensor(entry["nlls"][windows.source], dtype=torch.float64)
                spon = run.nlls(windows, thresholds, vectors.alphas, key=("spon", PRUNING_LEVEL)).double()
                masked = run.nlls(windows, mask, key=("mask", PRUNING_LEVEL)).double()
                dense = run.nlls(windows, key="dense").double()
                low, high = percentile_interval(bootstrap_means(pruned - spon))  # paired over windows
                rows.append(
                    {
                        "text": windows.source,
                        "ppl_dense": math.exp(dense.mean()),
                        "ppl_teal": math.exp(masked.mean()),
                        "ppl_teal_spon": math.exp(spon.mean()),
                        "ppl_pruned": math.exp(pruned.mean()),
                        "log_ratio_vs_spon": float((pruned - spon).mean()),
                        "log_ratio_low": low,
                        "log_ratio_high": high,
                        "spon_better": low > 0,
                        "windows": len(pruned),
                    }
                )
            out.append({k: v for k, v in entry.items() if k != "nlls"} | {"rows": rows})
        return out


def rule_record_path(work: Path, rule: str) -> Path:
    """The run record a rule's part leaves in the work folder (its RobustRun writes it)."""
    return Path(work) / rule / "record.json"


def _made_by(commands: list[dict], part: str, ran: dict) -> dict:
    """The commands that made a part's cells in the work folder, and the device and versions its
    run record `ran` names (the comparisons record may be assembled on another machine)."""
    return {
        "commands": [c["command"] for c in commands if part in c["parts"]],
        "device": (ran.get("device") or {}).get("name"),
        "versions": ran.get("versions"),
    }


def _read(path: Path, default):
    if not path.exists():
        return default
    with open(path) as f:
        return json.load(f)


def comparison_summary(rules: dict, pruning: list[dict]) -> dict:
    """Per rule and level: measured sparsity, recovery in domain (with its interval) and on the
    held-out texts (worst and median), texts where SPON is worse than its mask; per pruned model:
    perplexity in domain and held-out (worst, median) against teal + SPON."""
    table = {}
    for rule, entries in rules.items():
        for e in entries:
            result = tested(e["rows"])
            measured = e["measured"] or {}
            table.setdefault(rule, {})[f"{e['level']:g}"] = {
                "sparsity": measured.get("weighted"),
                "bytes_not_read": measured.get("bytes_not_read"),
                **result,
                "gamma": e["gamma"],
            }
    pruned = {}
    for entry in pruning:
        rows = entry["rows"][1:]  # tests only: validation chose the SPON vectors' scale
        held = [r for r in rows if r["text"] != protocol.IN_DOMAIN_TEXT]
        inside = [r for r in rows if r["text"] == protocol.IN_DOMAIN_TEXT]
        pruned[f"{entry['method']} {entry['pattern']}"] = {
            "zero_share": entry["zero_share"],
            "ppl_in": inside[0]["ppl_pruned"] if inside else None,
            "ppl_teal_spon_in": inside[0]["ppl_teal_spon"] if inside else None,
            "ppl_heldout_worst": max(r["ppl_pruned"] / r["ppl_dense"] for r in held) if held else None,
            "spon_better_on": sum(r["spon_better"] for r in rows),
            "pruned_better_on": sum(r["log_ratio_high"] < 0 for r in rows),
            "texts": len(rows),
        }
    return {"rules": table, "pruning": pruned}
