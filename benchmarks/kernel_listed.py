"""The `listed` part of benchmarks/kernels_h200.py: the sparse GEMV over a ready list of kept
inputs (sponlib.kernels.triton_listed: written in chunks of LIST_CHUNK inputs by many programs,
read as one list) on the Llama-3-8B projection shapes and fused groups, at
s = 0 and 0.5, beside cuBLAS and the shipped streamed kernel, all over the same weight copies and
inputs (GemvData):

    list_us    the listing kernel alone: what a producer that writes the list as it makes x
               (RMSNorm, SiLU·up) would take on
    gemv_us    the GEMV over ready lists, the fastest at 0.5 of a grid of tiles: the time with such
               a producer
    chain_us   both launches, the GEMV a dependent of the listing: the time without one

Every tile's result is checked against a float64 reference at both levels; one that is off is
left out. Fused groups run as one segment with one threshold (each segment's list costs the same).

And the producers that would write those lists as they make x (sponlib.kernels.triton_producers):
RMSNorm over the hidden features with three thresholds (q/k/v) and SiLU(gate) · up with one (down),
against the same operations as torch.compile makes them for the decoder today, without lists.

And one Llama-3-8B block's projections with the producers between them, as the data flows (the
gate/up output feeds SiLU · up, which feeds down): dense (cuBLAS, seven launches); today's path
(torch.compile's RMSNorm and SiLU · up, fused q/k/v and gate/up, streamed kernel); and the listed
path (the producers write the lists, q/k/v, gate/up and down run on them with the tiles found
above, o stays streamed: its producer is attention).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from sponlib.kernels import sparse_gemv
from sponlib.kernels.listed_ops import rmsnorm_reference
from sponlib.kernels.tiles import GemvConfig
from sponlib.kernels.timing import graph_time, normal_threshold
from sponlib.kernels.triton_listed import LIST_CHUNK

from kernel_parts import GemvData, LayerData
from kernel_shapes import DTYPE, LLAMA3_8B, MODEL_SHAPES, sweep_shapes

LEVELS = (0.0, 0.5)


def listed_candidates(n_in: int, n_out: int) -> list[GemvConfig]:
    """Output tiles of 512 to 2048 columns, 8 to 32 list entries a step, 32 to 256 entries a
    program, the next step in flight, split sums finished by a cast kernel, with and without
    dependent launch."""
    found = []
    for block_n in (512, 1024, 2048):
        for block_k in (8, 16, 32):
            for entries in (32, 64, 128, 256):
                tile = block_n * block_k
                if block_n > n_out or entries < 2 * block_k or tile > 32768:
                    continue
                warps = 8 if tile > 16384 else 4
                found += [
                    GemvConfig(block_n, block_k, entries, warps, prefetch=True, atomic=True, finisher=True, pdl=pdl)
                    for pdl in (False, True)
                ]
    return found


class ListedData:
    """GemvData's copies with their lists at one level, and the listed GEMV timed over them."""

    def __init__(self, data: GemvData, level: float):
        from sponlib.kernels.triton_listed import list_kept

        self.data, self.level = data, level
        self.tau = torch.tensor([normal_threshold(level)], device="cuda")
        self.kept = [list_kept(x.view(-1), self.tau) for x in data.xs]

    def error(self, config: GemvConfig) -> float:
        from sponlib.kernels.triton_listed import listed_sparse_gemv

        data = self.data
        y = listed_sparse_gemv(
            data.xs[0].view(-1), data.weights_t[0], self.kept[0], config=config, workspace=data.workspace
        )
        return data.error_of(y, self.level)

    def gemv_s(self, config: GemvConfig) -> float:
        from sponlib.kernels.triton_listed import listed_sparse_gemv

        data = self.data
        return graph_time(
            [
                lambda x=x, w=w, k=k: listed_sparse_gemv(x.view(-1), w, k, config=config, workspace=data.workspace)
                for x, w, k in zip(data.xs, data.weights_t, self.kept)
            ]
        )

    def list_s(self, pdl: bool) -> float:
        from sponlib.kernels.triton_listed import list_kept

        return graph_time([lambda x=x: list_kept(x.view(-1), self.tau, pdl=pdl) for x in self.data.xs])

    def chain_s(self, config: GemvConfig) -> float:
        from sponlib.kernels.triton_listed import list_kept, listed_sparse_gemv

        data = self.data

        def call(x, w):
            kept = list_kept(x.view(-1), self.tau, pdl=config.pdl)
            return listed_sparse_gemv(x.view(-1), w, kept, config=config, workspace=data.workspace)

        return graph_time([lambda x=x, w=w: call(x, w) for x, w in zip(data.xs, data.weights_t)])


def _us(seconds: float) -> float:
    return round(seconds * 1e6, 2)


def _row(model: str, roles: str, data: GemvData, at: dict, config: GemvConfig, level: float) -> dict:
    listed = at[level]
    shipped_s = graph_time(data.ours(listed.tau, level=level))
    gemv_s, chain_s, list_s = listed.gemv_s(config), listed.chain_s(config), listed.list_s(config.pdl)
    return {
        "model": model,
        "roles": roles,
        "in": data.n_in,
        "out": data.n_out,
        "sparsity": level,
        **config.__dict__,
        "dense_us": _us(data.dense_s),
        "shipped_us": _us(shipped_s),
        "list_us": _us(list_s),
        "gemv_us": _us(gemv_s),
        "chain_us": _us(chain_s),
        "gemv_speedup": round(data.dense_s / gemv_s, 3),
        "chain_speedup": round(data.dense_s / chain_s, 3),
        "shipped_speedup": round(data.dense_s / shipped_s, 3),
        "relative_error": listed.error(config),
        "list_chunk": LIST_CHUNK,
    }


def _rmsnorm(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A Llama block's RMSNorm of one vector h (K,), eps 1e-5."""
    return rmsnorm_reference(h, weight, 1e-5)


def producers(copies: int = 256, chunks=(256, 512, 1024)) -> list[dict]:
    """Each producer with its lists, in chunks of each size in `chunks` (LIST_CHUNK is the
    default), against torch.compile's version without, at sparsity 0.5."""
    from sponlib.kernels.triton_producers import rmsnorm_list, silu_mul_list

    gen = torch.Generator(device="cuda").manual_seed(4)
    hidden, inner = LLAMA3_8B["hidden_size"], LLAMA3_8B["intermediate_size"]
    hs = [torch.randn(hidden, device="cuda", dtype=DTYPE, generator=gen) for _ in range(copies)]
    weight = torch.ones(hidden, device="cuda", dtype=DTYPE)
    gates = [torch.randn(inner, device="cuda", dtype=DTYPE, generator=gen) for _ in range(copies)]
    ups = [torch.randn(inner, device="cuda", dtype=DTYPE, generator=gen) for _ in range(copies)]
    tau = torch.tensor([normal_threshold(0.5)], device="cuda")
    rms, silu_mul = torch.compile(_rmsnorm), torch.compile(_silu_mul)
    compiled = {
        "rmsnorm": graph_time([lambda h=h: rms(h, weight) for h in hs]),
        "silu-mul": graph_time([lambda g=g, u=u: silu_mul(g, u) for g, u in zip(gates, ups)]),
    }
    rows = []
    for chunk in chunks:
        timed = {
            ("rmsnorm", hidden, 3): graph_time(
                [lambda h=h: rmsnorm_list(h, weight, 1e-5, tau.repeat(3), chunk) for h in hs]
            ),
            ("rmsnorm, a program per list", hidden, 3): graph_time(
                [lambda h=h: rmsnorm_list(h, weight, 1e-5, tau.repeat(3), chunk, segment_programs=True) for h in hs]
            ),
            ("silu-mul", inner, 1): graph_time(
                [lambda g=g, u=u: silu_mul_list(g, u, tau, chunk) for g, u in zip(gates, ups)]
            ),
        }
        for (name, n, groups), listed_s in timed.items():
            rows.append(
                {
                    "producer": name,
                    "in": n,
                    "segments": groups,
                    "list_chunk": chunk,
                    "compiled_us": _us(compiled[name.split(",")[0]]),
                    "with_lists_us": _us(listed_s),
                }
            )
            print(
                f"listed producer {name} ({n}, {groups} lists, chunks of {chunk}): torch.compile "
                f"{rows[-1]['compiled_us']} us, with lists {rows[-1]['with_lists_us']} us",
                flush=True,
            )
    return rows


def _silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


class ListedLayer:
    """One block's copies (LayerData) run three ways, producers included; see the module docstring."""

    def __init__(self, data: LayerData, configs: dict, level: float):
        from sponlib.kernels.triton_listed import listed_sparse_gemv
        from sponlib.kernels.triton_producers import rmsnorm_list, silu_mul_list

        self.data, self.configs, self.level = data, configs, level
        self.inner = data.shapes["gate"][1]
        self.ones = torch.ones(data.shapes["q"][0], device="cuda", dtype=DTYPE)
        self.rms, self.silu_mul = torch.compile(_rmsnorm), torch.compile(_silu_mul)
        self.listed_gemv, self.rmsnorm_list, self.silu_mul_list = listed_sparse_gemv, rmsnorm_list, silu_mul_list
        tau = normal_threshold(level)  # the RMSNorm outputs are N(0, 1) here (unit weights)
        self.taus = {g: torch.full((g,), tau, device="cuda") for g in (1, 2, 3)}
        gate_up = self.today(0)[1]  # the down input's own scale sets its threshold
        a = _silu_mul(gate_up[: self.inner], gate_up[self.inner :]).float().abs()
        self.tau_down = torch.tensor([float(torch.quantile(a.cpu(), level))], device="cuda")

    def dense(self, c: int) -> None:
        data, inputs = self.data, self.data.inputs[c]
        y = self.rms(inputs["attn"].view(-1), self.ones)
        for role in ("q", "k", "v"):
            F.linear(y, data.dense[c][role])
        F.linear(inputs["o"].view(-1), data.dense[c]["o"])
        y = self.rms(inputs["mlp"].view(-1), self.ones)
        gate, up = F.linear(y, data.dense[c]["gate"]), F.linear(y, data.dense[c]["up"])
        F.linear(self.silu_mul(gate, up), data.dense[c]["down"])

    def today(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused streamed path -> (down output, gate/up output)."""
        data, inputs, level = self.data, self.data.inputs[c], self.level
        y = self.rms(inputs["attn"].view(-1), self.ones)
        sparse_gemv(y, data.fused[c]["qkv"], self.taus[3], None, None, data.segments["qkv"], data.spaces["qkv"], level)
        sparse_gemv(
            inputs["o"].view(-1), data.separate[c]["o"], self.taus[1], workspace=data.spaces["o"], sparsity=level
        )
        y = self.rms(inputs["mlp"].view(-1), self.ones)
        gate_up = sparse_gemv(
            y, data.fused[c]["gateup"], self.taus[2], None, None, data.segments["gateup"], data.spaces["gateup"], level
        )
        tau_down = getattr(self, "tau_down", self.taus[1])
        a = self.silu_mul(gate_up[: self.inner], gate_up[self.inner :])
        return sparse_gemv(
            a, data.separate[c]["down"], tau_down, workspace=data.spaces["down"], sparsity=level
        ), gate_up

    def listed(self, c: int) -> torch.Tensor:
        """The listed path -> the down output."""
        data, inputs, configs = self.data, self.data.inputs[c], self.configs
        y, kept = self.rmsnorm_list(inputs["attn"].view(-1), self.ones, 1e-5, self.taus[3], pdl=True)
        qkv = configs["qkv"]
        self.listed_gemv(
            y, data.fused[c]["qkv"], kept, None, tuple(data.segments["qkv"]), qkv, None, data.spaces["qkv"]
        )
        level = self.level
        sparse_gemv(
            inputs["o"].view(-1), data.separate[c]["o"], self.taus[1], workspace=data.spaces["o"], sparsity=level
        )
        y, kept = self.rmsnorm_list(inputs["mlp"].view(-1), self.ones, 1e-5, self.taus[2], pdl=True)
        segments, gate_up_config = tuple(data.segments["gateup"]), configs["gate+up"]
        gate_up = self.listed_gemv(
            y, data.fused[c]["gateup"], kept, None, segments, gate_up_config, None, data.spaces["gateup"]
        )
        a, kept = self.silu_mul_list(gate_up[: self.inner], gate_up[self.inner :], self.tau_down, pdl=True)
        return self.listed_gemv(
            a, data.separate[c]["down"], kept, None, None, configs["down"], None, data.spaces["down"]
        )


def listed_layer(configs: dict, levels=LEVELS) -> list[dict]:
    """The block three ways at each level, with the listed tiles `configs` (roles -> GemvConfig)."""
    gen = torch.Generator(device="cuda").manual_seed(5)
    data = LayerData(MODEL_SHAPES["llama3-8b"], gen, DTYPE)
    rows = []
    for level in levels:
        layer = ListedLayer(data, configs, level)
        dense_s, today_s, listed_s = (data.time(run) for run in (layer.dense, layer.today, layer.listed))
        expected = layer.today(0)[0].double()
        error = float((layer.listed(0).double().view(-1) - expected.view(-1)).norm() / expected.norm())
        rows.append(
            {
                "model": "llama3-8b",
                "sparsity": level,
                "dense_us": _us(dense_s),
                "today_us": _us(today_s),
                "listed_us": _us(listed_s),
                "today_speedup": round(dense_s / today_s, 3),
                "listed_speedup": round(dense_s / listed_s, 3),
                "down_relative_error": round(error, 4),
            }
        )
        print(
            f"listed layer llama3-8b s={level}: dense {_us(dense_s)} us | today x{dense_s / today_s:.2f} | listed "
            f"x{dense_s / listed_s:.2f} (down output off today's by {error:.4f})",
            flush=True,
        )
    return rows


def listed(models=("llama3-8b",)) -> dict:
    """Per shape: the fastest listed tiles at 0.5 (among those that match the reference), and
    their times at each level, beside dense and the shipped streamed kernel; then the producers."""
    gen = torch.Generator(device="cuda").manual_seed(3)
    rows = []
    for model, roles, n_in, n_out in sweep_shapes():
        if model not in models:
            continue
        started = time.perf_counter()
        data = GemvData(n_in, n_out, gen, cap=256)
        at = {level: ListedData(data, level) for level in LEVELS}
        right = [c for c in listed_candidates(n_in, n_out) if all(at[lv].error(c) <= 1e-2 for lv in LEVELS)]
        best = min(right, key=at[0.5].gemv_s)
        for level in LEVELS:
            rows.append(_row(model, roles, data, at, best, level))
            r = rows[-1]
            print(
                f"listed {model} {roles:8s} {n_in}->{n_out} s={level}: dense {r['dense_us']} us | shipped "
                f"x{r['shipped_speedup']:.2f} | list {r['list_us']} us | gemv on a ready list {r['gemv_us']} us "
                f"x{r['gemv_speedup']:.2f} | list + gemv {r['chain_us']} us x{r['chain_speedup']:.2f} "
                f"({len(right)} tiles, {time.perf_counter() - started:.0f} s; best {best})",
                flush=True,
            )
        del data, at
        torch.cuda.empty_cache()
    fields = GemvConfig.__dataclass_fields__
    configs = {r["roles"]: GemvConfig(**{k: r[k] for k in fields}) for r in rows if r["sparsity"] == 0.5}
    layer = listed_layer(configs) if {"qkv", "gate+up", "down"} <= set(configs) else []
    return {"gemv": rows, "producers": producers(), "layer": layer}
