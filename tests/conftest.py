"""Shared fixtures: the real default model (loaded once per session), a tiny model folder and a
byte tokenizer. The test tiers are in the repository's top conftest.py."""

import pytest
import torch

from sponlib.models import load_model, prepare_model


@pytest.fixture(scope="session")
def default_model():
    """The real SmolLM2-135M in float32 on CPU, with its tokenizer."""
    return load_model("smollm2-135m", dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def default_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(prepare_model("smollm2-135m"))


class ByteTokenizer:
    """One token per UTF-8 byte: a transparent tokenizer for window arithmetic tests."""

    def __call__(self, text, add_special_tokens=False, verbose=False):
        return {"input_ids": list(text.encode("utf-8"))}


@pytest.fixture
def byte_tokenizer():
    return ByteTokenizer()


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama saved as a Hugging Face folder with the real SmolLM2 tokenizer, so that
    CLI plumbing runs in seconds on real text. Never a source of results."""
    from transformers import AutoTokenizer

    from sponlib.models.tiny import tiny_model

    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", vocab_size=49152).save_pretrained(folder)
    AutoTokenizer.from_pretrained(prepare_model("smollm2-135m")).save_pretrained(folder)
    return folder
