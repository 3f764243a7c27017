"""The scale rehearsal's table (benchmarks/scale_rehearsal.py): per stage of a user's path, its
wall time and peak memory, and what the stage measured."""

from __future__ import annotations

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
    missing = [name for name in STAGE_NAMES if name not in stages and name != "profile"]
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
