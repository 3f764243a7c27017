"""Per-projection and per-layer parts of benchmarks/kernels_h200.py: dense cuBLAS, sponlib's
sparse GEMV and, in float16 when a TEAL checkout is given, TEAL's kernel, timed side by side
over the same weight copies and inputs (sponlib.kernels.timing: copies >= 4x L2, one CUDA
graph, median replay). Inputs are N(0, 1) with τ at the quantile that zeroes a share s; the
measured share is reported and the ideal gain is 1/(1 − s).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sponlib.kernels import input_major, keep_mask, new_workspace, sparse_gemv
from sponlib.kernels.timing import copies_for, graph_time, normal_threshold

from kernel_shapes import LEVELS, MODEL_SHAPES, gemv_shapes


def ceilings() -> dict:
    """Device-to-device copy of 4 GiB, counting bytes read and written."""
    source = torch.randn(2**30, device="cuda")  # 4 GiB of float32
    target = torch.empty_like(source)
    seconds = graph_time([lambda: target.copy_(source)] * 4, replays=10)
    return {"copy_GBps": round(2 * 4 * 2**30 / seconds / 1e9, 1)}


class GemvData:
    """Weight copies (both layouts) and fresh inputs of one projection shape in one dtype, and the
    timing of dense, sponlib and TEAL calls over them at one sparsity."""

    def __init__(self, n_in: int, n_out: int, gen: torch.Generator, dtype=torch.bfloat16, cap: int = 1024):
        self.n_in, self.n_out, self.dtype = n_in, n_out, dtype
        self.weight_bytes = n_in * n_out * 2
        self.copies = copies_for(self.weight_bytes, cap=cap)
        self.workspace = new_workspace(n_out, "cuda")  # the calls run one after another
        self.weights = [
            torch.randn(n_out, n_in, device="cuda", dtype=dtype, generator=gen) for _ in range(self.copies)
        ]  # (out, in) each
        self.weights_t = [input_major(w) for w in self.weights]  # (in, out) each
        self.xs = [
            torch.randn(1, n_in, device="cuda", dtype=dtype, generator=gen) for _ in range(self.copies)
        ]  # (1, in) each
        self._references = {}  # sparsity -> float64 reference output on the first copy
        self.dense_s = graph_time([lambda x=x, w=w: F.linear(x, w) for x, w in zip(self.xs, self.weights)])

    def ours(self, tau: torch.Tensor, config=None, level: float = 0.0) -> list:
        """Calls of sponlib's sparse GEMV: through the op, told the level as a calibrated model
        tells it (it picks the tiles), or the kernel itself with `config`."""
        from sponlib.kernels.triton_gemv import triton_sparse_gemv

        if config is None:
            return [
                lambda x=x, w=w: sparse_gemv(x, w, tau, workspace=self.workspace, sparsity=level)
                for x, w in zip(self.xs, self.weights_t)
            ]
        return [
            lambda x=x, w=w: triton_sparse_gemv(x.view(-1), w, tau, config=config, workspace=self.workspace)
            for x, w in zip(self.xs, self.weights_t)
        ]

    def reference(self, level: float) -> torch.Tensor:
        """The first copy's output at sparsity `level`: float64 product, float32 rule, made once per level."""
        if level not in self._references:
            x, tau = self.xs[0], torch.tensor(normal_threshold(level), device="cuda")
            self._references[level] = ((x.double() * keep_mask(x, tau)) @ self.weights_t[0].double()).reshape(-1)
        return self._references[level]

    def max_error(self, y: torch.Tensor, level: float) -> float:
        """Largest |y − reference| for an output y of the first copy at sparsity `level`."""
        return round(float((y.double().reshape(-1) - self.reference(level)).abs().max()), 4)

    def error_of(self, y: torch.Tensor, level: float) -> float:
        """‖y − reference‖ / ‖reference‖ for an output y of the first copy at sparsity `level`."""
        reference = self.reference(level)
        return round(float((y.double().reshape(-1) - reference).norm() / reference.norm()), 5)

    def relative_error(self, level: float, config) -> float:
        """error_of sponlib's kernel with `config` at sparsity `level`."""
        tau = torch.tensor([normal_threshold(level)], device="cuda")
        return self.error_of(self.ours(tau, config)[0](), level)

    def sparse(self, level: float, config=None, teal=None) -> dict:
        """Time sponlib's calls at sparsity `level` (and TEAL's, when given) against dense."""
        tau_value = normal_threshold(level)
        tau = torch.tensor([tau_value], device="cuda")
        achieved = float(torch.stack([(x.float().abs() <= tau).float().mean() for x in self.xs]).mean())
        calls = self.ours(tau, config, level)
        sparse_s = graph_time(calls)
        vectors = 2 * (self.n_in + self.n_out)  # x read, y written
        ideal = 1 / (1 - achieved)
        row = {
            "in": self.n_in,
            "out": self.n_out,
            "dtype": str(self.dtype).removeprefix("torch."),
            "sparsity": level,
            "measured_sparsity": round(achieved, 4),
            "copies": self.copies,
            "dense_us": round(self.dense_s * 1e6, 2),
            "sparse_us": round(sparse_s * 1e6, 2),
            "dense_GBps": round((self.weight_bytes + vectors) / self.dense_s / 1e9, 1),
            "sparse_GBps": round(((1 - achieved) * self.weight_bytes + vectors) / sparse_s / 1e9, 1),
            "speedup": round(self.dense_s / sparse_s, 3),
            "ideal": round(ideal, 3),
            "share_of_ideal": round(self.dense_s / sparse_s / ideal, 3),
        }
        if teal is not None:
            teal_calls = [lambda x=x, w=w: teal.gemv(x, w, tau_value, level) for x, w in zip(self.xs, self.weights_t)]
            teal_s = graph_time(teal_calls)
            row.update(
                teal_us=round(teal_s * 1e6, 2),
                teal_speedup=round(self.dense_s / teal_s, 3),
                vs_teal=round(teal_s / sparse_s, 3),
                max_error=self.max_error(calls[0](), level),
                teal_max_error=self.max_error(teal_calls[0](), level),
            )
        return row


def _print_gemv(model: str, roles: str, row: dict) -> None:
    teal = ""
    if "teal_us" in row:
        teal = f" | TEAL {row['teal_us']:7.2f} us x{row['teal_speedup']:.2f}: TEAL/ours x{row['vs_teal']:.2f}"
    print(
        f"gemv {row['dtype']:8s} {model:12s} {roles:8s} {row['in']:5d}->{row['out']:<5d} s={row['sparsity']:<4} "
        f"dense {row['dense_us']:7.2f} us | sparse {row['sparse_us']:7.2f} us {row['sparse_GBps']:6.0f} GB/s "
        f"x{row['speedup']:.2f} of x{row['ideal']:.2f}" + teal,
        flush=True,
    )


TEAL_LEVELS = (0.0, 0.25, 0.5, 0.7)  # TEAL tunes itself per level: the float16 runs take fewer


def gemv(levels=LEVELS, dtypes=(torch.bfloat16,), teal=None) -> list[dict]:
    """Every projection shape at every level, per dtype; TEAL beside ours in float16 on the
    Llama-3-8B shapes (at TEAL_LEVELS: TEAL tunes itself per shape and level)."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for dtype in dtypes:
        for model, roles, n_in, n_out in gemv_shapes():
            if dtype == torch.float16 and model != "llama3-8b":
                continue  # float16 runs are for the comparison with TEAL
            data = GemvData(n_in, n_out, gen, dtype)
            contender = teal if dtype == torch.float16 else None
            for level in TEAL_LEVELS if contender else levels:
                row = {"model": model, "roles": roles, **data.sparse(level, teal=contender)}
                rows.append(row)
                _print_gemv(model, roles, row)
            data = None  # its weights go before the next shape's
            torch.cuda.empty_cache()
    return rows


READS = {"q": "attn", "k": "attn", "v": "attn", "o": "o", "gate": "mlp", "up": "mlp", "down": "down"}
GROUPS = {"qkv": ("q", "k", "v"), "o": ("o",), "gateup": ("gate", "up"), "down": ("down",)}


class LayerData:
    """Copies of one decoder layer's seven projections (dense, input-major, fused groups) and
    inputs per source, in one dtype; the layer as each side's model launches it."""

    def __init__(self, shapes: dict, gen: torch.Generator, dtype):
        self.shapes = shapes
        self.layer_bytes = sum(k * n * 2 for k, n in shapes.values())
        self.copies = copies_for(self.layer_bytes, floor=3, cap=256)
        self.dense = [
            {r: torch.randn(n, k, device="cuda", dtype=dtype, generator=gen) for r, (k, n) in shapes.items()}
            for _ in range(self.copies)
        ]  # role -> (out, in)
        self.separate = [{r: input_major(w) for r, w in c.items()} for c in self.dense]  # role -> (in, out)
        self.fused = [
            {g: torch.cat([c[r] for r in roles], dim=1) for g, roles in GROUPS.items()} for c in self.separate
        ]  # group -> (in, sum of outs)
        self.segments = {g: [shapes[r][1] for r in roles] for g, roles in GROUPS.items()}
        widths = {"attn": shapes["q"][0], "o": shapes["o"][0], "mlp": shapes["gate"][0], "down": shapes["down"][0]}
        self.inputs = [
            {src: torch.randn(1, k, device="cuda", dtype=dtype, generator=gen) for src, k in widths.items()}
            for _ in range(self.copies)
        ]  # source -> (1, in)
        self.spaces = {
            name: new_workspace(n, "cuda")
            for name, n in [(r, shapes[r][1]) for r in shapes] + [(g, sum(self.segments[g])) for g in GROUPS]
        }

    def time(self, launch) -> float:
        return graph_time([lambda c=c: launch(c) for c in range(self.copies)], replays=10)

    def dense_layer(self, c: int) -> None:
        for role, source in READS.items():
            F.linear(self.inputs[c][source], self.dense[c][role])

    def separate_layer(self, c: int, taus: dict, level: float) -> None:
        for role, source in READS.items():
            sparse_gemv(
                self.inputs[c][source], self.separate[c][role], taus[1], workspace=self.spaces[role], sparsity=level
            )

    def fused_layer(self, c: int, taus: dict, level: float) -> None:
        for group, roles in GROUPS.items():
            sparse_gemv(
                self.inputs[c][READS[roles[0]]],
                self.fused[c][group],
                taus[len(roles)],
                segments=self.segments[group],
                workspace=self.spaces[group],
                sparsity=level,
            )

    def teal_layer(self, c: int, teal, tau: float, level: float) -> None:
        """As TEAL's model runs a block: fused q/k/v, then o, gate, up, down one launch each."""
        x = self.inputs[c]
        teal.qkv(x["attn"], self.fused[c]["qkv"], (tau, tau, tau), self.shapes["k"][1], level)
        for role in ("o", "gate", "up", "down"):
            teal.gemv(x[READS[role]], self.separate[c][role], tau, level)

    def measured(self, tau: float) -> float:
        """The share of zeroed inputs, weighted by the weights each input gates."""
        zeroed = sum(
            float((x[s].float().abs() <= tau).float().mean()) * self.shapes[r][0] * self.shapes[r][1]
            for x in self.inputs
            for r, s in READS.items()
        )
        return zeroed / (self.layer_bytes / 2 * self.copies)


def layer(levels=LEVELS, dtypes=(torch.bfloat16,), teal=None) -> list[dict]:
    """One decoder layer's seven projections per call; each call its own layer copy and inputs.
    Sparse: seven launches; fused: q/k/v and gate/up each one launch on concatenated weights;
    TEAL (float16): its model's five launches."""
    gen = torch.Generator(device="cuda").manual_seed(1)
    rows = []
    for dtype in dtypes:
        for model, shapes in MODEL_SHAPES.items():
            if dtype == torch.float16 and model != "llama3-8b":
                continue  # float16 runs are for the comparison with TEAL
            data = LayerData(shapes, gen, dtype)
            dense_s = data.time(data.dense_layer)
            contender = teal if dtype == torch.float16 else None
            for level in TEAL_LEVELS if contender else levels:
                tau = normal_threshold(level)
                taus = {g: torch.full((g,), tau, device="cuda") for g in (1, 2, 3)}  # one per segment
                separate_s = data.time(lambda c: data.separate_layer(c, taus, level))
                fused_s = data.time(lambda c: data.fused_layer(c, taus, level))
                ideal = 1 / (1 - data.measured(tau))
                row = {
                    "model": model,
                    "dtype": str(dtype).removeprefix("torch."),
                    "sparsity": level,
                    "measured_sparsity": round(1 - 1 / ideal, 4),
                    "copies": data.copies,
                    "weight_MB": round(data.layer_bytes / 1e6, 1),
                    "dense_us": round(dense_s * 1e6, 2),
                    "sparse_us": round(separate_s * 1e6, 2),
                    "fused_us": round(fused_s * 1e6, 2),
                    "dense_GBps": round(data.layer_bytes / dense_s / 1e9, 1),
                    "sparse_GBps": round(data.layer_bytes / ideal / separate_s / 1e9, 1),
                    "speedup": round(dense_s / separate_s, 3),
                    "fused_speedup": round(dense_s / fused_s, 3),
                    "ideal": round(ideal, 3),
                    "share_of_ideal": round(dense_s / separate_s / ideal, 3),
                }
                teal_text = ""
                if contender is not None:
                    teal_s = data.time(lambda c: data.teal_layer(c, contender, tau, level))
                    row.update(
                        teal_us=round(teal_s * 1e6, 2),
                        teal_speedup=round(dense_s / teal_s, 3),
                        vs_teal=round(teal_s / min(separate_s, fused_s), 3),
                    )
                    teal_text = f" | TEAL {teal_s * 1e6:7.1f} us x{dense_s / teal_s:.2f}"
                rows.append(row)
                print(
                    f"layer {row['dtype']:8s} {model:12s} s={level:<4} dense {row['dense_us']:7.1f} us | sparse "
                    f"{row['sparse_us']:7.1f} us x{row['speedup']:.2f} | fused {row['fused_us']:7.1f} us "
                    f"x{row['fused_speedup']:.2f} | ideal x{row['ideal']:.2f}" + teal_text,
                    flush=True,
                )
            data = None  # its weights go before the next shape's
            torch.cuda.empty_cache()
    return rows
