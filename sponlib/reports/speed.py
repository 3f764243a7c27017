"""README tables of the speed records: SPON training throughput, dashboard latency, the CPU row
path, the GPU kernels and end-to-end decoding, and training beyond one GPU."""

from __future__ import annotations

from .provenance import run_line


def render_throughput(record: dict) -> str:
    """SPON training tokens/s, sponlib's loop against a plain loop, from spon_throughput_*.json."""
    lines = ["| loop | precision | windows per step | tokens/s | vs plain loop |", "| --- | --- | ---: | ---: | ---: |"]
    for row in record["results"]:
        ratio = row.get("speedup_vs_plain", 1.0)
        lines.append(
            f"| {row['loop']} | {row['precision']} | {row['batch']} | {row['tokens_per_s']:,.0f} | {ratio:.2f} |"
        )
    device = record["device"]
    return (
        "\n".join(lines) + f"\n\n{device['device']} ({device['name']}), teal at {record['sparsity']:g}, "
        f"windows of {record['window_len']} tokens, {record['steps']} timed steps per sponlib row, torch "
        f"{record['versions']['torch']}. Command: `{record['command']}`\n"
    )


def render_widget_latency(record: dict) -> str:
    """Dashboard redraw times after a slider move (benchmarks/widget_latency.py)."""
    lines = ["| dashboard | level | median s | max s | goal | met |", "| --- | --- | ---: | ---: | ---: | --- |"]
    for key, s_ in record["summary"].items():
        dashboard, kind = key.split("/")
        lines.append(
            f"| {dashboard} | {kind} | {s_['median_s']:.3f} | {s_['max_s']:.3f} | < {s_['goal_s']:g} s | "
            f"{'yes' if s_['met'] else 'no'} |"
        )
    probe = record["probe"]
    return (
        "\n".join(lines) + f"\n\nProbe: {probe['windows']} window of {probe['window_len']} tokens of "
        f"{probe['source']}, logit lens on {record['lens_tokens']} tokens, {record['threads']} torch threads. "
        f"A new level with SPON vectors runs two forward passes (masked, then SPON); the work it cannot "
        f"skip, two bare forward passes and two products with the head, took {record['floor_s']:.3f} s in "
        f"the same run.\n\n" + run_line(record)
    )


def render_gemv_cpu(record: dict) -> str:
    """The CPU row path of the sparse GEMV against dense and against itself at s = 0
    (from gemv_cpu.json, benchmarks/sparse_gemv_cpu.py)."""
    lines = [
        "| sparsity | row path vs dense `F.linear`, median | best (shape) | row path vs itself at 0, median | "
        "ideal 1/(1−s) |",
        "| ---: | ---: | --- | ---: | ---: |",
    ]
    for level, s in record["summary"].items():
        lines.append(
            f"| {level} | {s['rows_median_speedup']:.2f} | {s['rows_best_speedup']:.2f} "
            f"({s['rows_best_shape']}) | {s['rows_median_speedup_vs_rows_at_0']:.2f} | {s['ideal_speedup']:.2f} |"
        )
    device = record["device"]
    return (
        "\n".join(lines) + f"\n\nBatch {record['batch']}, {record['dtype']}, {record['threads']} threads on "
        f"{device['name']}, medians of {record['rounds']} interleaved rounds of {record['repeats']} calls, each "
        f"call on a fresh weight copy and input ({len({(r['model'], r['projection']) for r in record['rows']})} "
        f"SmolLM2-135M and Llama-3-8B shapes), torch {record['versions']['torch']}. "
        f"Command: `{record['command']}`\n"
    )


def _pct(x: float) -> str:
    return f"{x:+.1%}"


def render_kernels(record: dict) -> str:
    """The Triton sparse GEMV against cuBLAS: per decoder layer, end-to-end decoding and the
    headline summary (from kernels_h200.json, benchmarks/kernels_h200.py)."""
    summary = record["summary"]
    head = (
        f"Headline on the {summary['gpu']}, sparsity 0.5, Llama-3-8B shapes, bf16: all seven projections of a "
        f"layer {summary['layer_speedup_at_0.5']:.2f}x cuBLAS ({summary['layer_fused_speedup_at_0.5']:.2f}x with "
        f"q/k/v and gate/up fused), {_pct(summary['overhead_at_0'])} time at sparsity 0; batch-1 decoding "
        f"{summary['e2e_speedup_at_0.5']:.2f}x dense ({summary['e2e_fused_speedup_at_0.5']:.2f}x fused) against "
        f"a byte-count bound of {summary['e2e_bound_at_0.5']:.2f}x, {_pct(summary['e2e_overhead_at_0'])} time "
        "at sparsity 0.\n\n"
    )
    lines = [
        "| model | sparsity | measured | dense µs | sparse µs | vs cuBLAS | fused µs | fused vs cuBLAS | "
        "ideal 1/(1−s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in record["layer"]:
        lines.append(
            f"| {r['model']} layer | {r['sparsity']} | {r['measured_sparsity']:.3f} | {r['dense_us']:.1f} | "
            f"{r['sparse_us']:.1f} | {r['speedup']:.2f} | {r['fused_us']:.1f} | {r['fused_speedup']:.2f} | "
            f"{r['ideal']:.2f} |"
        )
    gemv = [
        "| projection | in → out | sparsity | dense µs | dense GB/s | sparse µs | sparse GB/s | vs cuBLAS | "
        "share of 1/(1−s) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in record["gemv"]:
        if r["sparsity"] in (0.0, 0.5, 0.7):
            gemv.append(
                f"| {r['model']} {r['roles']} | {r['in']} → {r['out']} | {r['sparsity']} | {r['dense_us']:.2f} | "
                f"{r['dense_GBps']:.0f} | {r['sparse_us']:.2f} | {r['sparse_GBps']:.0f} | {r['speedup']:.2f} | "
                f"{r['share_of_ideal']:.0%} |"
            )
    e2e = [
        "| model | variant | sparsity | measured | tokens/s | GB/s | vs dense | byte bound |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, run in record.get("e2e", {}).items():
        for r in run["rows"]:
            if r["variant"] == "dense":
                e2e.append(f"| {name} | dense | 0 | | {r['tokens_per_s']:.1f} | {r['GBps']:.0f} | 1.00 | |")
            elif r["sparsity"] in (0.0, 0.25, 0.5, 0.7):
                e2e.append(
                    f"| {name} | {r['variant']} | {r['sparsity']} | {r['measured_sparsity']:.3f} | "
                    f"{r['tokens_per_s']:.1f} | {r['GBps']:.0f} | {r['speedup']:.2f} | {r['bound']:.2f} |"
                )
    runs = record["runs"]
    first = runs[0]
    return (
        head + "\n".join(gemv) + "\n\n" + "\n".join(lines) + "\n\n" + "\n".join(e2e) + "\n\n"
        f"{first['gpu']}, torch {first['torch']}, Triton {first['triton']}, CUDA {first['cuda']}, bf16. Layer rows: "
        "each call reads its own weight copy and a fresh N(0, 1) input, the calls captured in one CUDA graph. "
        "Decoding: batch 1, greedy, static KV cache of "
        f'{next(iter(record["e2e"].values()))["max_len"]} tokens, torch.compile(mode="reduce-overhead") for '
        "dense and sparse alike; the SmolLM2 rows use the shipped calibration with SPON folded into biases. "
        "Commands: " + "; ".join(f"`{r['command']}`" for r in runs) + "\n"
    )


def render_multigpu(record: dict) -> str:
    """SPON training on 1 GPU, 2 data-parallel GPUs and one model spread over 2 GPUs, and how far
    their vectors land from the 1-GPU run's (multigpu*.json); evaluation on 1 and 2 processes."""
    lines = [
        "| setup | windows per step | devices | training tokens/s | vs 1 GPU | validation KL, mask → SPON "
        "| ‖Δα‖ / ‖α‖ vs 1 GPU | cosine |",
        "| --- | ---: | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for row in record["training"]:
        devices = (
            ", ".join(row["placement"]["devices"])
            if row["processes"] == 1
            else (f"{row['processes']} processes, one GPU each")
        )
        difference = row["vs_1gpu"]
        lines.append(
            f"| {row['setup']} | {row['batch']} | {devices} | {row['tokens_per_s']:,.0f} | "
            f"{row['speedup_vs_1gpu']:.2f} | {row['val_kl_base']:.4f} → {row['val_kl_best']:.4f} | "
            f"{difference['relative_l2']:.2g} | {difference['cosine']:.6f} |"
        )
    arguments = " ".join(record["training_arguments"]) or "default settings"
    text = (
        "\n".join(lines) + f"\n\n{record['gpus'][0]} ×{len(record['gpus'])}, {record['model']['name']}, teal at "
        f"{record['sparsity']:g}, {record['steps']} steps at lr {record['lr']:g}, {record['train_windows']} training "
        f"windows of {record['window_len']} tokens, precision {record['precision']}, {arguments}; NCCL_NVLS_ENABLE="
        f"{record['environment']['NCCL_NVLS_ENABLE']}. Command: `{record['command']}`\n"
    )
    if record["evaluation"]:
        lines = [
            "| eval | windows per pass | perplexity | vs the first row | measured sparsity |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for row in record["evaluation"]:
            lines.append(
                f"| {row['processes']} process{'es' if row['processes'] > 1 else ''} | {row['batch_size']} | "
                f"{row['ppl']:.4f} | {row['ppl_relative_to_first']:+.1e} | {row['measured']:.5f} |"
            )
        text += (
            "\n" + "\n".join(lines) + f"\n\nThe 1-GPU vectors above, evaluated on all "
            f"{record['evaluation'][0]['windows']} Persuasion windows.\n"
        )
    return text
