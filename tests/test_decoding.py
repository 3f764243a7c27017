"""`StaticDecoder` on the CPU, in eager mode: greedy decoding with a static KV cache equals Hugging
Face's `generate`, a swapped-in sparse model decodes like the dense model under the Sparsifier
hooks, and bad modes, prompts and lengths are refused clearly. The captured modes ("compile",
"graph") and the timing need CUDA; tests/test_kernels_gpu.py and the benchmark run those."""

import copy

import pytest
import torch

from sponlib.errors import InvalidArgumentError
from sponlib.kernels import StaticDecoder, sparse_linears, swap_in
from sponlib.models.tiny import tiny_model
from sponlib.sparsity import Sparsifier, Thresholds, quantile_thresholds


def _model(dtype=torch.float32):
    """The tiny Llama with weights 10x the default scale: at the default (0.02) attention is
    nearly uniform and the next token hangs almost only on the current one, so a decoder with
    wrong positions or a stale cache would still match; at 0.2 the context decides."""
    return tiny_model("llama", initializer_range=0.2).to(dtype)


def _prompt(tokens: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (1, tokens), generator=torch.Generator().manual_seed(seed))  # (1, T)


def _hf_greedy(model, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Hugging Face's own greedy continuation (dynamic cache): the independent reference."""
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False)
    assert out.shape[1] == ids.shape[1] + new_tokens, "stopped at an end-of-sequence token: pick another prompt"
    return out[:, ids.shape[1] :]  # (1, new_tokens)


def _calibrated(model, score: str, quantile: float) -> Thresholds:
    return quantile_thresholds(model, _prompt(32, seed=2), score, quantile)


def test_eager_decoding_equals_hugging_face_greedy_generation():
    model = _model()
    decoder = StaticDecoder(model, max_len=64, mode="eager")
    for tokens, seed in ((6, 1), (11, 3), (6, 1)):  # one cache for all: each prompt empties it first
        ids = _prompt(tokens, seed)
        got = decoder.generate(ids, 12)
        assert got.shape == (1, 12)
        assert torch.equal(got, _hf_greedy(model, ids, 12))


@pytest.mark.parametrize("score", ["teal", "wina"])
def test_swapped_in_model_decodes_like_the_hooked_dense_model(score):
    """Float64, so that no argmax turns on the last bit of a logit (the two models compute the
    same function, in another order)."""
    model = _model(torch.float64)
    dense_model = copy.deepcopy(model)
    thresholds = _calibrated(model, score, 0.5)
    ids = _prompt(6)
    # a fresh decoder (and cache) for each model
    dense = StaticDecoder(dense_model, max_len=64, mode="eager").generate(ids, 12)
    with Sparsifier(dense_model, thresholds):
        hooked = StaticDecoder(dense_model, max_len=64, mode="eager").generate(ids, 12)
    swap_in(model, thresholds)
    assert len(sparse_linears(model)) == 14
    sparse = StaticDecoder(model, max_len=64, mode="eager").generate(ids, 12)
    assert torch.equal(sparse, hooked)
    # at 50% sparsity the continuation leaves the dense one: equal tokens could not hide a
    # sparse model that ignored its thresholds
    assert not torch.equal(hooked, dense)


def test_bad_modes_are_refused_clearly():
    model = _model()
    with pytest.raises(InvalidArgumentError, match="unknown decoding mode"):
        StaticDecoder(model, max_len=32, mode="fast")
    for mode in ("compile", "graph"):  # both capture CUDA graphs
        with pytest.raises(InvalidArgumentError, match="eager"):
            StaticDecoder(model, max_len=32, mode=mode)


@pytest.mark.parametrize("shape", [(2, 4), (4,), (1, 0), (1, 2, 3)], ids=["batch-of-2", "1d", "empty", "3d"])
def test_a_prompt_that_is_not_one_sequence_is_refused(shape):
    decoder = StaticDecoder(_model(), max_len=32, mode="eager")
    with pytest.raises(InvalidArgumentError, match=r"\(1, T\)"):
        decoder.generate(torch.zeros(shape, dtype=torch.long), 4)


def test_prompts_that_overflow_the_cache_are_refused():
    decoder = StaticDecoder(_model(), max_len=16, mode="eager")
    decoder.generate(_prompt(10), 6)  # exactly fills the cache
    with pytest.raises(InvalidArgumentError, match="max_len"):
        decoder.generate(_prompt(10), 7)
    with pytest.raises(InvalidArgumentError, match="does not fit"):
        decoder.prefill(_prompt(16))
    with pytest.raises(InvalidArgumentError, match="at least 1"):
        decoder.generate(_prompt(4), 0)


def test_timing_needs_a_gpu():
    decoder = StaticDecoder(_model(), max_len=64, mode="eager")
    with pytest.raises(InvalidArgumentError, match="GPU"):
        decoder.seconds_per_token(_prompt(4), 8)
