"""Load causal LMs by name or path: `model, tokenizer = load_model(name_or_path, dtype=..., device=...)`.

Three kinds of source:
- a known name (sponlib.models.gguf): "smollm2-135m", the offline default, or "gemma3-270m";
- any local Hugging Face folder;
- any hub id, when the hub is reachable (HF_HUB_OFFLINE unset).

A model too large for one device is spread over several by an accelerate `device_map`
(sponlib.models.placement says where each module computes).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..errors import InvalidArgumentError, UnknownModelError, hub_offline_hint
from .gguf import CACHE_MARKER, DEFAULT_MODEL, KNOWN_MODELS, prepare_model, unknown_model_message

# The names a dtype goes by. float64 is for numbers that must not move with the CPU: a masked model
# amplifies float32's last bit (an input near its threshold falls on either side).
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float64": torch.float64,
    "fp64": torch.float64,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise InvalidArgumentError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' is CUDA when available, else CPU; anything else is checked to exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise InvalidArgumentError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError("device 'cuda' asked for, but this torch build sees no CUDA GPU; use 'cpu'")
    return device


DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def check_device_map(device_map) -> None:
    """A device map is one of accelerate's strategies or a dict of module name -> device."""
    if isinstance(device_map, str) and device_map not in DEVICE_MAP_STRATEGIES:
        raise InvalidArgumentError(
            f"unknown device map {device_map!r}: use one of "
            f"{', '.join(DEVICE_MAP_STRATEGIES)} or a dict of module name -> device"
        )
    if not isinstance(device_map, (str, dict)) or (isinstance(device_map, dict) and not device_map):
        raise InvalidArgumentError("a device map is a strategy name or a non-empty dict of module -> device")


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    *,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    offload_folder: str | os.PathLike | None = None,
):
    """Load a causal LM and its tokenizer: `model, tokenizer = load_model("smollm2-135m")`.

    The model comes back in eval mode with gradients off for its weights (sponlib never trains
    them; SPON vectors are separate parameters). `model.sponlib_source` records where it came
    from, for result files.

    `device_map` spreads a model too large for one device over several, through accelerate
    (instead of `device`): a strategy ("auto", "balanced", "sequential", ...) bounded by
    `max_memory` ({0: "70GiB", 1: "70GiB", "cpu": "200GiB"}), or an explicit dict of module name
    -> device (0, "cuda:1", "cpu" or "disk"; `offload_folder` holds what goes to disk).
    sponlib's hooks, SPON vectors and training follow each module to where it computes
    (sponlib.models.placement).
    """
    torch_dtype = resolve_dtype(dtype)
    if device_map is not None:
        check_device_map(device_map)
        if str(device) != "cpu":
            raise InvalidArgumentError(f"give a device ({device}) or a device map ({device_map}), not both")
        placement = {"device_map": device_map, "max_memory": max_memory, "offload_folder": offload_folder}
        placement = {k: str(v) if isinstance(v, os.PathLike) else v for k, v in placement.items() if v is not None}
    else:
        if max_memory is not None or offload_folder is not None:
            raise InvalidArgumentError("max_memory and offload_folder only apply with a device_map")
        torch_device, placement = resolve_device(device), {}
    name = str(name_or_path)
    source: dict = {"name": name}
    if name in KNOWN_MODELS:
        folder = prepare_model(name)
        source.update(json.loads((folder / CACHE_MARKER).read_text()))
        target = str(folder)
    elif Path(name).expanduser().is_dir():
        target = str(Path(name).expanduser().resolve())
        source["path"] = target
    elif Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UnknownModelError(
            f"{name!r} is not a folder holding a Hugging Face model. " + unknown_model_message(name)
        )
    else:
        target = name  # a hub id
        source["hub_id"] = name
    try:
        tokenizer = AutoTokenizer.from_pretrained(target)
        model = AutoModelForCausalLM.from_pretrained(target, dtype=torch_dtype, **placement)
    except OSError as e:
        raise UnknownModelError(
            f"could not load {name!r}: {e}.{hub_offline_hint()} " + unknown_model_message(name)
        ) from e
    except (ValueError, KeyError, RuntimeError, AssertionError) as e:
        if not placement:
            raise
        # torch's or accelerate's own words: an unknown device, a GPU this machine lacks, ...
        raise InvalidArgumentError(f"could not place {name!r} with device map {device_map!r}: {e}") from None
    if not placement:
        model.to(torch_device)
    model.eval().requires_grad_(False)
    model.sponlib_source = source
    return model, tokenizer
