"""End-to-end part of benchmarks/kernels_h200.py: batch-1 greedy decoding, dense against sparse
(seven launches per block, then q/k/v and gate/up fused), each compiled with CUDA graphs through
sponlib.kernels.StaticDecoder, on a Llama-3-8B-shaped model with random bf16 weights and on the
default model with its shipped calibration and SPON vectors.

Hugging Face's own fast path is timed beside them (`hf-generate`): generate() with a static KV
cache of the same length, which transformers compiles itself on a GPU; the dense StaticDecoder is
the baseline only if it is at least as fast.

With a TEAL checkout (`e2e_teal`, part `e2e-teal`), the same model in float16 decodes dense, with
sponlib's fused path and with TEAL's kernel in every projection (teal_contender.TealLinear).

The byte-count bound counts the bytes a token must read (all weights but the embedding table, of
which one row, and the whole static KV cache) and which of them sparsity removes.
"""

from __future__ import annotations

import inspect
import time

import torch

from kernel_shapes import DTYPE, E2E_LEVELS, LLAMA3_8B, random_model


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


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hf_generate_seconds_per_token(model, prompt: torch.Tensor, tokens: int, max_len: int) -> tuple[float, bool]:
    """Greedy decoding through transformers' generate() with a static KV cache of `max_len`
    tokens, as its docs advise for speed (on a GPU it compiles the forward step itself: torch.compile,
    mode reduce-overhead). Seconds per token from two runs `tokens` new tokens apart, after a
    warm-up run; and whether generate() compiled."""
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=max_len)
    # newer transformers name the argument `cache`, older ones `past_key_values`
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def run(new_tokens: int) -> float:
        cache.reset()
        _synchronize(prompt.device)
        started = time.perf_counter()
        out = model.generate(
            prompt,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            **{cache_arg: cache},
        )
        _synchronize(prompt.device)
        assert out.shape[1] == prompt.shape[1] + new_tokens, "generate() stopped early"
        return time.perf_counter() - started

    run(16 + tokens)  # compilation and warm-up
    short = run(16)
    return (run(16 + tokens) - short) / tokens, getattr(model, "_compiled_call", None) is not None


def _hf_row(model, prompt: torch.Tensor, tokens: int, max_len: int, dense_s: float) -> dict:
    """The hf-generate row; an error is recorded and printed rather than ending the part."""
    try:
        seconds, compiled = hf_generate_seconds_per_token(model, prompt, tokens, max_len)
    except Exception as error:  # noqa: BLE001 - a baseline that fails is reported, the part goes on
        print(f"e2e hf-generate failed: {error!r}", flush=True)
        return {"variant": "hf-generate", "sparsity": 0.0, "error": repr(error)}
    print(f"e2e hf-generate: {1 / seconds:8.1f} tokens/s (compiled: {compiled}); dense is x{seconds / dense_s:.2f}")
    return {
        "variant": "hf-generate",
        "sparsity": 0.0,
        "tokens_per_s": round(1 / seconds, 1),
        "ms_per_token": round(seconds * 1e3, 3),
        "compiled": compiled,
        "dense_vs_this": round(seconds / dense_s, 3),
    }


def e2e(
    model,
    name: str,
    thresholds_by_level: dict,
    prompt: torch.Tensor,
    alphas_by_level=None,
    max_len: int = 512,
    tokens: int = 256,
    fused_only: bool = False,
    listed: bool = False,
) -> dict:
    """Dense, then sparse at each level, batch-1 greedy decoding compiled with CUDA graphs
    (`fused_only`: the fused path only, and no hf-generate row; `listed`: also the fused groups
    reading the lists their norms write, sponlib.kernels.listing)."""
    from sponlib.kernels import StaticDecoder, set_thresholds, swap_in, swap_out
    from sponlib.kernels.listing import list_in, list_out

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
    if not fused_only:
        rows.append(_hf_row(model, prompt, tokens, max_len, dense_s))
    torch._dynamo.reset()
    first_alphas = alphas_by_level.get(levels[0]) or (next(iter(alphas_by_level.values()), None))
    # seven launches per block, then q/k/v and gate/up fused, then (with `listed`) listing norms
    modes = ((True, False),) if fused_only else ((False, False), (True, False))
    for fuse, listing in modes + (((True, True),) if listed else ()):
        variant = ("sparse+spon" if alphas_by_level else "sparse") + (
            "-listed" if listing else "-fused" if fuse else ""
        )
        swap_in(model, thresholds_by_level[levels[0]], first_alphas, check=False, fuse=fuse)
        if listing:
            list_in(model)
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
        list_out(model)
        swap_out(model)
    return {
        "model": name,
        "max_len": max_len,
        "prompt_tokens": int(prompt.shape[1]),
        "timed_tokens": tokens,
        "weights_GB": round(bytes_by_level[levels[0]][0] / 1e9, 3),
        "rows": rows,
    }


def _llama_model(levels, dtype: torch.dtype = DTYPE):
    """A Llama-3-8B-shaped model with seeded random weights, and its thresholds per level from
    sponlib.sparsity.calibrate on random tokens."""
    from transformers import LlamaConfig

    from sponlib.sparsity import calibrate

    model = random_model(LlamaConfig(**LLAMA3_8B), "cuda", dtype)
    config = model.config
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
    return model, thresholds, prompt


def e2e_llama(levels=E2E_LEVELS, tokens: int = 256, listed: bool = False) -> dict:
    """Llama-3-8B shapes, random bf16 weights, thresholds from sponlib.sparsity.calibrate on random tokens."""
    model, thresholds, prompt = _llama_model(levels)
    result = e2e(model, "llama3-8b-shaped (random bf16 weights)", thresholds, prompt, tokens=tokens, listed=listed)
    del model
    torch.cuda.empty_cache()
    return result


def e2e_teal(teal, levels=(0.0, 0.5, 0.7), tokens: int = 256, max_len: int = 512) -> dict:
    """TEAL's kernel in the same decoder (float16, its only dtype): the Llama-3-8B-shaped model dense,
    with sponlib's fused path, and with TEAL's kernel in every projection (seven launches per block,
    one compilation per level: its thresholds are constants of the graph)."""
    from sponlib.kernels import StaticDecoder

    from teal_contender import teal_swap_in, teal_swap_out

    model, thresholds, prompt = _llama_model(levels, torch.float16)
    result = e2e(model, "llama3-8b-shaped (random fp16 weights)", thresholds, prompt, tokens=tokens, fused_only=True)
    dense_s = next(r for r in result["rows"] if r["variant"] == "dense")["ms_per_token"] / 1e3
    ours = {r["sparsity"]: r for r in result["rows"] if r["variant"] == "sparse-fused"}
    for level in levels:
        teal_swap_in(model, thresholds[level], teal)
        seconds = StaticDecoder(model, max_len, mode="compile").seconds_per_token(prompt, tokens)
        torch._dynamo.reset()
        teal_swap_out(model)
        row = {k: ours[level][k] for k in ("sparsity", "measured_sparsity", "bound")}
        row |= {"variant": "teal", "tokens_per_s": round(1 / seconds, 1), "ms_per_token": round(seconds * 1e3, 3)}
        versus = seconds * ours[level]["tokens_per_s"]  # TEAL's time over sponlib's: > 1, sponlib faster
        row |= {"speedup": round(dense_s / seconds, 3), "sponlib_fused_vs_teal": round(versus, 3)}
        row["GBps"] = round(ours[level]["GBps"] / versus, 1)  # the same bytes in TEAL's time
        result["rows"].append(row)
        print(
            f"e2e teal s={level:<4}: {row['tokens_per_s']:8.1f} tokens/s x{row['speedup']:.2f} dense; sponlib fused "
            f"x{row['sponlib_fused_vs_teal']:.2f} of TEAL",
            flush=True,
        )
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
