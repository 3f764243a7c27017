"""SPON: the vectors in the sparsifier, folding into biases, files, training (resume, never worse
on validation), export as a plain checkpoint. Tiny random models: plumbing, not results."""

import json
import os
import subprocess
import sys

import pytest
import torch

from sponlib.errors import CorruptFileError, FingerprintError, InvalidArgumentError, UnsupportedArchitectureError
from sponlib.models import final_hidden, head_logits, iter_projections
from sponlib.models.tiny import TINY_ARCHITECTURES, tiny_model
from sponlib.sparsity import Sparsifier, Thresholds, calibrate
from sponlib.spon import (
    SponVectors,
    TrainConfig,
    fold_and_export,
    kl_to_teacher,
    load_spon,
    save_spon,
    thresholds_path,
    train_spon,
)
from sponlib.spon.export import THRESHOLDS_FILE, cpu_copy


def _ids(n, length=32, seed=1):
    return torch.randint(0, 256, (n, length), generator=torch.Generator().manual_seed(seed))


def _setup(arch="llama", level=0.5, method="teal", **overrides):
    """A tiny model, thresholds at `level` and random (non-zero) vectors for every projection."""
    model = tiny_model(arch, **overrides)
    thresholds = calibrate(model, _ids(8), refine_levels=(level,), progress=False).thresholds(level, method)
    vectors = SponVectors.zeros(model)
    generator = torch.Generator().manual_seed(2)
    for name, alpha in vectors.alphas.items():
        alpha.copy_(0.3 * torch.randn(alpha.shape, generator=generator))
    return model, thresholds, vectors


def _logits(model, thresholds, ids, alphas=None):
    with torch.no_grad(), Sparsifier(model, thresholds, alphas=alphas):
        return model(ids).logits


def test_vectors_add_after_the_mask():
    model, thresholds, vectors = _setup()
    seen = {}
    q = next(iter_projections(model))
    handle = q.module.register_forward_pre_hook(lambda m, a: seen.setdefault("raw", a[0]))  # before the mask
    with torch.no_grad(), Sparsifier(model, thresholds, alphas=vectors.alphas):
        q_handle = q.module.register_forward_hook(lambda m, a, o: seen.setdefault("out", o))
        model(_ids(1, 16))
        q_handle.remove()
    handle.remove()
    x = seen["raw"]  # (1, 16, in)
    expected = (x * (x.abs() > thresholds.taus[q.name]) + vectors.alphas[q.name]) @ q.module.weight.T
    torch.testing.assert_close(seen["out"], expected)


def test_parameter_count_and_share():
    model, _, vectors = _setup()
    per_block = sum(p.in_features for p in iter_projections(model)) // len(model.model.layers)
    assert vectors.parameter_count() == per_block * len(model.model.layers)
    total = sum(p.numel() for p in model.parameters())
    assert vectors.share_of(model) == pytest.approx(vectors.parameter_count() / total)
    assert SponVectors.zeros(model, roles=("down",)).parameter_count() == 48 * 2
    with pytest.raises(InvalidArgumentError, match="subset of q, k, v"):
        SponVectors.zeros(model, roles=("ffn",))


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_folded_biases_give_the_spon_logits(arch):
    model, thresholds, vectors = _setup(arch)
    ids = _ids(2, 24, seed=3)
    spon = _logits(model, thresholds, ids, vectors.alphas)
    plain = _logits(model, thresholds, ids)
    assert (spon - plain).abs().max() > 1e-2  # the vectors matter
    vectors.fold_into(model)
    for p in iter_projections(model):
        assert p.module.bias is not None
    torch.testing.assert_close(_logits(model, thresholds, ids), spon, atol=2e-5, rtol=1e-5)


def test_folding_adds_to_existing_biases():
    model, thresholds, vectors = _setup("qwen2")  # q/k/v come with biases
    q = next(iter_projections(model)).module
    before = q.bias.clone()
    vectors.fold_into(model)
    name = next(iter_projections(model)).name
    torch.testing.assert_close(q.bias, before + q.weight @ vectors.alphas[name])


def test_save_and_load_round_trip(tmp_path):
    model, thresholds, vectors = _setup()
    vectors.meta["training"] = {"lr": 0.01, "val_kl_best": 0.5}
    path = tmp_path / "spon-teal-0.5.safetensors"
    save_spon(vectors, thresholds, path)
    assert thresholds_path(path).name == "spon-teal-0.5.thresholds.json"
    loaded, loaded_thresholds = load_spon(path, model)
    for name, alpha in vectors.alphas.items():
        torch.testing.assert_close(loaded.alphas[name], alpha)
    assert loaded_thresholds.taus == thresholds.taus
    meta = loaded.meta
    assert (meta["method"], meta["target"], meta["training"]["val_kl_best"]) == ("teal", 0.5, 0.5)
    assert meta["fingerprint"]["weights"] and len(meta["thresholds"]["sha256"]) == 64
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # atomic writes leave nothing behind


def test_bad_spon_files_give_clear_errors(tmp_path):
    model, thresholds, vectors = _setup()
    path = tmp_path / "spon.safetensors"
    save_spon(vectors, thresholds, path)
    with pytest.raises(FingerprintError, match="differ"):
        load_spon(path, tiny_model("llama", seed=1))  # same shapes, other weights
    with pytest.raises(FingerprintError):
        load_spon(path, tiny_model("qwen3"))
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        load_spon(tmp_path / "nothing.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match="not a complete sponlib SPON file"):
        SponVectors.load(truncated)
    other = thresholds_path(path)
    data = json.loads(other.read_text())
    data["taus"][next(iter(data["taus"]))] *= 2
    other.write_text(json.dumps(data))
    with pytest.raises(InvalidArgumentError, match="not the thresholds file"):
        load_spon(path, model)
    vectors.alphas[next(iter(vectors.alphas))][0] = float("nan")
    vectors.save(tmp_path / "nan.safetensors")
    with pytest.raises(CorruptFileError, match="NaN"):
        SponVectors.load(tmp_path / "nan.safetensors", model)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_teacher_logits_from_cached_states_equal_the_model(arch):
    overrides = {"final_logit_softcapping": 5.0} if arch == "gemma3_text" else {}
    model = tiny_model(arch, **overrides)
    ids = _ids(2)
    with torch.no_grad():
        torch.testing.assert_close(head_logits(model, final_hidden(model, ids)), model(ids).logits)
        hidden = final_hidden(model, ids).flatten(0, 1)  # (N, d)
        into = torch.full((hidden.shape[0], model.config.vocab_size), float("nan"))
        assert head_logits(model, hidden, out=into) is into
        assert torch.equal(into, head_logits(model, hidden))  # the same product, written in place


def test_kl_is_zero_for_equal_logits_and_positive_otherwise():
    logits = torch.randn(2, 5, 11)
    assert kl_to_teacher(logits, logits).abs() < 1e-6
    assert kl_to_teacher(logits, logits.flip(-1)) > 0.01


def test_train_config_refuses_bad_settings():
    for bad in (
        {"steps": 0},
        {"lr": -1.0},
        {"lr": float("nan")},
        {"warmup": 1.5},
        {"precision": "fp8"},
        {"roles": ("x",)},
        {"checkpoint_every": -1},
        {"micro_batch": -2},
    ):
        with pytest.raises(InvalidArgumentError):
            TrainConfig(**bad)
    config = TrainConfig(steps=100, lr=1.0, warmup=0.1)
    assert config.lr_at(0) == pytest.approx(0.1) and config.lr_at(9) == pytest.approx(1.0)
    assert config.lr_at(99) < 0.01


@pytest.fixture(scope="module")
def trained():
    """A tiny model, its thresholds and a short training run with validation every 2 steps."""
    model, thresholds, _ = _setup()
    config = TrainConfig(steps=8, batch_size=4, lr=0.003, eval_every=2, checkpoint_every=2)
    vectors, _ = train_spon(model, thresholds, _ids(12), _ids(4, seed=9), config, progress=False)
    return model, thresholds, config, vectors


def test_training_records_its_run_and_never_ends_worse_than_the_mask(trained):
    model, thresholds, config, vectors = trained
    t = vectors.meta["training"]
    assert t["steps_done"] == 8 and t["train_tokens"] == 8 * 4 * 32 and t["tokens_per_s"] > 0
    assert [s for s, _ in t["history"]["val"]] == [0, 2, 4, 6, 8] and len(t["history"]["loss"]) == 8
    assert t["val_kl_best"] == min(kl for _, kl in t["history"]["val"]) <= t["val_kl_base"]
    assert dict(t["history"]["val"])[t["best_step"]] == t["val_kl_best"]
    assert all(a.device.type == "cpu" and not a.requires_grad for a in vectors.alphas.values())


def test_micro_batches_train_the_vectors_of_the_whole_batch():
    """Gradients of micro-batches, each weighted by its share, add up to the whole batch's: the
    same vectors up to floating-point order (uneven parts included: 4 windows as 3 + 1). Large
    initial weights make the mask cost enough KL that the vectors move."""
    model, thresholds, _ = _setup(level=0.7, initializer_range=0.3)
    config = TrainConfig(steps=8, batch_size=4, lr=0.03, eval_every=4, checkpoint_every=0, track_sparsity=False)
    train_ids = _ids(12)
    whole, _ = train_spon(model, thresholds, train_ids, train_ids[:4], config, progress=False)
    for micro_batch in (2, 3):
        config_parts = TrainConfig(**{**config.as_dict(), "micro_batch": micro_batch})
        parts, _ = train_spon(model, thresholds, train_ids, train_ids[:4], config_parts, progress=False)
        assert parts.meta["training"]["micro_batch"] == micro_batch
        losses = [[v for _, v in t["history"]["loss"]] for t in (parts.meta["training"], whole.meta["training"])]
        assert losses[0] == pytest.approx(losses[1], rel=1e-5)
        assert max(a.abs().max() for a in whole.alphas.values()) > 0.05  # the vectors moved
        for name, alpha in whole.alphas.items():
            # float32 sums in another order: up to ~1.3e-6 apart on ATen's non-vectorised CPU path
            torch.testing.assert_close(parts.alphas[name], alpha, rtol=0, atol=5e-6)


def test_a_pass_that_runs_out_of_memory_is_halved_when_the_micro_batch_is_left_to_sponlib(monkeypatch):
    """With micro_batch 0, a pass of more than two windows "runs out of memory" (a stand-in for
    CUDA's error): the step starts over with half the windows per pass, twice, and the run ends
    with the vectors of micro_batch 2, every halving recorded. A micro-batch the user set is
    left alone: its error goes through."""
    import sponlib.spon.training as training

    model, thresholds, _ = _setup(level=0.7, initializer_range=0.3)
    config = TrainConfig(steps=4, batch_size=8, lr=0.03, eval_every=2, checkpoint_every=0, track_sparsity=False)
    train_ids = _ids(12)
    halves, _ = train_spon(
        model,
        thresholds,
        train_ids,
        train_ids[:4],
        TrainConfig(**{**config.as_dict(), "micro_batch": 2}),
        progress=False,
    )
    real = training.final_hidden

    def tight(model, ids):  # (m, L) -> (m, L, d), refused beyond two windows
        if ids.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (a stand-in)")
        return real(model, ids)

    monkeypatch.setattr(training, "final_hidden", tight)
    shrunk, _ = train_spon(model, thresholds, train_ids, train_ids[:4], config, progress=False)
    meta = shrunk.meta["training"]
    assert meta["micro_batch"] == 0 and meta["forward_batch"] == 2
    assert [tuple(x) for x in meta["out_of_memory"]] == [(0, 8), (0, 4)]
    assert max(a.abs().max() for a in shrunk.alphas.values()) > 0.05  # the vectors moved
    for name, alpha in halves.alphas.items():
        torch.testing.assert_close(shrunk.alphas[name], alpha, rtol=0, atol=1e-6)
    with pytest.raises(torch.OutOfMemoryError, match="a stand-in"):
        train_spon(
            model,
            thresholds,
            train_ids,
            train_ids[:4],
            TrainConfig(**{**config.as_dict(), "micro_batch": 4}),
            progress=False,
        )


def test_the_kl_backward_in_chunks_of_positions_gives_the_loss_and_gradients_of_the_whole():
    """The head's logits a chunk of positions at a time (7 of 48, the last chunk short), each
    chunk's backward at once and the model's once after: the loss and the vectors' gradients of
    the plain formula, the whole pass's logits at once."""
    from sponlib.spon.distillation import kl_backward, validation_kl

    model, thresholds, vectors = _setup(level=0.7)
    ids = _ids(2, 24, seed=5)
    with torch.no_grad():
        teacher = final_hidden(model, ids)  # (2, 24, d), dense

    def run(chunk):  # -> (loss, the vectors' gradients)
        alphas = {n: a.clone().requires_grad_(True) for n, a in vectors.alphas.items()}
        with Sparsifier(model, thresholds, alphas=alphas):
            hidden = final_hidden(model, ids)
            if chunk is None:
                loss = kl_to_teacher(head_logits(model, hidden), head_logits(model, teacher)) * 0.5
                loss.backward()
            else:
                loss = kl_backward(model, hidden, teacher, 0.5, "fp32", chunk)
        return loss.detach(), {n: a.grad for n, a in alphas.items()}

    plain_loss, plain_grads = run(None)
    assert plain_loss > 0 and max(g.abs().max() for g in plain_grads.values()) > 0
    for chunk in (7, 48, 1000):
        loss, grads = run(chunk)
        torch.testing.assert_close(loss, plain_loss, rtol=1e-5, atol=0)  # float32 sums: ~1.4e-6 apart on some CPU paths
        for name, grad in plain_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-7)
    # validation reads its logits in chunks too: the same KL
    kls = [validation_kl(model, thresholds, vectors.alphas, ids, teacher, 2, "fp32", chunk=c) for c in (7, 1000)]
    assert kls[0] == pytest.approx(kls[1], rel=1e-5) and kls[0] == pytest.approx(plain_loss.item() * 2, rel=1e-5)


def test_a_diverging_run_falls_back_to_the_plain_mask():
    model, thresholds, _ = _setup()
    config = TrainConfig(steps=4, batch_size=4, lr=50.0, warmup=0.0, eval_every=2)
    vectors, final = train_spon(model, thresholds, _ids(8), _ids(4, seed=9), config, progress=False)
    assert final.taus == thresholds.taus  # the plain mask keeps its thresholds
    t = vectors.meta["training"]
    assert t["val_kl_best"] == t["val_kl_base"] and t["best_step"] == 0
    assert all((a == 0).all() for a in vectors.alphas.values())


def test_an_interrupted_run_resumes_exactly(tmp_path, trained):
    model, thresholds, config, straight = trained
    checkpoint = tmp_path / "run.ckpt"
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def step_then_interrupt(self, *args, **kwargs):  # Ctrl-C during step 6, with no callback flushing losses
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(torch.optim.AdamW, "step", step_then_interrupt)
        train_spon(model, thresholds, _ids(12), _ids(4, seed=9), config, checkpoint=checkpoint, progress=False)
    assert checkpoint.exists()
    with pytest.raises(InvalidArgumentError, match="belongs to another run"):
        train_spon(
            model,
            thresholds,
            _ids(12),
            _ids(4, seed=9),
            TrainConfig(**{**config.as_dict(), "lr": 0.01}),
            checkpoint=checkpoint,
            progress=False,
        )
    resumed, _ = train_spon(model, thresholds, _ids(12), _ids(4, seed=9), config, checkpoint=checkpoint, progress=False)
    assert not checkpoint.exists()  # a finished run cleans up
    for name, alpha in straight.alphas.items():
        torch.testing.assert_close(resumed.alphas[name], alpha, atol=0, rtol=0)
    assert resumed.meta["training"]["history"] == straight.meta["training"]["history"]
    assert resumed.meta["training"]["train_tokens"] == straight.meta["training"]["train_tokens"]
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptFileError, match="damaged"):
        train_spon(model, thresholds, _ids(12), _ids(4, seed=9), config, checkpoint=checkpoint, progress=False)


def test_export_loads_in_plain_transformers_and_reproduces_spon(tmp_path):
    model, thresholds, vectors = _setup()
    ids = _ids(2, 24, seed=5)
    spon = _logits(model, thresholds, ids, vectors.alphas)
    out = fold_and_export(model, None, vectors, thresholds, tmp_path / "export")
    assert model.model.layers[0].self_attn.q_proj.bias is None  # the model itself is untouched
    config = json.loads((out / "config.json").read_text())
    assert config["attention_bias"] is True and config["mlp_bias"] is True
    # A fresh interpreter with transformers alone, no sponlib imported.
    script = (
        "import sys, torch; from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(out)!r})\n"
        "assert 'sponlib' not in sys.modules\n"
        f"torch.save(m(torch.load({str(tmp_path / 'ids.pt')!r})).logits, {str(tmp_path / 'dense.pt')!r})\n"
    )
    torch.save(ids, tmp_path / "ids.pt")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    folded = vectors.fold_into(tiny_model("llama"))
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "dense.pt"), folded(ids).logits)
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(
        _logits(exported, Thresholds.load(out / THRESHOLDS_FILE, exported), ids), spon, atol=2e-5, rtol=1e-5
    )


def test_the_export_copies_tensors_straight_to_the_cpu_and_keeps_tied_weights_tied(tmp_path, monkeypatch):
    """No parameter or buffer is deep-copied where it lives before reaching the CPU (for an 8B
    model on a GPU that would be a second model there); tied weights stay one tensor."""
    import itertools

    from torch import nn

    model, thresholds, vectors = _setup(tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    deep_copied = []
    for kind in (torch.Tensor, nn.Parameter):
        original = kind.__deepcopy__
        monkeypatch.setattr(kind, "__deepcopy__", lambda t, memo, f=original: deep_copied.append(id(t)) or f(t, memo))
    spon = _logits(model, thresholds, _ids(2, 24, seed=5), vectors.alphas)
    fold_and_export(model, None, vectors, thresholds, tmp_path / "export")
    copy = cpu_copy(model)
    own = {id(t) for t in itertools.chain(model.parameters(), model.buffers())}
    assert not own & set(deep_copied)
    assert copy.lm_head.weight is copy.model.embed_tokens.weight
    assert all(not t.data_ptr() == o.data_ptr() for t, o in zip(copy.parameters(), model.parameters()))
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    exported_thresholds = Thresholds.load(tmp_path / "export" / THRESHOLDS_FILE, exported)
    torch.testing.assert_close(_logits(exported, exported_thresholds, _ids(2, 24, seed=5)), spon, atol=2e-5, rtol=1e-5)


def test_export_refuses_configs_without_bias_switches(tmp_path):
    model, thresholds, vectors = _setup("mistral")
    with pytest.raises(UnsupportedArchitectureError, match="cannot give 14 projections a bias"):
        fold_and_export(model, None, vectors, thresholds, tmp_path / "mistral")
    assert not (tmp_path / "mistral").exists()
    model, thresholds, vectors = _setup("qwen3")  # attention_bias, but no switch for the MLP
    with pytest.raises(UnsupportedArchitectureError, match="mlp"):
        fold_and_export(model, None, vectors, thresholds, tmp_path / "qwen3")
    attention_only = SponVectors({n: a for n, a in vectors.alphas.items() if "self_attn" in n}, vectors.meta)
    fold_and_export(model, None, attention_only, thresholds, tmp_path / "qwen3")
    assert json.loads((tmp_path / "qwen3" / "config.json").read_text())["attention_bias"] is True
    fold_and_export(model, None, attention_only, thresholds, tmp_path / "qwen3")  # an earlier export is replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InvalidArgumentError, match="not an earlier export"):
        fold_and_export(model, None, attention_only, thresholds, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_thresholds_are_refitted_to_their_levels_under_the_vectors():
    model, thresholds, vectors = _setup(level=0.6)
    ids = _ids(8, 48)
    with torch.no_grad(), Sparsifier(model, thresholds, alphas=vectors.alphas) as stale:
        model(ids)
    assert max(abs(v - 0.6) for v in stale.measured().values()) > 0.03  # vectors moved the inputs
    from sponlib.sparsity import refine_thresholds

    taus = refine_thresholds(model, ids, "teal", thresholds.levels, vectors.alphas)
    refitted = Thresholds(thresholds.method, 0.6, thresholds.levels, taus, thresholds.fingerprint)
    with torch.no_grad(), Sparsifier(model, refitted, alphas=vectors.alphas) as fresh:
        model(ids)
    assert max(abs(v - 0.6) for v in fresh.measured().values()) < 0.01


def test_training_returns_thresholds_refitted_at_the_best_step():
    model, thresholds, _ = _setup(level=0.7)
    config = TrainConfig(steps=16, batch_size=4, lr=0.003, eval_every=4)
    vectors2, final = train_spon(model, thresholds, _ids(16), _ids(4, seed=9), config, progress=False)
    assert vectors2.meta["training"]["best_step"] > 0
    assert final.taus != thresholds.taus and final.calibration["refitted_under_spon"]
    assert final.levels == thresholds.levels and final.target == thresholds.target


@pytest.mark.slow
@pytest.mark.parametrize("level", [0.25, 0.4, 0.5, 0.6, 0.7])
def test_shipped_vectors_load_on_the_default_model(default_model, level):
    from sponlib.paths import data_dir

    model, _ = default_model
    path = data_dir() / "artifacts" / "smollm2-135m" / f"spon-teal-{level:g}.safetensors"
    vectors, thresholds = load_spon(path, model)
    assert (thresholds.method, thresholds.target) == ("teal", level)
    assert vectors.parameter_count() == 30 * (6 * 576 + 1536) and vectors.meta["training"]["best_step"] > 0
    assert thresholds.calibration["refitted_under_spon"]


@pytest.mark.slow
def test_shipped_vectors_repair_the_default_model_on_held_out_text(default_model):
    from sponlib.data import load_corpus, load_windows
    from sponlib.paths import data_dir
    from sponlib.perplexity import perplexity

    model, tokenizer = default_model
    vectors, thresholds = load_spon(data_dir() / "artifacts" / "smollm2-135m" / "spon-teal-0.6.safetensors", model)
    windows = load_windows(load_corpus("persuasion"), tokenizer, 256, 2, seed=3)
    with Sparsifier(model, thresholds):
        masked = perplexity(model, windows, progress=False).ppl
    with Sparsifier(model, thresholds, alphas=vectors.alphas):
        spon = perplexity(model, windows, progress=False).ppl
    dense = perplexity(model, windows, progress=False).ppl
    assert dense < spon < masked


def _replaying_masks(model, masks: dict):
    """Pre-hooks that zero exactly the entries `masks` (projection name -> keep) say, so two runs
    can be compared with identical mask decisions."""
    return [
        p.module.register_forward_pre_hook(lambda m, a, keep=masks[p.name]: (a[0] * keep,) + a[1:])
        for p in iter_projections(model)
    ]


@pytest.mark.slow
def test_default_model_export_reproduces_its_spon_logits(default_model, tmp_path):
    """Folding is exact up to rounding: b + W α and W (S(x) + α) differ in the last bits, and an input
    sitting within that of its threshold can fall the other way, which a hard mask passes on. So:
    with the SPON run's mask decisions replayed the exported model agrees tightly; under its own
    sparsifier single tokens' logits can differ (a flipped entry spreads through later layers and
    positions), and what must agree is the perplexity."""
    from transformers import AutoModelForCausalLM

    from sponlib.data import load_corpus, load_windows
    from sponlib.paths import data_dir

    model, tokenizer = default_model
    vectors, thresholds = load_spon(data_dir() / "artifacts" / "smollm2-135m" / "spon-teal-0.5.safetensors", model)
    out = fold_and_export(model, tokenizer, vectors, thresholds, tmp_path / "smollm2-spon")
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = load_windows(load_corpus("persuasion"), tokenizer, 128, 1, seed=5).ids  # (1, 128)

    masks, handles = {}, []
    for p in iter_projections(model):  # registered before the sparsifier: sees the raw input
        handles.append(
            p.module.register_forward_pre_hook(
                lambda m, a, n=p.name: masks.__setitem__(n, a[0].abs() > thresholds.taus[n])
            )
        )
    spon = _logits(model, thresholds, ids, vectors.alphas)  # (1, 128, V)
    for h in handles:
        h.remove()
    handles = _replaying_masks(exported, masks)
    with torch.no_grad():
        replayed = exported(ids).logits
    for h in handles:
        h.remove()
    torch.testing.assert_close(replayed, spon, atol=1e-3, rtol=1e-4)

    from sponlib.perplexity import perplexity

    windows = load_windows(load_corpus("persuasion"), tokenizer, 256, 4, seed=5)
    with Sparsifier(exported, Thresholds.load(out / THRESHOLDS_FILE, exported)):
        folded_ppl = perplexity(exported, windows, progress=False).ppl
    with Sparsifier(model, thresholds, alphas=vectors.alphas):
        spon_ppl = perplexity(model, windows, progress=False).ppl
    with Sparsifier(model, thresholds):
        masked_ppl = perplexity(model, windows, progress=False).ppl
    # Flipped ties move a few windows' perplexity by a few percent either way; dropping or
    # mis-folding the vectors moves it by tens of percent.
    assert abs(folded_ppl / spon_ppl - 1) < 0.05 < masked_ppl / spon_ppl - 1, (folded_ppl, spon_ppl, masked_ppl)


def test_monitored_texts_are_recorded_and_never_choose():
    model, thresholds, _ = _setup(level=0.7, initializer_range=0.3)
    config = TrainConfig(steps=4, batch_size=4, lr=0.03, eval_every=2, checkpoint_every=0)
    plain, _ = train_spon(model, thresholds, _ids(8), _ids(4, seed=9), config, progress=False)
    watched, _ = train_spon(
        model, thresholds, _ids(8), _ids(4, seed=9), config, progress=False, monitor={"other": _ids(3, seed=5)}
    )
    history = watched.meta["training"]["history"]
    assert [step for step, _ in history["monitor"]["other"]] == [0, 2, 4]
    assert history["val"] == plain.meta["training"]["history"]["val"]  # the monitored text changes nothing
    for name, alpha in plain.alphas.items():
        assert torch.equal(watched.alphas[name], alpha)


def test_thresholds_refit_on_the_windows_given(monkeypatch):
    import sponlib.spon.training as training

    seen = []
    real = training.refine_thresholds
    monkeypatch.setattr(
        training, "refine_thresholds", lambda model, ids, *a, **k: seen.append(ids) or real(model, ids, *a, **k)
    )
    model, thresholds, _ = _setup(level=0.7, initializer_range=0.3)
    config = TrainConfig(steps=2, batch_size=4, lr=0.03, eval_every=1, checkpoint_every=0, refit_windows=3)
    train_ids, other = _ids(8), _ids(5, seed=11)
    train_spon(model, thresholds, train_ids, _ids(4, seed=9), config, progress=False)
    train_spon(model, thresholds, train_ids, _ids(4, seed=9), config, progress=False, refit_ids=other)
    assert len(seen) == 4  # one refit per validation after step 0, in each run
    assert all(torch.equal(ids, train_ids[:3]) for ids in seen[:2])  # default: the first training windows
    assert all(torch.equal(ids, other[:3]) for ids in seen[2:])


def test_a_shift_bound_holds_every_vector_to_its_limit():
    model, thresholds, _ = _setup(level=0.7, initializer_range=0.3)
    config = TrainConfig(steps=4, batch_size=4, lr=0.1, eval_every=2, checkpoint_every=0, track_sparsity=False)
    free, _ = train_spon(model, thresholds, _ids(8), _ids(4, seed=9), config, progress=False)
    weights = {p.name: p.module.weight.detach() for p in iter_projections(model)}
    shift = {name: float((weights[name] @ a).norm()) for name, a in free.alphas.items()}
    limits = {name: 0.5 * s for name, s in shift.items()}  # half of what the free run reached
    bounded, _ = train_spon(model, thresholds, _ids(8), _ids(4, seed=9), config, progress=False, shift_limits=limits)
    assert bounded.meta["training"]["shift_bounded"]
    for name, alpha in bounded.alphas.items():
        assert float((weights[name] @ alpha).norm()) <= limits[name] * (1 + 1e-5)
    with pytest.raises(InvalidArgumentError, match="without a SPON vector"):
        train_spon(model, thresholds, _ids(8), _ids(4), config, progress=False, shift_limits={"nope": 1.0})
