"""`LayerAnalysis`: the model at any (rule, level), with or without SPON, compared with dense layer
by layer on a fixed probe text, each setting computed once and cached, so that the dashboards
(sponlib.viz.widgets) redraw a revisited setting at once.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import torch

from ..errors import InvalidArgumentError
from ..masks import resolve_mask
from ..models.adapters import block_projections
from ..models.head import lens_logprobs
from .capture import Capture, capture, input_name, select_tokens
from .compare import Variant, compare, dense_lens


class LayerAnalysis:
    """Per-layer comparison of the model at any (rule, level) against dense on a fixed probe text,
    computed once per setting and cached: revisiting a setting costs a dictionary lookup.

    `calibration` gives the masked thresholds at any level; `spon` maps (rule, level) to a
    (Thresholds, alphas) pair trained there (e.g. from `sponlib.spon.load_spon`), for SPON curves;
    `spon_levels` (a `sponlib.spon.SponLevels`, or rule -> SponLevels, e.g. from
    `sponlib.artifacts.shipped_spon_levels`) gives SPON at every level it covers, interpolated
    between its trained levels (a pair in `spon` wins at its own level).
    Metrics leave out the first position of each window (see `sponlib.experiments.representation`); the
    probe's perplexity counts every token that has a next one. The logit lens runs on the first
    `lens_tokens` tokens (the head is the costly part: 30 layers x 49k words for SmolLM2), and the
    dense model's lens is computed once (`lens_tokens` x layers x vocabulary floats).

    Memory: each cached setting keeps its residual stream for the PCA views (blocks x tokens x
    width floats, 18 MB for SmolLM2 on 256 tokens); beyond `max_cached` settings the least
    recently used one is dropped and recomputed if visited again."""

    def __init__(
        self,
        model,
        ids: torch.Tensor,
        calibration,
        spon: dict | None = None,
        lens_tokens: int = 12,
        metrics=("drift", "cosine", "cka", "lens_kl"),
        max_cached: int = 24,
        spon_levels=None,
    ):
        self.model, self.ids, self.calibration = model, ids, calibration  # ids: (B, L)
        self.spon = {(rule, round(float(level), 4)): pair for (rule, level), pair in (spon or {}).items()}
        if spon_levels is not None and not isinstance(spon_levels, dict):  # one SponLevels: keyed by its rule
            spon_levels = {spon_levels.rule: spon_levels}
        self.spon_levels = dict(spon_levels or {})  # rule -> SponLevels
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
            if (rule, level) in self.spon:
                thresholds, alphas = self.spon[(rule, level)]
                return Variant(f"spon@{level}", thresholds, alphas)
            if not self.has_spon(rule, level):
                raise InvalidArgumentError(
                    f"no SPON vectors for {rule} at {level:g}: give them in spon= or spon_levels= (has_spon says where)"
                )
            vectors, thresholds = self.spon_levels[rule].at(level)
            return Variant(f"spon@{level}", thresholds, vectors.alphas)
        return Variant(
            f"masked@{level}", resolve_mask(self.model, level, rule, calibration=self.calibration).thresholds
        )

    def projection(self, block: int, role: str):
        """The Projection (sponlib.models.adapters) of one block and role."""
        return self._projections[block][role]

    def has_spon(self, rule: str, level: float) -> bool:
        """True where SPON vectors exist: a trained pair, or a level the rule's SponLevels covers."""
        level = round(float(level), 4)
        return (rule, level) in self.spon or (rule in self.spon_levels and self.spon_levels[rule].covers(level))

    def spon_between(self, rule: str, level: float) -> tuple[float, float] | None:
        """(lo, hi): the trained levels the SPON vectors at `level` are interpolated between
        (lo = 0 below the lowest trained level); None where they were trained at the level, or
        where there are none."""
        level = round(float(level), 4)
        if (rule, level) in self.spon or not self.has_spon(rule, level):
            return None
        blend = self.spon_levels[rule].between(level)
        return None if blend is None else blend[:2]

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
            metrics = compare(
                self.model,
                dense.subset(self.later),
                states.subset(self.later),
                lens_tokens=self.lens_tokens,
                reference_lens=self._dense_lens,
                metrics=self.metrics,
            )
            result = {
                "capture": states,
                "measured": sparsifier.summary()["weighted"],
                "perplexity": self.perplexity(states),
                "metrics": metrics,
            }
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
            return {
                "values": states[input_name(self.model, block, role)],
                "measured": sparsifier.summary()["weighted"] if sparsifier else 0.0,
                "perplexity": self.perplexity(states),
            }

        return self._cached(key, compute)
