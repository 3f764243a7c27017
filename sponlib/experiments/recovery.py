"""The SPON recovery experiment: how much of the perplexity lost to a mask SPON wins back.

For each experiment (mask rule x level, plus ablations at one level: which projections carry
vectors, how many training windows) it trains SPON on the training novels, then measures
perplexity dense / masked / masked + SPON on an in-domain and an out-of-domain test text, and
    recovery = (ppl_masked − ppl_spon) / (ppl_masked − ppl_dense),
the share of the damage repaired (negative: SPON made it worse). An optional learning-rate search
on validation KL (never on test text) comes first. The record is rewritten after every
experiment, so an interrupted run keeps what it finished and a rerun picks up from there.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import InvalidArgumentError
from ..io import sha256_file
from ..models.adapters import ROLES
from ..models.placement import input_device
from ..perplexity import evaluate
from ..records import write_result
from ..spon.training import TrainConfig, train_spon
from ..spon.vectors import save_spon
from .protocol import ABLATION_LEVEL, LEVELS, RECOVERY_TARGETS

ROLE_SETS: dict[str, tuple[str, ...]] = {
    "all": ROLES,
    "attention": ("q", "k", "v", "o"),
    "mlp": ("gate", "up", "down"),
    "down": ("down",),
}


@dataclass(frozen=True)
class Experiment:
    """One SPON training and its evaluation."""

    method: str  # mask rule
    level: float  # target sparsity
    group: str = "levels"  # levels | rules | roles | data: which table it belongs to
    roles: str = "all"  # key of ROLE_SETS
    train_windows: int | None = None  # None: the run's default
    artifact: bool = False  # keep the vectors as data/artifacts/.../spon-<method>-<level>.safetensors

    @property
    def name(self) -> str:
        name = f"{self.method}@{self.level:g}"
        if self.roles != "all":
            name += f" roles={self.roles}"
        if self.train_windows is not None:
            name += f" windows={self.train_windows}"
        return name


def protocol_experiments(
    levels=LEVELS, ablation_level: float = ABLATION_LEVEL, rules=("wina", "greedy"), window_counts=(256, 4096)
) -> list[Experiment]:
    """Teal at every level (kept as artifacts); the other mask rules, SPON on attention / MLP /
    down_proj only, and other amounts of training data, at `ablation_level`."""
    experiments = [Experiment("teal", level, artifact=True) for level in levels]
    experiments += [Experiment(rule, ablation_level, group="rules") for rule in rules]
    experiments += [Experiment("teal", ablation_level, group="roles", roles=r) for r in ("attention", "mlp", "down")]
    experiments += [Experiment("teal", ablation_level, group="data", train_windows=n) for n in window_counts]
    return experiments


def recovery(ppl_dense: float, ppl_masked: float, ppl_spon: float) -> float | None:
    """Share of the perplexity gap repaired; None when the mask did no damage to repair."""
    gap = ppl_masked - ppl_dense
    return (ppl_masked - ppl_spon) / gap if gap > 0 else None


def compare_rows(dense: dict, masked: dict, spon: dict) -> dict:
    """One text's dense, masked and SPON rows (of `evaluate`) side by side, with the recovery."""
    return {
        "ppl_dense": dense["ppl"],
        "ppl_masked": masked["ppl"],
        "ppl_spon": spon["ppl"],
        "measured_masked": masked["measured"],
        "measured_spon": spon["measured"],
        "tokens": dense["tokens"],
        "recovery": recovery(dense["ppl"], masked["ppl"], spon["ppl"]),
    }


@dataclass
class RecoveryRun:
    """Everything an experiment needs besides its own settings."""

    model: object
    calibration: object  # sponlib.sparsity.Calibration
    test_windows: list  # [in-domain Windows, out-of-domain Windows]
    train_windows: Callable[[int | None], object]  # n -> Windows of training text (None: the default count)
    val_windows: object  # Windows of validation text
    config: TrainConfig
    json_path: str
    artifacts: str | None = None  # folder for the kept vectors
    batch_size: int = 8  # evaluation batch
    progress: bool = True
    tune_lrs: tuple = ()  # learning rates to try first on validation KL; () keeps config.lr
    tune_steps: int = 100

    def __post_init__(self):
        self.record = self._resume()
        self._masked: dict = {}

    # ------------------------------------------------------------ bookkeeping

    def _settings(self) -> dict:
        return {
            "test": [w.describe() for w in self.test_windows],
            "validation": self.val_windows.describe(),
            "train_text": self.train_windows(None).describe(),
            "calibration": self.calibration.meta.get("corpus"),
            "training": self.config.as_dict(),
            "lr_search": {"lrs": list(self.tune_lrs), "steps": self.tune_steps},
        }

    def _resume(self) -> dict:
        """The record so far, if `json_path` holds one made with the same settings."""
        if os.path.exists(self.json_path):
            with open(self.json_path) as f:
                previous = json.load(f)
            if previous.get("settings") == self._settings():
                return previous
            print(f"{self.json_path} was made with other settings; starting afresh")
        return {"settings": self._settings(), "dense": None, "tuning": None, "experiments": []}

    def _write(self) -> None:
        self.record["summary"] = recovery_summary(self.record["experiments"])
        device = input_device(self.model)
        write_result(
            self.json_path,
            "spon_recovery",
            self.record,
            model=self.model,
            device=device,
            dtype=next(self.model.parameters()).dtype,
        )

    def done(self, name: str) -> bool:
        return any(row["name"] == name for row in self.record["experiments"])

    # ------------------------------------------------------------ steps

    def dense(self) -> list[dict]:
        if self.record["dense"] is None:
            self.record["dense"] = evaluate(self.model, self.test_windows, None, self.batch_size, self.progress)
            self._write()
        return self.record["dense"]

    def learning_rate(self) -> float:
        """config.lr, or the one with the lowest validation KL after `tune_steps` steps of teal at
        0.5 among `tune_lrs` (searched once, kept in the record)."""
        if not self.tune_lrs:
            return self.config.lr
        if self.record["tuning"] is None:
            thresholds = self.calibration.thresholds(0.5, "teal")
            train = self.train_windows(None)
            rows = []
            steps = self.tune_steps
            for lr in self.tune_lrs:
                config = dataclasses.replace(self.config, steps=steps, lr=lr, eval_every=max(1, steps // 4))
                vectors, _ = train_spon(
                    self.model, thresholds, train.ids, self.val_windows.ids, config, progress=self.progress
                )
                training = vectors.meta["training"]
                rows.append(
                    {
                        "lr": lr,
                        "val_kl_base": training["val_kl_base"],
                        "val_kl_best": training["val_kl_best"],
                        "best_step": training["best_step"],
                    }
                )
            best = min(rows, key=lambda r: r["val_kl_best"])["lr"]
            self.record["tuning"] = {
                "method": "teal",
                "target": 0.5,
                "steps": steps,
                "lrs": list(self.tune_lrs),
                "results": rows,
                "chosen_lr": best,
            }
            self._write()
        return self.record["tuning"]["chosen_lr"]

    def masked(self, method: str, level: float) -> tuple[object, list[dict]]:
        if (method, level) not in self._masked:
            thresholds = self.calibration.thresholds(level, method)
            rows = evaluate(self.model, self.test_windows, thresholds, self.batch_size, self.progress)
            self._masked[method, level] = thresholds, rows
        return self._masked[method, level]

    def run(self, experiment: Experiment) -> dict:
        if self.done(experiment.name):
            return next(r for r in self.record["experiments"] if r["name"] == experiment.name)
        dense = self.dense()
        thresholds, masked = self.masked(experiment.method, experiment.level)
        train = self.train_windows(experiment.train_windows)
        config = dataclasses.replace(self.config, roles=ROLE_SETS[experiment.roles], lr=self.learning_rate())
        checkpoint = f"{self.json_path}.{experiment.name.replace(' ', '_')}.ckpt"
        vectors, spon_thresholds = train_spon(
            self.model,
            thresholds,
            train.ids,
            self.val_windows.ids,
            config,
            checkpoint=checkpoint,
            progress=self.progress,
        )
        spon = evaluate(self.model, self.test_windows, spon_thresholds, self.batch_size, self.progress, spon=vectors)
        artifact = None
        if experiment.artifact and self.artifacts:
            Path(self.artifacts).mkdir(parents=True, exist_ok=True)
            path = Path(self.artifacts) / f"spon-{experiment.method}-{experiment.level:g}.safetensors"
            save_spon(vectors, spon_thresholds, path)
            artifact = {"file": path.name, "sha256": sha256_file(path)}  # ties the shipped copy to this run
        training = {k: v for k, v in vectors.meta["training"].items() if k != "history"}
        texts = {d["corpus"]: compare_rows(d, m, s) for d, m, s in zip(dense, masked, spon)}
        in_domain, out_of_domain = (w.source for w in self.test_windows[:2])
        row = {
            "name": experiment.name,
            **dataclasses.asdict(experiment),
            "roles": list(ROLE_SETS[experiment.roles]),
            "role_set": experiment.roles,
            "train_windows": len(train),
            "parameters": vectors.parameter_count(),
            "parameter_share": vectors.share_of(self.model),
            "texts": texts,
            "recovery_in": texts[in_domain]["recovery"],
            "recovery_out": texts[out_of_domain]["recovery"],
            "training": training,
            "val_history": vectors.meta["training"]["history"]["val"],
            "artifact": artifact,
        }
        self.record["experiments"].append(row)
        self._write()
        return row


def recovery_summary(rows: list[dict]) -> dict:
    """Headline per level of the teal runs with every role and the default data."""
    summary = {}
    for row in rows:
        if row["group"] == "levels":
            summary[f"{row['level']:g}"] = {
                "recovery_in": row["recovery_in"],
                "recovery_out": row["recovery_out"],
                "train_tokens_per_s": row["training"]["tokens_per_s"],
                "device": row["training"]["device"]["name"],
            }
    return summary


def check_experiments(experiments: list[Experiment], calibration) -> None:
    """Fail before any training if an experiment asks for a rule the calibration lacks."""
    for experiment in experiments:
        if experiment.roles not in ROLE_SETS:
            raise InvalidArgumentError(f"unknown role set {experiment.roles!r}; choose from {', '.join(ROLE_SETS)}")
        calibration.thresholds(experiment.level, experiment.method)


def format_recovery(value) -> str:
    """A recovery as tables show it: two decimals, or '-' where the mask did no damage."""
    return "-" if value is None else f"{value:.2f}"


def recovery_verdicts(record: dict) -> list[str]:
    """Each recovery target (protocol.RECOVERY_TARGETS), met or missed by how much, and every
    negative recovery of a recovery record."""
    texts = [t["source"] for t in record["settings"]["test"]]
    levels = {r["level"]: r for r in record["experiments"] if r["group"] == "levels"}
    verdicts = []
    for level, index, least in RECOVERY_TARGETS:
        if level in levels:
            value = levels[level]["texts"][texts[index]]["recovery"]
            outcome = "met" if value is not None and value >= least else f"missed by {least - (value or 0):.2f}"
            verdicts.append(
                f"teal {level:g} on {texts[index]}: {format_recovery(value)} against ≥ {least:.2f}, {outcome}"
            )
    negative = [
        f"{r['name']} on {t} ({x['recovery']:.2f}: {x['ppl_spon']:.2f} with SPON, {x['ppl_masked']:.2f} masked)"
        for r in record["experiments"]
        for t, x in r["texts"].items()
        if x["recovery"] is not None and x["recovery"] < 0
    ]
    total = sum(len(r["texts"]) for r in record["experiments"])
    verdicts.append(
        f"negative recoveries: {len(negative)} of {total}" + (f", {'; '.join(negative)}" if negative else "")
    )
    return verdicts
