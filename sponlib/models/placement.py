"""Where a model's weights live: one device, or spread by an accelerate `device_map`.

A model loaded with `device_map` (`load_model(..., device_map="auto")`) has its blocks on several
GPUs, the CPU, or offloaded to disk: accelerate hooks move activations between devices and load
offloaded weights only for the duration of their module's forward, leaving them on the "meta"
device otherwise. So `next(model.parameters()).device` says nothing useful; sponlib asks these
helpers instead:

    input_device(model)      where token ids go (the input embedding's execution device)
    execution_device(module) where a module computes (and where its SPON vector must live)
    onloaded(module)         a context in which an offloaded module's weights are real tensors
    model_devices(model)     every device the model computes on (what timing must synchronise)
    placement_record(model)  how the model is spread, for result records
    device_record(device)    what hardware a device is, for result records
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections import Counter

import torch
from torch import nn


def _hook(module: nn.Module):
    return getattr(module, "_hf_hook", None)


def is_offloaded(module: nn.Module) -> bool:
    """True when `module`'s own weights are kept off-device (CPU or disk offload) by accelerate."""
    hook = _hook(module)
    return bool(hook is not None and getattr(hook, "offload", False))


def execution_device(module: nn.Module) -> torch.device:
    """The device `module` computes on: accelerate's execution device for a dispatched module,
    else the device of its first parameter (or the CPU for a module without any)."""
    hook = _hook(module)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    for parameter in module.parameters():
        if parameter.device.type != "meta":
            return parameter.device
    return torch.device("cpu")


def input_device(model: nn.Module) -> torch.device:
    """Where token ids must be sent: the input embedding's execution device."""
    return execution_device(model.get_input_embeddings())


@contextlib.contextmanager
def onloaded(module: nn.Module):
    """Within the block, an offloaded module's weights are real tensors on its execution device
    (a no-op for a module whose weights already are)."""
    if not is_offloaded(module):
        yield module
        return
    from accelerate.utils import align_module_device

    with align_module_device(module):
        yield module


def model_devices(model: nn.Module) -> list[torch.device]:
    """Every device the model computes on, in order of first use."""
    devices = [execution_device(model.get_input_embeddings())]
    for module in model.modules():
        if isinstance(module, nn.Linear):
            device = execution_device(module)
            if device not in devices:
                devices.append(device)
    return devices


def is_sharded(model: nn.Module) -> bool:
    """True when accelerate dispatched the model (a `device_map` was given at load)."""
    return bool(getattr(model, "hf_device_map", None))


def placement_record(model: nn.Module) -> dict:
    """How the model is spread: the device map's modules counted per device, or the one device."""
    device_map = getattr(model, "hf_device_map", None)
    if not device_map:
        return {"devices": [str(input_device(model))]}
    counts = Counter(str(torch.device("cuda", d) if isinstance(d, int) else d) for d in device_map.values())
    return {"devices": [str(d) for d in model_devices(model)], "device_map_modules": dict(counts)}


def synchronize(devices) -> None:
    """Wait for the queued work of every CUDA device in `devices` (timing must not stop early)."""
    for device in devices:
        if device.type == "cuda":
            torch.cuda.synchronize(device)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_record(device: torch.device | str) -> dict:
    """What ran the computation: device type, hardware name, threads."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return {"device": "cuda", "name": torch.cuda.get_device_name(index), "cuda": torch.version.cuda}
    return {
        "device": device.type,
        "name": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
