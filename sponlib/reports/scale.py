"""The scale rehearsal's table (benchmarks/scale_rehearsal.py): per stage of a user's path, its
wall time and peak memory, and what the stage measured."""

from __future__ import annotations

TRAIN_TARGET = 20e3  # tokens/s on one GPU at 8B, the rehearsal's throughput target
STAGE_NAMES = {
    "build": "build from the config",
    "text": "tokenize the corpora",
    "calibrate": "calibrate",
    "train": "train SPON",
    "evaluate": "perplexity dense / mask / SPON",
    "profile": "profile 3 training steps",
    "export": "fold and export",
    "reload": "reload with transformers",
    "decode": "batch-1 decoding",
}


def _measured(name: str, stage: dict) -> str:
    """What a stage measured, in a few words."""
    if name == "calibrate":
        meta = stage["meta"]
        return f"{meta['windows']} × {meta['window_len']} windows, refined at {len(meta['refine_levels'])} levels"
    if name == "train":
        config = stage["config"]
        text = (
            f"{config['steps']} steps × {config['batch_size']} windows, {stage['tokens_per_s']:,.0f} tokens/s, "
            f"{stage.get('forward_batch', config['micro_batch'])} windows a pass"
        )
        # (step, windows a pass) each; the first records, before passes were halved by
        # sponlib, kept the micro-batch tried (0: the whole step)
        failed = [
            f[1] if isinstance(f, list) else f["micro_batch"] or config["batch_size"] for f in stage["out_of_memory"]
        ]
        if failed:
            text += f" (out of memory at {', '.join(map(str, failed))} windows a pass)"
        return text
    if name == "export":
        return "refused: the config cannot take the biases" if "refused" in stage else f"{stage['folder_GB']} GB folder"
    if name == "reload":
        return f"perplexity {stage['relative_gap']:+.2%} from the SPON model's"
    if name == "decode":
        return (
            f"{stage['dense_tokens_per_s']:.0f} → {stage['sparse_fused_tokens_per_s']:.0f} tokens/s "
            f"(×{stage['speedup']:.2f}), compilation included in the time"
        )
    if name == "profile":
        top = stage["ops"][0]
        return f"most time: {top['op']} ({top['share']:.0%})"
    return ""


def render_rehearsal(record: dict) -> str:
    stages = record["stages"]
    lines = [
        "| stage | seconds | peak GPU GB | peak reserved GB | what it measured |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for name, stage in stages.items():
        gpu = f"{stage['peak_gpu_GB']:.1f}" if "peak_gpu_GB" in stage else ""
        reserved = f"{stage['peak_reserved_GB']:.1f}" if "peak_reserved_GB" in stage else ""
        label, seconds = STAGE_NAMES.get(name, name), stage["seconds"]
        lines.append(f"| {label} | {seconds:.1f} | {gpu} | {reserved} | {_measured(name, stage)} |")
    skipped = {"profile"} | ({"reload"} if "refused" in stages.get("export", {}) else set())  # not run by design
    missing = [name for name in STAGE_NAMES if name not in stages and name not in skipped]
    device, versions = record["device"], record["versions"]
    footer = (
        f"\n{record['shape']} shape, {record.get('parameters_B', '?')}B parameters, random {record['dtype']} weights "
        f"({record['note']}); {device['device']} ({device['name']}), torch {versions['torch']}, transformers "
        f"{versions['transformers']}."
    )
    if "total_s" in record:
        footer += f" Whole run: {record['total_s']:.0f} s."
    if missing:
        footer += f" The run stopped before: {', '.join(missing)}."
    return "\n".join(lines) + footer + f" Command: `{record['command']}`\n"


def render_training_speed(record: dict) -> str:
    """Training throughput per variant and windows per pass, side by side with eager and with the
    ceiling the step's matrix products set (where the record has it)."""
    ceiling = record.get("ceiling")
    lines = [
        "| variant | windows a pass | tokens/s | vs eager | of the ceiling | peak GPU GB | variant's wall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    eager = {
        row["windows_per_pass"]: row.get("tokens_per_s") for row in record["variants"].get("eager", {}).get("sizes", [])
    }
    for variant, result in record["variants"].items():
        for row in result.get("sizes", []):
            if row.get("out_of_memory"):
                lines.append(f"| {variant} | {row['windows_per_pass']} | out of memory | | | | |")
                continue
            base = eager.get(row["windows_per_pass"])
            ratio = f"×{row['tokens_per_s'] / base:.2f}" if base else ""
            share = f"{row['tokens_per_s'] / ceiling['tokens_per_s']:.0%}" if ceiling else ""
            peak = f"{row['peak_gpu_GB']:.1f}" if "peak_gpu_GB" in row else ""  # none on a CPU
            lines.append(
                f"| {variant} | {row['windows_per_pass']} | {row['tokens_per_s']:,.0f} | {ratio} | {share} | "
                f"{peak} | {result['wall_s']:.0f} |"
            )
        if "error" in result:  # after the sizes it finished, if any
            lines.append(f"| {variant} | | {result['error']} | | | | {result['wall_s']:.0f} |")
    device, versions = record["device"], record["versions"]
    text = "\n".join(lines) + (
        f"\n{record['shape']} shape, random {record['dtype']} weights, teal at {record['level']}, "
        f"{record['train_batch']} windows of 512 tokens a step; {device['name']}, torch {versions['torch']}. "
        "A variant's wall time includes its compiling."
    )
    if ceiling:
        share = TRAIN_TARGET / ceiling["tokens_per_s"]
        text += (
            f" The ceiling: {ceiling['tokens_per_s']:,.0f} tokens/s, a step's matrix products alone "
            f"({ceiling['GFLOP_per_token']:.1f} GFLOP a token) at the {ceiling['matmul_TFLOPs']:.0f} TFLOP/s "
            f"they reach alone at its shapes ({ceiling['tokens']} rows); the target, {TRAIN_TARGET:,.0f} tokens/s, "
            f"is {share:.0%} of it."
        )
    mask = record.get("mask_op")
    if mask:
        rows, width = mask["shape"]
        text += (
            f" The {mask['dtype']} mask on a ({rows}, {width}) input, forward and backward: "
            f"{mask['compare_multiply_ms']:.2f} ms compared in float32 and multiplied, "
            f"{mask['hardshrink_ms']:.2f} ms as one hardshrink."
        )
    return text + f" Command: `{record['command']}`\n"


def _span(low: float, high: float) -> str:
    """Seconds as minutes, a range where the two differ."""
    low_min, high_min = low / 60, high / 60
    if round(low_min, 1) == round(high_min, 1):
        return f"{low_min:.1f}"
    return f"{low_min:.1f}–{high_min:.1f}"


def render_extrapolation(record: dict) -> str:
    """A 70B model's cost per stage, derived from the 8B records; the training passes' memory; the
    commands a user would run."""
    source, target = record["source"]["shape"], record["target"]
    gpus = record["suggested"]["gpus"]
    lines = [
        f"| stage | {source}, measured s | {target}, estimated min | peak GB ({target}) | scaled by |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for name, stage in record["stages"].items():
        estimate = _span(stage["low_s"], stage["high_s"]) if "low_s" in stage else "not estimated"
        peak = f"{stage['peak_GB']:.0f} ({stage['gpus']} GPUs)" if "peak_GB" in stage else ""
        if name == "train":  # its throughput, and the peak of the pass size suggested
            estimate += f" ({stage['tokens_per_s'][0]:,}–{stage['tokens_per_s'][1]:,} tokens/s)"
            micro = record["suggested"]["micro_batch"]
            chosen = next(p for p in record["passes"] if p["windows_per_pass"] == micro)
            peak = f"{chosen['peak_GB']:.0f} ({chosen['gpus']} GPUs), {micro} windows a pass"
        if name == "export":
            peak = f"{stage['host_GB']:.0f} host RAM, {stage['folder_GB']:.0f} GB folder"
        lines.append(
            f"| {STAGE_NAMES.get(name, name)} | {stage['source_s']:.1f} | {estimate} | {peak} | {stage['rule']} |"
        )
    low, high = record["total_s"]
    ratios = record["ratios"]
    passes = "; ".join(
        f"{p['windows_per_pass']} window{'s' * (p['windows_per_pass'] > 1)}: {p['peak_GB']:.0f} GB on {p['gpus']}"
        for p in record["passes"]
    )
    text = "\n".join(lines) + (
        f"\nIn all about {_span(low, high)} minutes on {gpus} GPUs of {record['gpu_GB']:.0f} GB "
        f"(weights {record['models'][target]['weights_GB']:.0f} GB). Ratios {target} / {source}: "
        f"FLOPs ×{ratios['flops']:.2f}, activations ×{ratios['activations']:.2f}, bytes ×{ratios['bytes']:.2f}. "
        f"Training's peak by windows a pass (GPUs filled to {record['usable_share']:.0%}): {passes}. "
        f"Decoding is bounded by the weights' bytes at {record['decode_bound_tokens_per_s']:.0f} tokens/s dense "
        f"({record['bandwidth_TBs']} TB/s). Command: `{record['command']}`\n"
    )
    return text + "\n```bash\n" + "\n".join(record["commands"]) + "\n```\n"


def render_targets(record: dict) -> str:
    """The full rehearsal against its targets on one GPU: calibration time, training throughput
    and peak memory, the whole run's time, and whether every stage ran without a flag."""
    stages = record["stages"]
    calibrate, train = stages["calibrate"], stages["train"]
    peak = max(stage.get("peak_gpu_GB", 0.0) for stage in stages.values())
    halved = [f[1] for f in train["out_of_memory"]]
    ran = [name for name in STAGE_NAMES if name in stages]
    unattended = "refused" not in stages.get("export", {}) and len(ran) == len(STAGE_NAMES) - 1  # all but profile
    how = f"all {len(ran)} stages ran at the defaults"
    if halved:
        how += f"; passes of {', '.join(map(str, halved))} windows ran out of memory and were halved without a flag"
    rows = [
        (
            f"calibration, {calibrate['meta']['windows']} × {calibrate['meta']['window_len']} windows, "
            f"{len(calibrate['meta']['refine_levels'])} levels",
            "≤ 5 min",
            f"{calibrate['seconds']:.0f} s",
            calibrate["seconds"] <= 300,
        ),
        (
            "SPON training throughput",
            "≥ 20k tokens/s",
            f"{train['tokens_per_s']:,.0f} tokens/s",
            train["tokens_per_s"] >= TRAIN_TARGET,
        ),
        ("peak GPU memory, any stage", "≤ 80 GB", f"{peak:.1f} GB", peak <= 80),
        ("whole rehearsal", "≤ 30 min", f"{record['total_s'] / 60:.1f} min", record["total_s"] <= 1800),
        ("nothing fails or needs a flag a user would not know", "", how, unattended),
    ]
    lines = ["| measure | target | measured | met |", "| --- | --- | --- | --- |"]
    lines += [
        f"| {measure} | {target} | {value} | {'yes' if met else '**no**'} |" for measure, target, value, met in rows
    ]
    limit = f", its memory capped at {record['memory_limit_GB']:g} GB" if "memory_limit_GB" in record else ""
    return (
        "\n".join(lines)
        + f"\n{record['shape']} shape on one {record['device']['name']}{limit}. Command: `{record['command']}`\n"
    )
