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
from .metrics import kl_divergence

HEAD_ROWS = 1024  # rows per product with the head: near the CPU's peak, (HEAD_ROWS, V) floats at most


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
    `lens_tokens` tokens (the head is the costly part: 30 layers x 49k words for SmolLM2; a
    setting's lens and perplexity share one product with it), and the dense model's lens is
    computed once (twice `lens_tokens` x layers x vocabulary floats: log-probabilities and
    probabilities, 71 MB each for SmolLM2). A setting computes the metrics asked for (see `result`).

    Memory: each cached setting keeps its residual stream for the PCA views (blocks x tokens x
    width floats, 18 MB for SmolLM2 on 256 tokens); beyond `max_cached` settings the least
    recently used one is dropped and recomputed if visited again. The head product's work space
    (rows x vocabulary floats, 121 MB for SmolLM2 on 256 tokens with the lens) is kept and reused."""

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
        rotations=None,
    ):
        self.model, self.ids, self.calibration = model, ids, calibration  # ids: (B, L)
        self.rotations = rotations  # larosa's (sponlib.sparsity.rotation), from calibration text
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
        self._dense_later: Capture | None = None  # the dense capture on the rows the metrics use
        self._dense_lens: torch.Tensor | None = None  # (L, lens_tokens, V) log-probabilities
        self._dense_probs: torch.Tensor | None = None  # (L, lens_tokens, V): their exp, for every KL
        self.dense_perplexity: float | None = None
        self._head_buffers: dict[int, torch.Tensor] = {}  # rows -> (rows, V) work space of the head product

    @property
    def n_blocks(self) -> int:
        return self.dense.n_blocks

    @property
    def dense(self) -> Capture:
        if self._dense is None:
            self._dense = capture(self.model, self.ids, tokens=self.tokens, inputs=False)
            self.dense_perplexity = self.perplexity(self._dense)
            if self.lens_tokens:
                self._dense_lens = dense_lens(self.model, self._dense_rows(), self.lens_tokens)
                self._dense_probs = self._dense_lens.exp()
        return self._dense

    def _dense_rows(self) -> Capture:
        """The dense capture on the rows the metrics use, cut once."""
        if self._dense_later is None:
            self._dense_later = self.dense.subset(self.later)
        return self._dense_later

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
        thresholds = resolve_mask(self.model, level, rule, calibration=self.calibration).thresholds
        if rule == "larosa":
            if self.rotations is None:
                raise InvalidArgumentError(
                    "larosa needs its rotations: LayerAnalysis(..., rotations=sponlib.sparsity.rotation."
                    "text_rotations(model, tokenizer, calibration.meta['corpus']))"
                )
            thresholds = thresholds.with_rotations(self.rotations)
        return Variant(f"masked@{level}", thresholds)

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
        return self._head_pass(states, lens=False)[0]

    @torch.inference_mode()
    def _head_pass(self, states: Capture, lens: bool) -> tuple[float, list[float] | None]:
        """The probe's perplexity and, with `lens`, the `lens_kl` metric (compare's: KL to dense's
        lens on the first `lens_tokens` rows the metrics use, per layer) from one product with the
        head, the costly part: one large product runs nearer the CPU's peak than one per use."""
        rows = states.tokens[:, 1] < self.ids.shape[1] - 1  # (N,) has a next token
        targets = self.ids[states.tokens[rows, 0], states.tokens[rows, 1] + 1]  # (n,)
        hidden = [states.resid()[-1][rows]]  # (n, d)
        if lens:
            self._dense_rows()  # dense's lens, the reference, computed once
            hidden += [h[self.later][: self.lens_tokens] for h in states.resid()]  # L x (k, d), layer-major
        hidden = torch.cat(hidden)  # (n + L k, d)
        if hidden.shape[0] not in self._head_buffers:  # one per row count, reused: no fresh pages per setting
            vocab = self.model.get_output_embeddings().weight.shape[0]
            self._head_buffers[hidden.shape[0]] = torch.empty(hidden.shape[0], vocab)
        logprobs = lens_logprobs(self.model, hidden, chunk=HEAD_ROWS, out=self._head_buffers[hidden.shape[0]])
        n = len(targets)
        perplexity = float(torch.exp(-logprobs[:n].gather(1, targets[:, None]).mean()))
        if not lens:
            return perplexity, None
        reference, probs = self._dense_lens.flatten(0, 1), self._dense_probs.flatten(0, 1)  # (L k, V) each
        kl = kl_divergence(reference, logprobs[n:], overwrite=True, reference_probs=probs)  # (L k,)
        return perplexity, kl.view(self._dense_lens.shape[0], -1).mean(dim=1).tolist()

    def _cached(self, key, compute) -> dict:
        if key in self._cache:
            self._cache.move_to_end(key)
        else:
            self._cache[key] = compute()
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        return self._cache[key]

    def result(self, rule: str, level: float, with_spon: bool = False, metrics=None) -> dict:
        """{"capture", "measured", "perplexity", "metrics": metric -> per-layer list} at one
        setting (cached). `metrics`: those needed now (default: the analysis's `metrics`); the
        others are computed, and cached, the first time they are asked for."""
        key = (rule, round(float(level), 4), with_spon)
        wanted = self.metrics if metrics is None else tuple(metrics)

        def compute() -> dict:
            started = time.perf_counter()
            variant = self.variant(rule, level, with_spon)
            with variant.active(self.model) as sparsifier:
                states = capture(self.model, self.ids, tokens=self.tokens, inputs=False)
            perplexity, lens_kl = self._head_pass(states, lens="lens_kl" in wanted and bool(self.lens_tokens))
            result = {
                "capture": states,
                "measured": sparsifier.summary()["weighted"],
                "perplexity": perplexity,
                "metrics": {} if lens_kl is None else {"lens_kl": lens_kl},
            }
            self._add_metrics(result, wanted)
            self.timings[key] = time.perf_counter() - started
            return result

        result = self._cached(key, compute)
        self._add_metrics(result, wanted)  # those not asked for before
        return result

    def _add_metrics(self, result: dict, wanted: tuple) -> None:
        """Compute the `wanted` metrics a cached result lacks, in place."""
        # without lens tokens there is no lens_kl (as in compare)
        missing = [m for m in wanted if m not in result["metrics"] and (m != "lens_kl" or self.lens_tokens)]
        if missing:
            dense = self._dense_rows()  # runs the dense model (and its lens) the first time
            result["metrics"].update(
                compare(
                    self.model,
                    dense,
                    result["capture"].subset(self.later),
                    lens_tokens=self.lens_tokens,
                    reference_lens=self._dense_lens,
                    metrics=missing,
                )
            )

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
