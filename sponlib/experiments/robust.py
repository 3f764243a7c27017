"""Robust SPON: the methods side by side on the genre protocol, the winner at every level, the
"never worse" safeguard, and SPON between trained levels (record: data/results/spon_robust.json).

1. Ablation: each recipe of sponlib.experiments.genres trains SPON at the ablation levels; every
   result is scored window by window on the held-out validation genres and on every test text
   (sponlib.experiments.paired: recovery with its interval, worse than the mask or not).
2. The winner is chosen on validation alone: the highest mean recovery over the ablation levels,
   among recipes that are never worse than the mask there. Test texts never choose anything.
3. The winner trains at every protocol level (and at the interpolation checks); the safeguard then
   scales each vector set down until it is not worse than the mask on validation
   (sponlib.spon.safeguard), and the result is scored on the tests and kept as an artifact.
4. SPON between trained levels (sponlib.spon.levels) against vectors trained there.

Every trained vector set is kept in a work folder and the record is rewritten after every step,
so an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..analysis.alignment import mean_residuals
from ..io import atomic_write_json, sha256_file
from ..models.adapters import iter_projections
from ..models.likelihood import window_nlls
from ..models.placement import device_record, input_device
from ..records import write_result
from ..sparsity.sparsifier import Sparsifier
from ..spon.levels import SponLevels
from ..spon.safeguard import GammaScan, gamma_scan, safeguard, scaled
from ..spon.training import TrainConfig, train_spon
from ..spon.vectors import SponVectors, load_spon, save_spon
from . import protocol
from .diagnosis import diagnose
from .genres import RECIPES, GenreTexts, Recipe, recipe_named
from .paired import compare_paired
from .robust_record import chosen_entries, robust_summary


@dataclass
class RobustRun:
    """Everything the robust-SPON record needs, and the record so far."""

    model: object
    calibration: object  # sponlib.sparsity.Calibration: the mask's thresholds at any level
    texts: GenreTexts
    config: TrainConfig  # the training settings of every run (weight decay comes from the recipe)
    json_path: str
    work: Path  # trained vectors, one file per (training, level)
    artifacts: Path | None = None  # where the final vectors at the protocol levels go
    rule: str = "teal"
    batch_size: int = 16
    progress: bool = True
    recipes: tuple = RECIPES
    levels: tuple = protocol.LEVELS  # where the final recipe trains: what `complete` asks for
    checks: tuple = protocol.INTERPOLATION_CHECKS
    record: dict = field(init=False)

    def __post_init__(self):
        self.work = Path(self.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self._nll: dict = {}
        self.record = self._resume()

    # ------------------------------------------------------------ bookkeeping

    def _settings(self) -> dict:
        return {
            "rule": self.rule,
            "texts": self.texts.describe(),
            "training": self.config.as_dict(),
            "ablation_levels": list(protocol.ROBUST_ABLATION_LEVELS),
            "calibration": self.calibration.meta.get("corpus"),
        }

    def _resume(self) -> dict:
        """The record so far: the fuller of the one at `json_path` and the copy in the work folder
        (which survives where only ignored folders are kept between runs), if made with the same
        settings."""
        fresh = {
            "settings": self._settings(),
            "ablation": [],
            "choice": {},
            "final": [],
            "interpolation": [],
            "diagnosis": None,
        }
        settings = json.loads(json.dumps(fresh["settings"]))
        found = []
        for path in (self.json_path, self.work / "record.json"):
            if os.path.exists(path):
                with open(path) as f:
                    old = json.load(f)
                # recipes may be added to a record: its entries are keyed by recipe
                if {k: v for k, v in old.get("settings", {}).items() if k != "recipes"} == settings:
                    found.append({k: old.get(k, v) for k, v in fresh.items()})
                else:
                    print(f"{path} was made with other settings; not resuming from it")
        return max(found, key=_progress, default=fresh)

    def write(self) -> None:
        device = device_record(input_device(self.model))
        known = {r["name"]: r for r in self.record["settings"].get("recipes", [])}
        self.record["settings"]["recipes"] = list((known | {r.name: r.describe() for r in self.recipes}).values())
        payload = {
            **self.record,
            "complete": self.complete(),
            "summary": robust_summary(self.record, device.get("name", device.get("device"))),
        }
        dtype = next(self.model.parameters()).dtype
        record = write_result(
            self.json_path, "spon_robust", payload, model=self.model, device=input_device(self.model), dtype=dtype
        )
        atomic_write_json(self.work / "record.json", record)

    def complete(self) -> bool:
        """Every part done: the ablation, the final recipe at every level and check, the
        interpolation checks and the diagnosis."""
        levels, checks = self.levels, self.checks
        final = {e["level"] for e in chosen_entries(self.record, "final")}
        checked = {e["level"] for e in chosen_entries(self.record, "interpolation")}
        return (
            all(
                self._done("ablation", recipe=r.name, level=lv)
                for r in self.recipes
                for lv in protocol.ROBUST_ABLATION_LEVELS
            )
            and final >= {*levels, *checks}
            and checked >= set(checks)
            and bool(self.record.get("diagnosis"))
        )

    def _done(self, part: str, **key) -> dict | None:
        return next((e for e in self.record[part] if all(e.get(k) == v for k, v in key.items())), None)

    # ------------------------------------------------------------ scoring

    def nlls(self, windows, thresholds=None, alphas=None, key=None) -> torch.Tensor:
        """Per-window mean NLL (N,) of `windows` under a mask (and vectors); cached by `key`."""
        if key is not None and (key, windows.source) in self._nll:
            return self._nll[(key, windows.source)]
        if thresholds is None:
            result = window_nlls(self.model, windows, self.batch_size, progress=False)
        else:
            with Sparsifier(self.model, thresholds, alphas=alphas, count=False):
                result = window_nlls(self.model, windows, self.batch_size, progress=False)
        if key is not None:
            self._nll[(key, windows.source)] = result
        return result

    def mask(self, level: float):
        return self.calibration.thresholds(level, self.rule)

    def load(self, path: Path):
        """Vectors and thresholds saved in the work folder (a rule with more than thresholds,
        e.g. larosa's rotations, attaches it here)."""
        return load_spon(path, self.model)

    def score(self, level: float, vectors, thresholds) -> list[dict]:
        """Validation and every test text: dense, mask and SPON side by side, paired."""
        rows = []
        for windows in [self.texts.validation, *self.texts.tests]:
            dense = self.nlls(windows, key="dense")
            masked = self.nlls(windows, self.mask(level), key=("mask", level))
            spon = self.nlls(windows, thresholds, vectors.alphas)
            rows.append({"text": windows.source, **compare_paired(dense, masked, spon)})
        return rows

    # ------------------------------------------------------------ training

    def trained(self, recipe: Recipe, level: float):
        """The vectors and thresholds of `recipe` at `level`: from the work folder, else trained."""
        path = self.work / f"{recipe.training}-{self.rule}-{level:g}.safetensors"
        if path.exists():
            return self.load(path)
        mask = self.mask(level)
        if recipe.closed_form:
            vectors, thresholds = self._closed_form(recipe, mask), mask
            save_spon(vectors, thresholds, path)
            return vectors, thresholds
        limits = self._shift_limits(mask, recipe.shift_bound) if recipe.shift_bound else None
        monitor = {name: w.ids for name, w in self.texts.select.items() if name != recipe.select}
        vectors, thresholds = train_spon(
            self.model,
            mask,
            self.texts.train[recipe.train].ids,
            self.texts.select[recipe.select].ids,
            replace(self.config, weight_decay=recipe.weight_decay, steps=recipe.steps or self.config.steps),
            checkpoint=str(path) + ".ckpt",
            progress=self.progress,
            refit_ids=self.texts.refit.ids,
            monitor=monitor,
            shift_limits=limits,
        )
        vectors.meta["training"].update(
            train_text=self.texts.train[recipe.train].describe(),
            val_text=self.texts.select[recipe.select].describe(),
            refit_text=self.texts.refit.describe(),
            shift_bound=recipe.shift_bound,
        )
        save_spon(vectors, thresholds, path)
        return vectors, thresholds

    def _closed_form(self, recipe: Recipe, mask, windows: int = 64) -> SponVectors:
        """α = E[x − S(x)] per projection, on the first `windows` training windows under the mask:
        the constant that restores the mean of what the mask removes; no training, no refit."""
        train = self.texts.train[recipe.train]
        residuals = mean_residuals(self.model, train.ids[:windows], Sparsifier(self.model, mask))
        vectors = SponVectors.zeros(self.model)
        for name, alpha in vectors.alphas.items():
            alpha.copy_(residuals[name].to(alpha.device, alpha.dtype))
        vectors.meta["training"] = {
            "closed_form": True,
            "windows": min(windows, len(train)),
            "train_text": train.describe(),
        }
        return vectors

    def _shift_limits(self, mask, bound: float) -> dict[str, float]:
        """bound × ‖W E[x − S(x)]‖ per projection, the mean residual measured on calibration text."""
        residuals = mean_residuals(self.model, self.texts.refit.ids, Sparsifier(self.model, mask))
        limits = {}
        for p in iter_projections(self.model):
            if p.name in residuals:
                weight = p.module.weight.detach().double()  # (out, in)
                limits[p.name] = bound * float((weight @ residuals[p.name].to(weight.device)).norm())
        return limits

    # ------------------------------------------------------------ the steps

    def run_ablation(self, levels=protocol.ROBUST_ABLATION_LEVELS) -> None:
        for recipe in self.recipes:
            for level in levels:
                if self._done("ablation", recipe=recipe.name, level=level):
                    continue
                vectors, thresholds = self.trained(recipe, level)
                scan = gamma_scan(
                    self.model, vectors, thresholds, self.mask(level), self.texts.validation, progress=False
                )
                gamma = scan.best_gamma() if recipe.gamma == "best" else 1.0
                vectors, thresholds = scaled(vectors, thresholds, self.mask(level), gamma)
                self.record["ablation"].append(
                    {
                        "recipe": recipe.name,
                        "level": level,
                        "gamma": gamma,
                        "training": _training_summary(vectors.meta["training"]),
                        "gamma_scan": scan.as_dict(),
                        "rows": self.score(level, vectors, thresholds),
                    }
                )
                self.write()

    def _scan(self, recipe: Recipe, level: float, vectors, thresholds) -> GammaScan:
        """The γ scan of these vectors on validation: the ablation's, where it scanned them."""
        done = self._done("ablation", recipe=recipe.name, level=level)
        if done is not None:
            return GammaScan(**done["gamma_scan"])
        return gamma_scan(self.model, vectors, thresholds, self.mask(level), self.texts.validation, progress=False)

    def choose(self) -> Recipe:
        """The recipe of the highest mean validation recovery over the ablation levels, among
        those never worse than the mask on validation; recorded with the scores."""
        scores = {}
        for recipe in self.recipes:
            entries = [e for e in self.record["ablation"] if e["recipe"] == recipe.name]
            validation = [e["rows"][0] for e in entries]  # the validation text comes first
            if not validation or any(row["worse_than_mask"] for row in validation):
                continue
            scores[recipe.name] = statistics.mean(row["recovery"] or 0.0 for row in validation)
        if not scores:
            raise RuntimeError("no recipe is scored yet, or every one is worse than the mask on validation")
        best = max(scores, key=scores.get)
        self.record["choice"] = {
            "recipe": best,
            "validation_scores": scores,
            "criterion": "highest mean recovery on the validation genres over the ablation levels, among "
            "recipes never worse than the mask there (paired 95% interval); test texts are not used",
        }
        return recipe_named(best)

    def run_final(self, recipe: Recipe) -> dict:
        """The recipe at every level, safeguarded; returns level -> (vectors, thresholds)."""
        levels, checks = self.levels, self.checks
        final = {}
        for level in sorted({*levels, *checks}):
            path = self.work / f"final-{recipe.name}-{self.rule}-{level:g}.safetensors"
            if not path.exists():
                vectors, thresholds = self.trained(recipe, level)
                mask = self.mask(level)
                scan = self._scan(recipe, level, vectors, thresholds)
                start = scan.best_gamma() if recipe.gamma == "best" else 1.0
                vectors, thresholds, _ = safeguard(
                    self.model, vectors, thresholds, mask, self.texts.validation, start=start, scan=scan
                )
                save_spon(vectors, thresholds, path)
            final[level] = self.load(path)
            artifact = None
            if level in levels and self.artifacts is not None:
                kept = self.artifacts / f"spon-{self.rule}-{level:g}.safetensors"
                save_spon(*final[level], kept)
                artifact = {"file": kept.name, "sha256": sha256_file(kept)}  # ties a shipped copy to this run
            if not self._done("final", level=level, recipe=recipe.name):
                vectors, thresholds = final[level]
                self.record["final"].append(
                    {
                        "recipe": recipe.name,
                        "level": level,
                        "kind": "protocol" if level in levels else "check",
                        "safeguard": vectors.meta["safeguard"],
                        "training": _training_summary(vectors.meta["training"]),
                        "rows": self.score(level, vectors, thresholds),
                        "artifact": artifact,
                    }
                )
                self.write()
        return final

    def run_interpolation(self, recipe: Recipe, final: dict) -> None:
        """SPON at each check level interpolated from the final vectors at the run's levels,
        scored beside the vectors of `recipe` trained at the check level."""
        levels, checks = self.levels, self.checks
        ladder = SponLevels(self.calibration, {level: final[level] for level in levels})
        for level in checks:
            if self._done("interpolation", level=level, recipe=recipe.name):
                continue
            vectors, thresholds = ladder.at(level)
            trained = self._done("final", level=level, recipe=recipe.name)
            rows = self.score(level, vectors, thresholds)
            for row, own in zip(rows, trained["rows"]):
                row["recovery_trained"] = own["recovery"]
            self.record["interpolation"].append(
                {
                    "recipe": recipe.name,
                    "level": level,
                    "between": vectors.meta["interpolated"]["between"],
                    "rows": rows,
                }
            )
            self.write()

    def run_diagnosis(self, recipe: Recipe, level: float = protocol.ROBUST_ABLATION_LEVELS[0]) -> None:
        if self.record.get("diagnosis"):
            return
        base = recipe_named("austen")
        texts = [self.texts.tests[0], self.texts.validation, *self.texts.tests[1:3]]
        self.record["diagnosis"] = {
            name: diagnose(self.model, texts, self.mask(level), *self.trained(r, level), windows=16)
            for name, r in {base.name: base, recipe.name: recipe}.items()
        } | {"level": level}
        self.write()


def _progress(record: dict) -> int:
    return sum(len(record[part]) for part in ("ablation", "final", "interpolation")) + bool(record.get("diagnosis"))


def _training_summary(training: dict) -> dict:
    keep = ("best_step", "val_kl_base", "val_kl_best", "train_tokens", "tokens_per_s", "elapsed_s", "lr")
    return {k: training.get(k) for k in keep} | {"history": training.get("history")}
