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
