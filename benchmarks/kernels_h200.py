"""Benchmark: the Triton sparse GEMV against cuBLAS dense, per projection, per decoder layer and
in batch-1 decoding end to end, on one GPU. Prints a table per part and writes one JSON record.

    python benchmarks/kernels_h200.py --json data/results/kernels_h200.json
    python benchmarks/kernels_h200.py --parts e2e-smollm2 --json data/results/kernels_h200.json  # adds a part

Parts (default: ceilings,gemv,layer,e2e-llama,e2e-smollm2; `sweep` on demand):
    ceilings     the device's copy bandwidth (bytes read + written), the ceiling for GB/s
    gemv         one projection, Llama-3-8B and SmolLM2 shapes, sparsity 0 to 0.9
    layer        the seven projections of one decoder layer: dense, sparse, sparse with q/k/v
                 and gate/up fused into one launch each
    e2e-llama    greedy decoding of a Llama-3-8B-shaped model with random bf16 weights (built from
                 a config, nothing downloaded), thresholds calibrated by sponlib on random tokens
    e2e-smollm2  the same for the default model, with its shipped calibration and SPON vectors
    sweep        tile shapes of the kernel per projection shape (what gemv_config is read from)

How kernels are timed: every call reads its own copy of the weights and its own fresh input
(copies together at least 4x the L2 cache), the calls of one measurement are captured in one
CUDA graph so that launch gaps are those of a captured model, and the graph is replayed several
times; the median replay over the number of calls is the time per call. Dense is F.linear on
the (out, in) weight a model holds (cuBLAS). Sparse inputs are N(0, 1) with τ at the quantile
that zeroes a share s; the measured share is reported, and the ideal gain is 1/(1 − s).

End to end: sponlib.kernels.StaticDecoder, static KV cache, torch.compile(mode="reduce-
overhead") for dense and sparse alike; the byte-count bound counts the bytes a token must read
(all weights but the embedding table, of which one row, and the whole static KV cache) and which
of them sparsity removes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sponlib.models import device_record
from sponlib.records import library_versions, write_result

LEVELS = (0.0, 0.25, 0.4, 0.5, 0.6, 0.7, 0.9)
E2E_LEVELS = (0.0, 0.25, 0.4, 0.5, 0.6, 0.7)
PARTS = ("ceilings", "gemv", "layer", "e2e-llama", "e2e-smollm2")
DTYPE = torch.bfloat16
LLAMA3_8B = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    tie_word_embeddings=False,
)
SMOLLM2 = dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3)


def layer_shapes(
    hidden_size: int, intermediate_size: int, num_attention_heads: int, num_key_value_heads: int, **_
) -> dict[str, tuple[int, int]]:
    """role -> (in, out) of the seven projections of a Llama-style block, from config fields."""
    kv = hidden_size // num_attention_heads * num_key_value_heads
    return {
        "q": (hidden_size, hidden_size),
        "k": (hidden_size, kv),
        "v": (hidden_size, kv),
        "o": (hidden_size, hidden_size),
        "gate": (hidden_size, intermediate_size),
        "up": (hidden_size, intermediate_size),
        "down": (intermediate_size, hidden_size),
    }


MODEL_SHAPES = {"llama3-8b": layer_shapes(**LLAMA3_8B), "smollm2-135m": layer_shapes(**SMOLLM2)}


def gemv_shapes() -> list[tuple[str, str, int, int]]:
    """(model, roles, in, out) for each distinct projection shape."""
    rows = []
    for model, shapes in MODEL_SHAPES.items():
        seen: dict[tuple[int, int], list[str]] = {}
        for role, shape in shapes.items():
            seen.setdefault(shape, []).append(role)
        rows += [(model, "/".join(roles), k, n) for (k, n), roles in seen.items()]
    return rows


# ------------------------------------------------------------------ timing


def l2_bytes() -> int:
    return getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 60 * 2**20)


def copies_for(bytes_per_call: int, floor: int = 2, cap: int = 1024) -> int:
    """Enough copies that one pass over them is at least 4x the L2 cache."""
    return max(floor, min(cap, math.ceil(4 * l2_bytes() / bytes_per_call)))


def graph_time(calls: list, replays: int = 15) -> float:
    """Seconds per call: `calls` (zero-argument callables) captured in one CUDA graph, replayed
    `replays` times after warm-up; the median replay over len(calls)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside capture: compilation, allocator, cuBLAS handles
        for call in calls[:3]:
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000.0)
    del graph
    return statistics.median(times) / len(calls)


def tau_for(sparsity: float) -> float:
    """τ with P(|x| <= τ) = s for x ~ N(0, 1)."""
    return float(math.sqrt(2.0) * torch.erfinv(torch.tensor(sparsity, dtype=torch.float64)))


# ------------------------------------------------------------------ parts


def ceilings() -> dict:
    """Device-to-device copy of 4 GiB, counting bytes read and written."""
    source = torch.randn(2**30, device="cuda")  # 4 GiB of float32
    target = torch.empty_like(source)
    seconds = graph_time([lambda: target.copy_(source)] * 4, replays=10)
    return {"copy_GBps": round(2 * 4 * 2**30 / seconds / 1e9, 1)}


class GemvData:
    """Weight copies (both layouts) and fresh inputs of one projection shape, and the timing of
    dense and sparse calls over them at one sparsity."""

    def __init__(self, n_in: int, n_out: int, gen: torch.Generator, cap: int = 1024):
        from sponlib.kernels import input_major, new_workspace

        self.n_in, self.n_out = n_in, n_out
        self.weight_bytes = n_in * n_out * 2
        self.copies = copies_for(self.weight_bytes, cap=cap)
        self.workspace = new_workspace(n_out, "cuda")  # the calls run one after another
        self.weights = [
            torch.randn(n_out, n_in, device="cuda", dtype=DTYPE, generator=gen) for _ in range(self.copies)
        ]  # (out, in) each
        self.weights_t = [input_major(w) for w in self.weights]  # (in, out) each
        self.xs = [
            torch.randn(1, n_in, device="cuda", dtype=DTYPE, generator=gen) for _ in range(self.copies)
        ]  # (1, in) each
        self.dense_s = graph_time([lambda x=x, w=w: F.linear(x, w) for x, w in zip(self.xs, self.weights)])

    def sparse(self, level: float, config=None) -> dict:
        """Time the sparse calls at sparsity `level` (through the op, or the kernel with `config`)."""
        from sponlib.kernels import sparse_gemv
        from sponlib.kernels.triton_gemv import triton_sparse_gemv

        tau = torch.tensor([tau_for(level)], device="cuda")
        achieved = float(torch.stack([(x.float().abs() <= tau).float().mean() for x in self.xs]).mean())
        if config is None:
            calls = [
                lambda x=x, w=w: sparse_gemv(x, w, tau, workspace=self.workspace)
                for x, w in zip(self.xs, self.weights_t)
            ]
        else:
            calls = [
                lambda x=x, w=w: triton_sparse_gemv(x.view(-1), w, tau, config=config, workspace=self.workspace)
                for x, w in zip(self.xs, self.weights_t)
            ]
        sparse_s = graph_time(calls)
        vectors = 2 * (self.n_in + self.n_out)  # x read, y written
        ideal = 1 / (1 - achieved)
        return {
            "in": self.n_in,
            "out": self.n_out,
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


def gemv(levels=LEVELS) -> list[dict]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for model, roles, n_in, n_out in gemv_shapes():
        data = GemvData(n_in, n_out, gen)
        for level in levels:
            row = {"model": model, "roles": roles, **data.sparse(level)}
            rows.append(row)
            print(
                f"gemv {model:13s} {roles:8s} {n_in:6d}->{n_out:<6d} s={level:<4} dense {row['dense_us']:8.2f} us "
                f"{row['dense_GBps']:7.1f} GB/s | sparse {row['sparse_us']:8.2f} us {row['sparse_GBps']:7.1f} GB/s"
                f" | x{row['speedup']:.2f} of ideal x{row['ideal']:.2f} ({row['share_of_ideal']:.0%})",
                flush=True,
            )
        del data
        torch.cuda.empty_cache()
    return rows


def layer(levels=LEVELS) -> list[dict]:
    """One decoder layer's seven projections per call; each call its own layer copy and inputs.
    Sparse: seven launches; fused: q/k/v and gate/up each one launch on concatenated weights."""
    from sponlib.kernels import input_major, new_workspace, sparse_gemv

    gen = torch.Generator(device="cuda").manual_seed(1)
    reads = {"q": "attn", "k": "attn", "v": "attn", "o": "o", "gate": "mlp", "up": "mlp", "down": "down"}
    groups = {"qkv": ("q", "k", "v"), "o": ("o",), "gateup": ("gate", "up"), "down": ("down",)}
    rows = []
    for model, shapes in MODEL_SHAPES.items():
        layer_bytes = sum(k * n * 2 for k, n in shapes.values())
        copies = copies_for(layer_bytes, floor=3, cap=256)
        dense = [
            {r: torch.randn(n, k, device="cuda", dtype=DTYPE, generator=gen) for r, (k, n) in shapes.items()}
            for _ in range(copies)
        ]  # role -> (out, in)
        separate = [{r: input_major(w) for r, w in c.items()} for c in dense]  # role -> (in, out)
        fused = [
            {g: torch.cat([c[r] for r in roles], dim=1) for g, roles in groups.items()} for c in separate
        ]  # group -> (in, sum of outs)
        segments = {g: [shapes[r][1] for r in roles] for g, roles in groups.items()}
        widths = {"attn": shapes["q"][0], "o": shapes["o"][0], "mlp": shapes["gate"][0], "down": shapes["down"][0]}
        inputs = [
            {src: torch.randn(1, k, device="cuda", dtype=DTYPE, generator=gen) for src, k in widths.items()}
            for _ in range(copies)
        ]  # source -> (1, in)

        def dense_layer(w, x):
            for role, source in reads.items():
                F.linear(x[source], w[role])

        spaces = {
            name: new_workspace(n, "cuda")
            for name, n in [(r, shapes[r][1]) for r in shapes] + [(g, sum(segments[g])) for g in groups]
        }

        def separate_layer(w, x, taus):
            for role, source in reads.items():
                sparse_gemv(x[source], w[role], taus[1], workspace=spaces[role])

        def fused_layer(w, x, taus):
            for group, roles in groups.items():
                sparse_gemv(
                    x[reads[roles[0]]], w[group], taus[len(roles)], segments=segments[group], workspace=spaces[group]
                )

        dense_s = graph_time([lambda w=w, x=x: dense_layer(w, x) for w, x in zip(dense, inputs)], replays=10)
        for level in levels:
            tau = tau_for(level)
            taus = {g: torch.full((g,), tau, device="cuda") for g in (1, 2, 3)}  # one per segment
            separate_s = graph_time(
                [lambda w=w, x=x: separate_layer(w, x, taus) for w, x in zip(separate, inputs)], replays=10
            )
            fused_s = graph_time([lambda w=w, x=x: fused_layer(w, x, taus) for w, x in zip(fused, inputs)], replays=10)
            zeroed = sum(
                float((x[s].float().abs() <= tau).float().mean()) * shapes[r][0] * shapes[r][1]
                for x in inputs
                for r, s in reads.items()
            )
            achieved = zeroed / (layer_bytes / 2 * copies)  # weighted by the weights each input gates
            ideal = 1 / (1 - achieved)
            row = {
                "model": model,
                "sparsity": level,
                "measured_sparsity": round(achieved, 4),
                "copies": copies,
                "weight_MB": round(layer_bytes / 1e6, 1),
                "dense_us": round(dense_s * 1e6, 2),
                "sparse_us": round(separate_s * 1e6, 2),
                "fused_us": round(fused_s * 1e6, 2),
                "dense_GBps": round(layer_bytes / dense_s / 1e9, 1),
                "sparse_GBps": round((1 - achieved) * layer_bytes / separate_s / 1e9, 1),
                "speedup": round(dense_s / separate_s, 3),
                "fused_speedup": round(dense_s / fused_s, 3),
                "ideal": round(ideal, 3),
                "share_of_ideal": round(dense_s / separate_s / ideal, 3),
            }
            rows.append(row)
            print(
                f"layer {model:13s} s={level:<4} dense {row['dense_us']:8.1f} us | sparse {row['sparse_us']:8.1f} us "
                f"x{row['speedup']:.2f} | fused {row['fused_us']:8.1f} us x{row['fused_speedup']:.2f} "
                f"| ideal x{row['ideal']:.2f}",
                flush=True,
            )
        del dense, separate, fused, inputs
        torch.cuda.empty_cache()
    return rows


def sweep_shapes() -> list[tuple[str, str, int, int]]:
    """The projection shapes, and the fused q/k/v and gate/up shapes."""
    fused = []
    for model, shapes in MODEL_SHAPES.items():
        fused.append((model, "qkv", shapes["q"][0], sum(shapes[r][1] for r in ("q", "k", "v"))))
        fused.append((model, "gate+up", shapes["gate"][0], 2 * shapes["gate"][1]))
    return gemv_shapes() + fused


def _write_configs(chosen: list[dict]) -> None:
    from sponlib.io import atomic_write_json
    from sponlib.kernels.tiles import config_file

    path = config_file(torch.cuda.get_device_name(0))
    path.parent.mkdir(exist_ok=True)
    atomic_write_json(
        path,
        {
            "gpu": torch.cuda.get_device_name(0),
            "written_by": "python benchmarks/kernels_h200.py --parts sweep --write-configs",
            "created": time.strftime("%Y-%m-%d"),
            "versions": library_versions(),
            "selection": "fastest time(s=0) + time(s=0.5); bf16; N(0, 1) inputs",
            "configs": chosen,
        },
    )
    print(f"wrote {path}", flush=True)


def sweep(write_configs: bool) -> list[dict]:
    """Tiles per shape at s = 0 and 0.5, split-K summed by atomics; then the best tiles once more
    with partial sums and a second kernel instead. The best by time(0) + time(0.5) goes into
    sponlib/kernels/configs/<gpu>.json with `write_configs`."""
    import triton

    from sponlib.kernels.tiles import GemvConfig

    gen = torch.Generator(device="cuda").manual_seed(2)
    rows, chosen = [], []
    for model, roles, n_in, n_out in sweep_shapes():
        data = GemvData(n_in, n_out, gen, cap=256)
        candidates = []
        for block_n in (64, 128, 256):
            for block_k in (32, 64):
                for programs in (264, 1056):
                    tiles = triton.cdiv(n_out, block_n)
                    slices = max(1, min(triton.cdiv(n_in, block_k), programs // tiles))
                    k_per = triton.cdiv(triton.cdiv(n_in, slices), block_k) * block_k
                    for warps in (4, 8) if block_n * block_k >= 8192 else (4,):
                        for variant in ({}, {"prefetch": True}, {"compact": True}):
                            candidates.append(GemvConfig(block_n, block_k, k_per, warps, 1, atomic=True, **variant))
        timed = []
        for config in dict.fromkeys(candidates):  # programs=1 and few tiles can repeat a config
            at = {level: data.sparse(level, config) for level in (0.0, 0.5)}
            timed.append((at[0.0]["sparse_us"] + at[0.5]["sparse_us"], config, at))
        timed.sort(key=lambda t: t[0])
        best = timed[0][1]
        partials = GemvConfig(**{**best.__dict__, "atomic": False})
        if best.split(n_in) > 1:
            at = {level: data.sparse(level, partials) for level in (0.0, 0.5)}
            timed.append((at[0.0]["sparse_us"] + at[0.5]["sparse_us"], partials, at))
        for _, config, at in timed:
            rows += [
                {"model": model, "roles": roles, **config.__dict__, "split": config.split(n_in), **r}
                for r in at.values()
            ]
        winner = min(timed, key=lambda t: t[0])
        config, at = winner[1], winner[2]
        chosen.append(
            {
                "in": n_in,
                "out": n_out,
                "roles": f"{model} {roles}",
                **config.__dict__,
                "us_at_0": at[0.0]["sparse_us"],
                "us_at_0.5": at[0.5]["sparse_us"],
                "dense_us": at[0.0]["dense_us"],
            }
        )
        print(
            f"sweep {model} {roles} {n_in}->{n_out}: {config} split {config.split(n_in)}: "
            f"{at[0.0]['sparse_us']} / {at[0.5]['sparse_us']} us at s=0 / 0.5 (dense {at[0.0]['dense_us']} us)",
            flush=True,
        )
        del data
        torch.cuda.empty_cache()
        if write_configs:  # after every shape, so that an interrupted sweep keeps what it found
            _write_configs(chosen)
    return rows


# ------------------------------------------------------------------ end to end


def decode_bytes(model, sparsity_by_name: dict[str, float], max_len: int) -> tuple[float, float]:
    """Bytes one decoding step reads: (dense, sparse) for the model's projections' measured
    sparsity. All parameters except the embedding table (one row of it), plus the static KV cache."""
    from sponlib.models import iter_projections

    config = model.config
    projections = {p.name: p.module.weight.numel() * p.module.weight.element_size() for p in iter_projections(model)}
    embedding = model.get_input_embeddings().weight
    tied = model.get_output_embeddings().weight.data_ptr() == embedding.data_ptr()
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    other = total - sum(projections.values()) - embedding.numel() * embedding.element_size() * (0 if tied else 1)
    other += embedding.shape[1] * embedding.element_size()  # the one embedding row
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_cache = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * max_len * embedding.element_size()
    dense = sum(projections.values()) + other + kv_cache
    sparse = sum(b * (1 - sparsity_by_name.get(n, 0.0)) for n, b in projections.items()) + other + kv_cache
    return float(dense), float(sparse)


def measured_sparsity(model, thresholds, prompt: torch.Tensor, max_len: int, alphas=None, tokens: int = 16) -> dict:
    """Per projection, the share of inputs zeroed while decoding `tokens` tokens eagerly."""
    from sponlib.kernels import StaticDecoder
    from sponlib.sparsity import Sparsifier

    decoder = StaticDecoder(model, max_len, mode="eager")
    with Sparsifier(model, thresholds, check=False, alphas=alphas) as sp:
        token = decoder.prefill(prompt)
        sp.reset_stats()  # the decoding steps only, not the prompt
        position = torch.tensor([prompt.shape[1]], device=prompt.device)
        for _ in range(tokens):
            token = decoder.step(token, position)
            position += 1
        return {"by_projection": sp.measured(), **sp.summary()}


def e2e(
    model,
    name: str,
    thresholds_by_level: dict,
    prompt: torch.Tensor,
    alphas_by_level=None,
    max_len: int = 512,
    tokens: int = 256,
) -> dict:
    """Dense, then sparse at each level, batch-1 greedy decoding compiled with CUDA graphs."""
    from sponlib.kernels import StaticDecoder, set_thresholds, swap_in, swap_out

    alphas_by_level = alphas_by_level or {}
    levels = sorted(thresholds_by_level)
    measured = {
        level: measured_sparsity(model, thresholds_by_level[level], prompt, max_len, alphas_by_level.get(level))
        for level in levels
    }
    bytes_by_level = {level: decode_bytes(model, measured[level]["by_projection"], max_len) for level in levels}
    started = time.perf_counter()
    dense_s = StaticDecoder(model, max_len, mode="compile").seconds_per_token(prompt, tokens)
    compile_dense = time.perf_counter() - started
    torch._dynamo.reset()
    dense_bytes = bytes_by_level[levels[0]][0]
    rows = [
        {
            "variant": "dense",
            "sparsity": 0.0,
            "tokens_per_s": round(1 / dense_s, 1),
            "ms_per_token": round(dense_s * 1e3, 3),
            "GBps": round(dense_bytes / dense_s / 1e9, 1),
        }
    ]
    print(
        f"e2e {name} dense: {1 / dense_s:8.1f} tokens/s {dense_bytes / dense_s / 1e9:7.1f} GB/s "
        f"(compile + warm-up {compile_dense:.0f} s)",
        flush=True,
    )
    first_alphas = alphas_by_level.get(levels[0]) or (next(iter(alphas_by_level.values()), None))
    for fuse in (False, True):  # seven launches per block, then q/k/v and gate/up fused
        variant = ("sparse+spon" if alphas_by_level else "sparse") + ("-fused" if fuse else "")
        swap_in(model, thresholds_by_level[levels[0]], first_alphas, check=False, fuse=fuse)
        decoder = StaticDecoder(model, max_len, mode="compile")
        for level in levels:
            set_thresholds(model, thresholds_by_level[level], alphas_by_level.get(level))
            seconds = decoder.seconds_per_token(prompt, tokens)
            dense_b, sparse_b = bytes_by_level[level]
            row = {
                "variant": variant,
                "sparsity": level,
                "measured_sparsity": round(measured[level]["weighted"], 4),
                "tokens_per_s": round(1 / seconds, 1),
                "ms_per_token": round(seconds * 1e3, 3),
                "GBps": round(sparse_b / seconds / 1e9, 1),
                "speedup": round(dense_s / seconds, 3),
                "bound": round(dense_b / sparse_b, 3),
                "share_of_bound": round(dense_s / seconds / (dense_b / sparse_b), 3),
            }
            rows.append(row)
            print(
                f"e2e {name} {variant} s={level:<4} (measured {row['measured_sparsity']:.3f}): "
                f"{row['tokens_per_s']:8.1f} tokens/s {row['GBps']:7.1f} GB/s x{row['speedup']:.2f} "
                f"of bound x{row['bound']:.2f}",
                flush=True,
            )
        del decoder
        torch._dynamo.reset()
        swap_out(model)
    return {
        "model": name,
        "max_len": max_len,
        "prompt_tokens": int(prompt.shape[1]),
        "timed_tokens": tokens,
        "weights_GB": round(bytes_by_level[levels[0]][0] / 1e9, 3),
        "rows": rows,
    }


def e2e_llama(levels=E2E_LEVELS, tokens: int = 256) -> dict:
    """Llama-3-8B shapes, random bf16 weights, thresholds from sponlib.sparsity.calibrate on random tokens."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from sponlib.sparsity import calibrate

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**LLAMA3_8B), dtype=DTYPE).eval()
    config = model.config
    with torch.no_grad():  # seeded N(0, 0.02) weights, unit norms, whatever the library's init did
        for name, param in model.named_parameters():
            param.fill_(1.0) if name.endswith("norm.weight") else param.normal_(0.0, 0.02)
    model.requires_grad_(False)
    ids = torch.randint(0, config.vocab_size, (8, 128), device="cuda")
    calibration = calibrate(
        model,
        ids,
        scores=("teal",),
        refine_windows=8,
        refine_levels=[lv for lv in levels if lv > 0],
        batch_size=8,
        progress=False,
    )
    thresholds = {level: calibration.thresholds(level, "teal") for level in levels}
    prompt = torch.randint(0, config.vocab_size, (1, 64), device="cuda")
    result = e2e(model, "llama3-8b-shaped (random bf16 weights)", thresholds, prompt, tokens=tokens)
    del model
    torch.cuda.empty_cache()
    return result


def e2e_smollm2(levels=E2E_LEVELS, tokens: int = 256) -> dict:
    """The default model, bf16, shipped calibration and SPON vectors (teal) folded into biases."""
    from sponlib.artifacts import shipped_calibration, shipped_spon
    from sponlib.data import load_corpus, load_windows
    from sponlib.models import load_model

    model, tokenizer = load_model("smollm2-135m", dtype="bfloat16", device="cuda")
    model.requires_grad_(False)
    calibration = shipped_calibration(model)
    spon = shipped_spon(model, "teal")
    thresholds = {0.0: calibration.thresholds(0.0, "teal")} if 0.0 in levels else {}
    alphas = {}
    for level in levels:
        if level > 0 and ("teal", level) in spon:
            thresholds[level], level_alphas = spon[("teal", level)]
            alphas[level] = {n: a.to("cuda") for n, a in level_alphas.items()}
    zero = {n: torch.zeros_like(a) for n, a in next(iter(alphas.values())).items()}
    alphas.setdefault(0.0, zero)
    prompt = load_windows(load_corpus("persuasion"), tokenizer, 64, 1, seed=0).ids[:1].to("cuda")  # (1, 64)
    result = e2e(model, "smollm2-135m", thresholds, prompt, alphas, tokens=tokens)
    del model
    torch.cuda.empty_cache()
    return result


# ------------------------------------------------------------------ record


def summarise(record: dict) -> dict:
    def at(rows, level, key, **match):
        for r in rows:
            if r.get("sparsity") == level and all(r.get(k) == v for k, v in match.items()):
                return r[key]
        return None

    summary = {"gpu": torch.cuda.get_device_name(0)}
    layers = record.get("layer", [])
    if layers:
        summary["layer_speedup_at_0.5"] = at(layers, 0.5, "speedup", model="llama3-8b")
        summary["layer_fused_speedup_at_0.5"] = at(layers, 0.5, "fused_speedup", model="llama3-8b")
        summary["overhead_at_0"] = round(1 / at(layers, 0.0, "speedup", model="llama3-8b") - 1, 4)
    llama = record.get("e2e", {}).get("llama3-8b")
    if llama:
        summary["e2e_speedup_at_0.5"] = at(llama["rows"], 0.5, "speedup", variant="sparse")
        summary["e2e_fused_speedup_at_0.5"] = at(llama["rows"], 0.5, "speedup", variant="sparse-fused")
        summary["e2e_bound_at_0.5"] = at(llama["rows"], 0.5, "bound", variant="sparse")
        summary["e2e_overhead_at_0"] = round(1 / at(llama["rows"], 0.0, "speedup", variant="sparse") - 1, 4)
    gemvs = record.get("gemv", [])
    if gemvs:
        summary["gemv_overhead_at_0_max"] = round(
            max(r["sparse_us"] / r["dense_us"] - 1 for r in gemvs if r["sparsity"] == 0.0), 4
        )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {', '.join(PARTS)}, sweep")
    parser.add_argument("--json", required=True, help="record to write; parts already in it are kept unless rerun")
    parser.add_argument("--tokens", type=int, default=256, help="decoding steps timed per variant")
    parser.add_argument(
        "--write-configs",
        action="store_true",
        help="with the sweep: write the fastest tiles to sponlib/kernels/configs/<gpu>.json",
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("kernels_h200.py: no CUDA device; this benchmark needs a GPU (the CPU one is sparse_gemv_cpu.py)")
        raise SystemExit(0)
    parts = args.parts.split(",")
    unknown = set(parts) - set(PARTS) - {"sweep"}
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}")
    path = Path(args.json)
    previous = json.loads(path.read_text()) if path.is_file() else {}
    record = {k: previous[k] for k in ("ceilings", "gemv", "layer", "e2e", "sweep", "runs") if k in previous}
    import triton

    run = {
        "parts": parts,
        "command": " ".join(["python", *os.sys.argv]),
        "triton": triton.__version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0),
        "device": device_record("cuda"),
        "versions": library_versions(),
        "dtype": str(DTYPE),
    }
    started = time.perf_counter()
    if "ceilings" in parts:
        record["ceilings"] = ceilings()
        print(f"copy bandwidth {record['ceilings']['copy_GBps']} GB/s", flush=True)
    if "sweep" in parts:
        record["sweep"] = sweep(args.write_configs)
    if "gemv" in parts:
        record["gemv"] = gemv()
    if "layer" in parts:
        record["layer"] = layer()
    if "e2e-llama" in parts:
        record.setdefault("e2e", {})["llama3-8b"] = e2e_llama(tokens=args.tokens)
    if "e2e-smollm2" in parts:
        record.setdefault("e2e", {})["smollm2-135m"] = e2e_smollm2(tokens=args.tokens)
    run["elapsed_s"] = round(time.perf_counter() - started, 1)
    record["runs"] = [r for r in record.get("runs", []) if not set(r["parts"]) <= set(parts)] + [run]
    record["summary"] = summarise(record)
    write_result(
        path,
        "kernels",
        {k: record[k] for k in ("summary", "ceilings", "gemv", "layer", "e2e", "sweep", "runs") if k in record},
        device="cuda",
        dtype=DTYPE,
    )
    print(json.dumps(record["summary"], indent=1))


if __name__ == "__main__":
    main()
