"""Derive a 70B model's cost, stage by stage, from the 8B scale rehearsal measured on one GPU and
the training-speed record: time ranges, peak memory, and how many GPUs the device map needs.
Nothing runs on a GPU here; the record says what each number was scaled by.

    python benchmarks/scale_extrapolation.py --json data/results/scale_extrapolation_70b.json

How (every ratio is computed from the two configs, built on the meta device, nothing downloaded):
    flops        forward matmul FLOPs per token: 2 x (the decoder's projection weights + the head)
                 + 4 x layers x window x attention width (scores and weighted values, whole window)
    activations  layers x (hidden + intermediate): what each token's elementwise work and saved
                 activations grow with
    bytes        the weights' bytes
A stage bound by compute takes between `activations` and `flops` times its 8B time: the matrix
products grow by the first ratio, the elementwise work (about half of an 8B training step) by the
second. The device map runs the layers one GPU at a time, so more GPUs buy memory, not speed; the
hidden states passed between GPUs (window x hidden x 2 bytes a window) are not counted. Training
memory is the weights, plus the teacher's final states, plus what does not grow with the model
(the head's logits, made 4096 positions at a time; same vocabulary), plus a cost per window in a
pass: the slope between the two largest pass sizes of the eager training-speed rows, x `activations`.
Decoding is not extrapolated (the fused decoder has not run over a device map); the record gives the
bound the weights' bytes set instead: every token reads them all once, one GPU at a time.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from sponlib.records import write_result
from sponlib.spon.distillation import KL_CHUNK

from kernel_shapes import LLAMA3_70B
from scale_rehearsal import SHAPES

WINDOW = 512
BF16_BYTES = 2  # weights and teacher states alike
# stage -> how its 8B time scales: compute (a range), bytes, same, or not extrapolated (None)
STAGE_RULES = {
    "build": None,  # random weights here; a hub model's loading time is the disk's
    "text": "same",
    "calibrate": "compute",
    "train": "compute",
    "evaluate": "compute",
    "export": "bytes",
    "reload": "bytes-to-compute",  # loading the folder, then one text's perplexity
    "decode": None,
}
RULE_WORDS = {
    "same": "the 8B time: it does not depend on the model",
    "compute": "8B time x [activations, flops]: elementwise work grows by the first, matrix products by the second",
    "bytes": "8B time x bytes: writing the weights",
    "bytes-to-compute": "8B time x [bytes, flops]: loading the weights, then one text's perplexity",
    "not extrapolated": "depends on what was not measured (the disk; decoding over a device map)",
}
TARGETS = {"llama3-70b": ("LlamaConfig", LLAMA3_70B)}
HUB_MODELS = {"llama3-70b": "meta-llama/Llama-3.1-70B"}  # what a user would point sponlib at


def describe(config_class: str, fields: dict) -> dict:
    """Parameter counts and per-token costs of a config, from its model built on the meta device."""
    import transformers
    from transformers import AutoModelForCausalLM

    config = getattr(transformers, config_class)(**fields)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    layers = model.get_decoder().layers
    projections = sum(m.weight.numel() for m in layers.modules() if isinstance(m, torch.nn.Linear))
    head = model.get_output_embeddings().weight.numel()
    params = sum(p.numel() for p in model.parameters())
    heads, head_dim = config.num_attention_heads, getattr(config, "head_dim", None)
    attention_width = heads * (head_dim or config.hidden_size // heads)
    n_layers = config.num_hidden_layers
    flops = 2 * (projections + head) + 4 * n_layers * WINDOW * attention_width
    return {
        "parameters_B": round(params / 1e9, 3),
        "weights_GB": round(params * BF16_BYTES / 1e9, 2),
        "layers": n_layers,
        "hidden": config.hidden_size,
        "intermediate": config.intermediate_size,
        "vocab": config.vocab_size,
        "forward_GFLOP_per_token": round(flops / 1e9, 3),
        "activation_units": n_layers * (config.hidden_size + config.intermediate_size),
    }


def window_cost(speed: dict) -> tuple[float, float]:
    """(GB per window in a pass, GB at zero windows) from the eager rows' two largest sizes."""
    rows = sorted(
        (r for r in speed["variants"]["eager"]["sizes"] if "peak_gpu_GB" in r), key=lambda r: r["windows_per_pass"]
    )
    if len(rows) < 2:
        raise SystemExit("the training-speed record needs eager rows at two pass sizes at least")
    small, large = rows[-2], rows[-1]
    slope = (large["peak_gpu_GB"] - small["peak_gpu_GB"]) / (large["windows_per_pass"] - small["windows_per_pass"])
    return slope, large["peak_gpu_GB"] - slope * large["windows_per_pass"]


def gpus_for(gigabytes: float, gpu_gb: float, usable: float) -> int:
    return max(1, math.ceil(gigabytes / (gpu_gb * usable)))


def extrapolate(rehearsal: dict, speed: dict, target: str, gpu_gb: float, usable: float, bandwidth_tbs: float):
    """The record's payload: both models, the ratios, per-stage estimates and the training passes."""
    if rehearsal["shape"] != speed["shape"]:
        raise SystemExit(f"the records are of different shapes ({rehearsal['shape']}, {speed['shape']})")
    source, goal = describe(*SHAPES[rehearsal["shape"]]), describe(*TARGETS[target])
    if source["vocab"] != goal["vocab"]:
        raise SystemExit("the logits' memory is carried over as it is: the two vocabularies must match")
    ratios = {
        "flops": round(goal["forward_GFLOP_per_token"] / source["forward_GFLOP_per_token"], 3),
        "activations": round(goal["activation_units"] / source["activation_units"], 3),
        "bytes": round(goal["weights_GB"] / source["weights_GB"], 3),
    }
    stages_8b, train_8b = rehearsal["stages"], rehearsal["stages"]["train"]
    train_windows = stages_8b["text"]["texts"]["train"]["windows"]

    def teacher_gb(model: dict) -> float:  # (windows, 512, hidden) bf16 final states
        return train_windows * WINDOW * model["hidden"] * BF16_BYTES / 1e9

    per_window, at_zero = window_cost(speed)
    fixed = at_zero - source["weights_GB"] - teacher_gb(source)  # logits chunks, optimiser, workspace
    passes = []
    for windows in (1, 2, 4, 8, 16, 32):
        peak = goal["weights_GB"] + teacher_gb(goal) + fixed + per_window * ratios["activations"] * windows
        passes.append({"windows_per_pass": windows, "peak_GB": round(peak, 1), "gpus": gpus_for(peak, gpu_gb, usable)})

    factors = {  # rule -> (low, high) factors on the 8B time
        "same": (1, 1),
        "compute": (ratios["activations"], ratios["flops"]),
        "bytes": (ratios["bytes"], ratios["bytes"]),
        "bytes-to-compute": (ratios["bytes"], ratios["flops"]),
    }
    stages = {}
    for name, rule in STAGE_RULES.items():
        measured = stages_8b.get(name)
        if measured is None:
            continue
        row = {"rule": rule or "not extrapolated", "source_s": measured["seconds"]}
        low_high = factors.get(rule)
        if low_high:
            row["low_s"], row["high_s"] = (round(measured["seconds"] * r, 1) for r in low_high)
        if rule in ("compute", "bytes-to-compute") and "peak_gpu_GB" in measured and name != "train":
            # what the stage held beyond the weights grows with the activations
            extra = max(0.0, measured["peak_gpu_GB"] - source["weights_GB"]) * ratios["activations"]
            row["peak_GB"] = round(goal["weights_GB"] + extra, 1)
            row["gpus"] = gpus_for(row["peak_GB"], gpu_gb, usable)
        if name == "export":
            before = stages_8b["evaluate"]["host_peak_rss_GB"]
            row["host_GB"] = round(before + (measured["host_peak_rss_GB"] - before) * ratios["bytes"], 1)
            row["folder_GB"] = round(measured["folder_GB"] * ratios["bytes"], 1)
        stages[name] = row
    train_tokens = train_8b["config"]["steps"] * train_8b["config"]["batch_size"] * WINDOW
    stages["train"]["tokens_per_s"] = [
        round(train_tokens / (train_8b["train_s"] * r)) for r in (ratios["flops"], ratios["activations"])
    ]
    estimated = [row for row in stages.values() if "low_s" in row]
    smallest = min((p for p in passes if p["windows_per_pass"] >= 4), key=lambda p: p["gpus"])
    fits = max((p for p in passes if p["gpus"] <= smallest["gpus"]), key=lambda p: p["windows_per_pass"])
    return {
        "note": "derived from the 8B records, not measured: see `rules` for how each stage was scaled",
        "rules": RULE_WORDS,
        "commands": user_commands(target, fits["gpus"], fits["windows_per_pass"], train_8b["config"]),
        "source": {
            "shape": rehearsal["shape"],
            "rehearsal": rehearsal["command"],
            "speed": speed["command"],
            "device": rehearsal["device"],
        },
        "target": target,
        "models": {rehearsal["shape"]: source, target: goal},
        "ratios": ratios,
        "gpu_GB": gpu_gb,
        "usable_share": usable,
        "memory": {
            "per_window_GB": {
                rehearsal["shape"]: round(per_window, 2),
                target: round(per_window * ratios["activations"], 2),
            },
            "teacher_GB": round(teacher_gb(goal), 2),
            "fixed_GB": round(fixed, 2),
            "fixed_is": f"head logits, {KL_CHUNK} positions at a time, optimiser state and workspace: "
            "the same at both sizes",
        },
        "passes": passes,
        "stages": stages,
        "total_s": [round(sum(r["low_s"] for r in estimated), 1), round(sum(r["high_s"] for r in estimated), 1)],
        "decode_bound_tokens_per_s": round(bandwidth_tbs * 1e12 / (goal["weights_GB"] * 1e9), 1),
        "bandwidth_TBs": bandwidth_tbs,
        "suggested": {"gpus": fits["gpus"], "micro_batch": fits["windows_per_pass"]},
    }


def user_commands(target: str, gpus: int, micro_batch: int, config: dict) -> list[str]:
    """What a user would run for `target` on `gpus` GPUs of one machine, at the rehearsal's settings."""
    model = HUB_MODELS[target]
    visible = "CUDA_VISIBLE_DEVICES=" + ",".join(map(str, range(gpus)))
    spread = f"--model {model} --dtype bfloat16 --device-map auto"
    return [
        f"{visible} python -m sponlib calibrate {spread} --out cal70b.safetensors",
        f"{visible} python -m sponlib train {spread} --calibration cal70b.safetensors --sparsity 0.5 "
        f"--steps {config['steps']} --train-batch {config['batch_size']} --micro-batch {micro_batch} "
        "--out spon70b.safetensors",
        f"{visible} python -m sponlib eval {spread} --spon spon70b.safetensors --corpus persuasion --corpus brown",
        f"python -m sponlib export --model {model} --dtype bfloat16 --spon spon70b.safetensors --out llama70b-spon/",
    ]


def build_parser() -> argparse.ArgumentParser:
    """This benchmark's command line (tests parse the commands of its records with it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rehearsal", default="data/results/scale_rehearsal_h200.json", help="8B rehearsal record")
    parser.add_argument("--speed", default="data/results/training_speed_h200.json", help="training-speed record")
    parser.add_argument("--target", choices=sorted(TARGETS), default="llama3-70b", help="config to extrapolate to")
    parser.add_argument("--gpu-gb", type=float, default=141.0, help="memory of one GPU in GB (default 141: an H200)")
    parser.add_argument("--usable", type=float, default=0.9, help="share of it the device map fills (default 0.9)")
    parser.add_argument(
        "--bandwidth-tbs",
        type=float,
        default=4.8,
        help="one GPU's memory bandwidth in TB/s, for the decoding bound (default 4.8: an H200's)",
    )
    parser.add_argument("--json", required=True, help="record to write")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    records = {}
    for name, path in (("rehearsal", args.rehearsal), ("speed", args.speed)):
        try:
            records[name] = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise SystemExit(f"--{name} {path}: cannot read the record ({error})") from None
    payload = extrapolate(
        records["rehearsal"], records["speed"], args.target, args.gpu_gb, args.usable, args.bandwidth_tbs
    )
    write_result(args.json, "scale-extrapolation", payload)
    low, high = payload["total_s"]
    print(f"{args.target}: {low / 60:.0f}-{high / 60:.0f} min in all; passes: {payload['passes']}")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
