"""Representation analysis: the dense, masked and masked + SPON model on the same tokens, compared
layer by layer (drift, cosine, CKA, logit-lens KL), and whether SPON learns the best constant
correction (W α against the mean sparsification residual).

    variants = [Variant("dense"), Variant("masked", thresholds), Variant("spon", spon_thr, vectors.alphas)]
    captures = capture_variants(model, ids, variants, tokens=select_tokens(8, 512, 2048))
    per_layer = compare(model, captures["dense"], captures["masked"])   # metric -> L values

`LayerAnalysis` caches one result per (rule, level, with or without SPON), so dashboards that
revisit a setting redraw at once; `separation` tests which metrics tell masked from SPON apart.
`sponlib.analysis_record.run_analysis` makes the record behind data/results/analysis_*.json.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .adapters import block_projections, iter_projections
from .capture import Capture, capture, input_name, lens_logprobs, select_tokens
from .errors import InvalidArgumentError
from .hooks import HookSet
from .metrics import cka_matrix, cosine, kl_divergence, linear_cka, minibatch_cka, relative_drift
from .placement import input_device
from .sparsity import Sparsifier, Thresholds, input_scores

# The per-layer metrics, and the value each takes for the dense model itself.
METRICS = {
    "drift": "relative L2 drift ‖h − h_dense‖ / ‖h_dense‖ (0 = dense)",
    "cosine": "mean cosine with the dense state (1 = dense)",
    "cka": "linear CKA with the dense layer (1 = dense)",
    "cka_debiased": "minibatch CKA, unbiased HSIC (1 = dense)",
    "lens_kl": "KL(dense ‖ variant) of the logit-lens next-token distributions, nats (0 = dense)",
}
# Per-window only (sponlib.analysis_record): CKA with the first position of each window kept.
WITH_FIRST_POSITION = {"cka_all_positions": "linear CKA over every position, the first of each window included"}
HIGHER_IS_CLOSER = {"cosine", "cka", "cka_debiased", "cka_all_positions"}


def distance(metric: str, value):
    """Every metric turned into a distance from dense: 0 at dense, larger is farther (a float or
    an array of them)."""
    return 1.0 - value if metric in HIGHER_IS_CLOSER else value


@dataclass
class Variant:
    """One way of running the model: dense, masked (thresholds), or masked + SPON (alphas too)."""

    name: str
    thresholds: Thresholds | None = None
    alphas: dict[str, torch.Tensor] | None = None

    @contextlib.contextmanager
    def active(self, model):
        """Hooks of this variant on `model` while inside; yields the Sparsifier (None for dense)."""
        if self.thresholds is None:
            yield None
            return
        with Sparsifier(model, self.thresholds, alphas=self.alphas) as sparsifier:
            yield sparsifier


def capture_variants(model, ids: torch.Tensor, variants: list[Variant], tokens: torch.Tensor | None = None,
                     progress: bool = True, **capture_options) -> dict[str, Capture]:
    """One capture per variant on the same ids and token pairs. Each capture's `measured` holds
    the variant's measured sparsity (weighted by weights skipped; absent for dense)."""
    tokens = select_tokens(*ids.shape) if tokens is None else tokens
    captures = {}
    for variant in tqdm(variants, desc="capture", unit="variant", disable=not progress, leave=False):
        with variant.active(model) as sparsifier:
            captures[variant.name] = capture(model, ids, tokens=tokens, **capture_options)
        if sparsifier is not None:
            captures[variant.name].measured = sparsifier.summary()["weighted"]
    return captures


@torch.inference_mode()
def lens_kl_rows(model, dense: Capture, other: Capture, rows: torch.Tensor, reference: torch.Tensor | None = None,
                 rows_per_pass: int = 1024) -> torch.Tensor:
    """KL(p_dense ‖ p_other) of the logit-lens next-token distributions of every block on the
    captured `rows` (n,): (L, n). Several layers go through the head in one matrix product.
    `reference`: the dense log-probabilities of those rows from `dense_lens`, when cached."""
    n = len(rows)
    per_pass = max(1, rows_per_pass // max(n, 1))  # layers per head pass
    out = []
    for first in range(0, dense.n_blocks, per_pass):
        layers = slice(first, min(first + per_pass, dense.n_blocks))
        p_ref = (lens_logprobs(model, torch.cat([h[rows] for h in dense.resid()[layers]])) if reference is None
                 else reference[layers].reshape(-1, reference.shape[-1]))  # (k * n, V), layer-major
        p_other = lens_logprobs(model, torch.cat([h[rows] for h in other.resid()[layers]]))  # (k * n, V)
        out.append(kl_divergence(p_ref, p_other).view(-1, n))  # (k, n)
    return torch.cat(out)


def lens_kl(model, dense: Capture, other: Capture, max_tokens: int | None = 256,
            reference: torch.Tensor | None = None, rows_per_pass: int = 1024) -> list[float]:
    """Per block: mean KL(p_dense ‖ p_other) through the logit lens on the first `max_tokens`
    captured tokens (the last block's is the true output KL)."""
    rows = torch.arange(min(max_tokens or len(dense.tokens), len(dense.tokens)))
    return lens_kl_rows(model, dense, other, rows, reference, rows_per_pass).mean(dim=1).tolist()


def dense_lens(model, dense: Capture, max_tokens: int | None = 256) -> torch.Tensor:
    """Logit-lens log-probabilities of every block on the first `max_tokens` tokens: (L, n, V),
    worth caching when many variants are compared with one dense run (L * n * V floats)."""
    rows = slice(0, max_tokens)
    n = dense.resid()[0][rows].shape[0]
    return lens_logprobs(model, torch.cat([h[rows] for h in dense.resid()])).view(dense.n_blocks, n, -1)


def compare(model, dense: Capture, other: Capture, lens_tokens: int | None = 256, cka_batch: int = 256,
            reference_lens: torch.Tensor | None = None, metrics=tuple(METRICS)) -> dict[str, list[float]]:
    """The `metrics` (default: all of METRICS), one value per block, on its output residual
    stream; with `model=None` or lens_tokens=0 the logit lens is left out. `reference_lens`:
    `dense_lens` of the same tokens, when cached."""
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise InvalidArgumentError(f"unknown metrics {sorted(unknown)}; choose from {', '.join(METRICS)}")
    pairs = list(zip(dense.resid(), other.resid()))
    per_pair = {"drift": lambda d, o: relative_drift(o, d), "cosine": lambda d, o: cosine(o, d),
                "cka": linear_cka, "cka_debiased": lambda d, o: minibatch_cka(d, o, batch_size=cka_batch)}
    result = {name: [per_pair[name](d, o) for d, o in pairs] for name in metrics if name in per_pair}
    if "lens_kl" in metrics and model is not None and lens_tokens != 0:
        result["lens_kl"] = lens_kl(model, dense, other, lens_tokens, reference=reference_lens)
    return result


def cka_heatmap(dense: Capture, other: Capture, max_tokens: int = 1024) -> np.ndarray:
    """CKA of dense block i with the other variant's block j: (L, L)."""
    return cka_matrix([h[:max_tokens] for h in dense.resid()], [h[:max_tokens] for h in other.resid()])


# ------------------------------------------------------------------ SPON against the mean residual


@torch.inference_mode()
def mean_residuals(model, ids: torch.Tensor, sparsifier: Sparsifier, skip_first: int = 1,
                   batch_size: int = 8) -> dict[str, torch.Tensor]:
    """E[x − S(x)] of every projection's input under `sparsifier` (its masks, and its vectors if it
    has any, shape the states): what the mask removes on average. name -> (in,) float64.
    The first `skip_first` positions of each window are left out (their huge activations would
    dominate the mean)."""
    sums: dict[str, torch.Tensor] = {}
    count = 0

    def accumulate(name, hook):
        def pre(module, args):
            x = args[0][:, skip_first:]  # (b, L', in): the input before the mask
            removed = x * ~(input_scores(x, hook.col_norm) > hook.tau)  # what S(x) drops
            sums[name] = sums.get(name, 0) + removed.double().sum(dim=(0, 1))
        return pre

    device = input_device(model)
    with sparsifier, HookSet() as hooks:
        for name, hook in sparsifier.hooks.items():
            hooks.pre(sparsifier.projections[name].module, accumulate(name, hook), prepend=True)
        for start in range(0, ids.shape[0], batch_size):
            batch = ids[start:start + batch_size]
            model(input_ids=batch.to(device), use_cache=False, logits_to_keep=1)
            count += batch.shape[0] * (batch.shape[1] - skip_first)
    return {name: (total / count).cpu() for name, total in sums.items()}


def spon_alignment(model, ids: torch.Tensor, thresholds: Thresholds, alphas: dict[str, torch.Tensor]) -> dict:
    """Per projection, the cosine between the output SPON adds, W α, and the mean output the mask
    removes, W E[x − S(x)], with the residual measured on the masked model's states ("mask") and
    on the SPON model's own states ("spon"); and the norm ratio ‖W α‖ / ‖W E[x − S(x)]‖ (spon)."""
    residuals = {"mask": mean_residuals(model, ids, Sparsifier(model, thresholds)),
                 "spon": mean_residuals(model, ids, Sparsifier(model, thresholds, alphas=alphas))}
    rows = []
    for p in iter_projections(model):
        if p.name not in alphas:
            continue
        weight = p.module.weight.detach().double().cpu()  # (out, in)
        added = weight @ alphas[p.name].detach().double().cpu()  # (out,)
        row = {"name": p.name, "block": p.block, "role": p.role}
        for states, residual in residuals.items():
            removed = weight @ residual[p.name]  # (out,)
            row[f"cosine_{states}"] = float(torch.nn.functional.cosine_similarity(added, removed, dim=0))
        row["norm_ratio"] = float(added.norm() / (weight @ residuals["spon"][p.name]).norm().clamp_min(1e-30))
        rows.append(row)
    return {"projections": rows}


# ------------------------------------------------------------------ which metrics separate variants


def _spearman(a, b) -> float:
    """Rank correlation of two sequences (no ties expected: continuous values)."""
    ranks_a, ranks_b = (np.argsort(np.argsort(np.asarray(v))) for v in (a, b))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def separation(per_window: dict[str, dict[str, np.ndarray]], levels: list[float], main_level: float) -> dict:
    """How well each metric tells masked and SPON apart, from per-window results: run name
    ("masked@<level>", "spon@<level>") -> metric -> (windows, L) values. Per metric:
      distance_masked, distance_spon  mean distance from dense at `main_level` (over windows, layers)
      t_median       median over layers of the paired t statistic of masked minus SPON distance
                     across windows at `main_level` (> 0: SPON closer to dense)
      separated      share of (layer, level) pairs where SPON is closer to dense with t above the
                     two-sided 5 % critical value (window-to-window noise ruled out)
      near_ideal     share of layers where the mask at `main_level` stays within 0.02 of the
                     dense value (what saturation looks like)
      monotone       share of layers whose masked distance rises at every level step
      rank_with_output_kl  Spearman correlation over all runs of the mean distance with the
                     output KL (how the metric orders runs across levels)"""
    from scipy.stats import t as student_t

    summary = {}
    for metric in (*METRICS, *WITH_FIRST_POSITION):
        runs = {run: distance(metric, np.asarray(values[metric], dtype=float))
                for run, values in per_window.items() if metric in values}  # run -> (W, L) distances
        pairs = [level for level in levels if f"masked@{level}" in runs and f"spon@{level}" in runs]
        if main_level not in pairs:
            continue
        t_by_level = {}
        for level in pairs:
            gap = runs[f"masked@{level}"] - runs[f"spon@{level}"]  # (W, L), > 0: SPON closer
            spread = gap.std(axis=0, ddof=1) / np.sqrt(gap.shape[0])  # (L,)
            t_by_level[level] = gap.mean(axis=0) / np.maximum(spread, 1e-300)
        windows = runs[f"masked@{main_level}"].shape[0]
        critical = float(student_t.ppf(0.975, windows - 1))
        masked_curves = np.stack([runs[f"masked@{level}"].mean(axis=0) for level in pairs])  # (levels, L)
        entry = {
            "distance_masked": float(runs[f"masked@{main_level}"].mean()),
            "distance_spon": float(runs[f"spon@{main_level}"].mean()),
            "t_median": float(np.median(t_by_level[main_level])),
            "separated": float(np.mean(np.concatenate([t > critical for t in t_by_level.values()]))),
            "near_ideal": float(np.mean(runs[f"masked@{main_level}"].mean(axis=0) < 0.02)),
            "monotone": float(np.mean(np.all(np.diff(masked_curves, axis=0) > 0, axis=0))),
            "critical_t": critical,
        }
        if all("lens_kl" in per_window[run] for run in runs):
            output_kl = [float(np.mean(per_window[run]["lens_kl"], axis=0)[-1]) for run in runs]
            entry["rank_with_output_kl"] = _spearman([runs[run].mean() for run in runs], output_kl)
        summary[metric] = entry
    return summary


# ------------------------------------------------------------------ cached results for dashboards


class LayerAnalysis:
    """Per-layer comparison of the model at any (rule, level) against dense on a fixed probe text,
    computed once per setting and cached: revisiting a setting costs a dictionary lookup.

    `calibration` gives the masked thresholds at any level; `spon` maps (rule, level) to a
    (Thresholds, alphas) pair trained there (e.g. from `sponlib.spon.load_spon`), for SPON curves.
    Metrics leave out the first position of each window (see `sponlib.analysis_record`); the
    probe's perplexity counts every token that has a next one. The logit lens runs on the first
    `lens_tokens` tokens (the head is the costly part: 30 layers x 49k words for SmolLM2), and the
    dense model's lens is computed once (`lens_tokens` x layers x vocabulary floats).

    Memory: each cached setting keeps its residual stream for the PCA views (blocks x tokens x
    width floats, 18 MB for SmolLM2 on 256 tokens); beyond `max_cached` settings the least
    recently used one is dropped and recomputed if visited again."""

    def __init__(self, model, ids: torch.Tensor, calibration, spon: dict | None = None, lens_tokens: int = 12,
                 metrics=("drift", "cosine", "cka", "lens_kl"), max_cached: int = 24):
        self.model, self.ids, self.calibration = model, ids, calibration  # ids: (B, L)
        self.spon = {(rule, round(float(level), 4)): pair for (rule, level), pair in (spon or {}).items()}
        self.lens_tokens, self.metrics = lens_tokens, tuple(metrics)
        self.tokens = select_tokens(*ids.shape)  # (B * L, 2): every token
        self.later = self.tokens[:, 1] > 0  # (B * L,) rows the metrics use
        self.timings: dict = {}  # setting -> seconds its computation took
        self.max_cached = max_cached
        self._cache: OrderedDict = OrderedDict()  # setting -> result, least recently used first
        self._projections = block_projections(model)
        self._dense: Capture | None = None
        self._dense_lens: torch.Tensor | None = None  # (L, lens_tokens, V)
        self.dense_perplexity: float | None = None

    @property
    def n_blocks(self) -> int:
        return self.dense.n_blocks

    @property
    def dense(self) -> Capture:
        if self._dense is None:
            self._dense = capture(self.model, self.ids, tokens=self.tokens, inputs=False)
            self.dense_perplexity = self.perplexity(self._dense)
            if self.lens_tokens:
                self._dense_lens = dense_lens(self.model, self._dense.subset(self.later), self.lens_tokens)
        return self._dense

    def variant(self, rule: str, level: float, with_spon: bool = False) -> Variant:
        level = round(float(level), 4)
        if with_spon:
            thresholds, alphas = self.spon[(rule, level)]
            return Variant(f"spon@{level}", thresholds, alphas)
        return Variant(f"masked@{level}", self.calibration.thresholds(level, rule))

    def projection(self, block: int, role: str):
        """The Projection (sponlib.adapters) of one block and role."""
        return self._projections[block][role]

    def has_spon(self, rule: str, level: float) -> bool:
        return (rule, round(float(level), 4)) in self.spon

    def perplexity(self, states: Capture) -> float:
        """Perplexity of the probe text from a capture's last residual states."""
        rows = states.tokens[:, 1] < self.ids.shape[1] - 1  # (N,) has a next token
        targets = self.ids[states.tokens[rows, 0], states.tokens[rows, 1] + 1]  # (n,)
        logprobs = lens_logprobs(self.model, states.resid()[-1][rows])  # (n, V)
        return float(torch.exp(-logprobs.gather(1, targets[:, None]).mean()))

    def _cached(self, key, compute) -> dict:
        if key in self._cache:
            self._cache.move_to_end(key)
        else:
            self._cache[key] = compute()
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        return self._cache[key]

    def result(self, rule: str, level: float, with_spon: bool = False) -> dict:
        """{"capture", "measured", "perplexity", "metrics": metric -> per-layer list} at one
        setting (cached)."""
        key = (rule, round(float(level), 4), with_spon)

        def compute() -> dict:
            started = time.perf_counter()
            dense = self.dense
            variant = self.variant(rule, level, with_spon)
            with variant.active(self.model) as sparsifier:
                states = capture(self.model, self.ids, tokens=self.tokens, inputs=False)
            metrics = compare(self.model, dense.subset(self.later), states.subset(self.later),
                              lens_tokens=self.lens_tokens, reference_lens=self._dense_lens, metrics=self.metrics)
            result = {"capture": states, "measured": sparsifier.summary()["weighted"],
                      "perplexity": self.perplexity(states), "metrics": metrics}
            self.timings[key] = time.perf_counter() - started
            return result

        return self._cached(key, compute)

    def projection_input(self, rule: str | None, level: float, block: int, role: str) -> dict:
        """What one projection reads at a setting (upstream masks on; rule None: dense), before its
        own mask, from one forward pass that also gives the measured sparsity and the probe's
        perplexity: {"values": (B * L, in), "measured", "perplexity"}, cached."""
        key = ("input", rule, round(float(level), 4), block, role)

        def compute() -> dict:
            variant = Variant("dense") if rule is None else self.variant(rule, level)
            with variant.active(self.model) as sparsifier:
                states = capture(self.model, self.ids, tokens=self.tokens, inputs=(role,), blocks=(block,))
            return {"values": states[input_name(self.model, block, role)],
                    "measured": sparsifier.summary()["weighted"] if sparsifier else 0.0,
                    "perplexity": self.perplexity(states)}

        return self._cached(key, compute)


# ------------------------------------------------------------------ PCA across layers


def pca_trajectories(captures: dict[str, Capture], reference: str = "dense", n_components: int = 2) -> dict:
    """Where each variant's mean state sits at every layer, in one PCA plane fitted on the
    reference variant's states of all layers. States are scaled to unit RMS per token first (what
    the next norm sees), else the deep layers' large norms would own the plane.
    -> {"paths": name -> (L, n_components), "explained": ratios of the components}"""
    from .metrics import pca_fit, pca_project

    def unit(states: torch.Tensor) -> torch.Tensor:  # (N, d) -> (N, d)
        return states / states.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-12)

    pooled = torch.cat([unit(h) for h in captures[reference].resid()])  # (L * N, d)
    pca = pca_fit(pooled, n_components)
    paths = {name: np.stack([pca_project(pca, unit(h)).mean(axis=0) for h in cap.resid()])
             for name, cap in captures.items()}
    return {"paths": paths, "explained": pca.explained_variance_ratio_.tolist()}
