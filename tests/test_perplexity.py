"""Perplexity arithmetic on a tiny model, and the real default model against a random one."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from sponlib.data import load_corpus, load_windows
from sponlib.errors import InvalidArgumentError, NumericalError
from sponlib.models.tiny import tiny_model
from sponlib.perplexity import perplexity


def _hand_computed_ppl(model, ids):
    """exp of the mean cross-entropy, written out from the definition: -log softmax(z)[y]."""
    total, count = 0.0, 0
    with torch.no_grad():
        for window in ids:
            logits = model(window[None]).logits[0].double()  # (L, V)
            for t in range(len(window) - 1):
                z = logits[t]
                total += (torch.log(torch.exp(z - z.max()).sum()) + z.max() - z[window[t + 1]]).item()
                count += 1
    return math.exp(total / count), count


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_matches_hand_computed_cross_entropy(arch):
    model = tiny_model(arch)
    ids = torch.randint(0, model.config.vocab_size, (5, 12))
    expected, count = _hand_computed_ppl(model, ids)
    for batch_size in (1, 2, 5):
        result = perplexity(model, ids, batch_size=batch_size, progress=False)
        assert result.tokens == count == 5 * 11 and result.windows == 5
        assert result.ppl == pytest.approx(expected, rel=1e-5)
        assert result.nll == pytest.approx(math.log(expected), rel=1e-5)


def test_perplexity_reaches_one_on_a_model_that_always_knows():
    model = tiny_model("llama")
    with torch.no_grad():  # make the head predict token id i+1 after i via a huge logit bias
        model.lm_head.weight.zero_()
    ids = torch.zeros(3, 10, dtype=torch.long)
    model.lm_head.bias = torch.nn.Parameter(torch.full((model.config.vocab_size,), -1e4))
    with torch.no_grad():
        model.lm_head.bias[0] = 1e4  # always token 0, and the text is all zeros
    assert perplexity(model, ids, progress=False).ppl == pytest.approx(1.0)


def test_nan_logits_and_bad_arguments_fail_clearly():
    model = tiny_model("llama")
    with torch.no_grad():
        model.lm_head.weight[3, 0] = float("nan")
    with pytest.raises(NumericalError, match="non-finite log-likelihood in window 0"):
        perplexity(model, torch.randint(0, 256, (2, 8)), progress=False)
    with pytest.raises(InvalidArgumentError, match="batch size"):
        perplexity(tiny_model("llama"), torch.randint(0, 256, (2, 8)), batch_size=0, progress=False)
    with pytest.raises(InvalidArgumentError, match="length >= 2"):
        perplexity(tiny_model("llama"), torch.randint(0, 256, (2, 1)), progress=False)


@pytest.mark.slow
def test_default_model_is_a_trained_model(default_model):
    model, tokenizer = default_model
    windows = load_windows(load_corpus("persuasion"), tokenizer, window_len=256, n_windows=4, seed=0)
    trained = perplexity(model, windows, batch_size=4, progress=False).ppl
    torch.manual_seed(0)
    random = AutoModelForCausalLM.from_config(model.config).eval()  # same architecture, fresh weights
    untrained = perplexity(random, windows, batch_size=4, progress=False).ppl
    assert trained < 60, trained  # Austen prose; ~28 measured at 512 tokens
    assert untrained > 10_000, untrained  # about the vocabulary size (49,152) for random weights
