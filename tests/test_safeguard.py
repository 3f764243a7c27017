"""The "never worse" safeguard: the paired bootstrap, the scaled vectors and thresholds, the rule
that picks the scale (vectors that hurt are refused, vectors that help are kept), its record in
the SPON file, and the command line. Tiny random models: plumbing, not results."""

import dataclasses
import json
import math

import pytest
import torch

from sponlib.cli import build_parser, main
from sponlib.cli.spon import run_safeguard, safeguard_source
from sponlib.data import Windows
from sponlib.errors import InvalidArgumentError, SponlibError
from sponlib.models.likelihood import window_nlls
from sponlib.models.tiny import tiny_model
from sponlib.perplexity import perplexity
from sponlib.sparsity import Sparsifier, calibrate
from sponlib.spon import (
    GammaScan,
    SponVectors,
    TrainConfig,
    gamma_scan,
    load_spon,
    paired_bootstrap,
    safeguard,
    save_spon,
    scaled,
    train_spon,
)


def _ids(n, length=32, seed=1):
    return torch.randint(0, 256, (n, length), generator=torch.Generator().manual_seed(seed))


def _windows(ids, source="held-out"):
    return Windows(ids, [(source, i) for i in range(len(ids))], source, ids.shape[1], 0, len(ids))


def _setup(level=0.5, scale=0.3):
    """A tiny model, the mask's thresholds, random vectors (`scale` times a normal) and SPON
    thresholds moved away from the mask's, as a refit under the vectors moves them."""
    model = tiny_model("llama")
    mask = calibrate(model, _ids(8), refine_levels=(level,), progress=False).thresholds(level, "teal")
    vectors = SponVectors.zeros(model)
    generator = torch.Generator().manual_seed(2)
    for alpha in vectors.alphas.values():
        alpha.copy_(scale * torch.randn(alpha.shape, generator=generator))
    spon = dataclasses.replace(mask, taus={name: 1.2 * tau for name, tau in mask.taus.items()})
    return model, vectors, spon, mask


def _logits(model, thresholds, ids, alphas=None):
    with torch.no_grad(), Sparsifier(model, thresholds, alphas=alphas):
        return model(ids).logits


# ------------------------------------------------------------------ the bootstrap


def test_bootstrap_is_seeded_and_covers_the_mean():
    d = 0.1 + torch.randn(200, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    first, again = paired_bootstrap(d, seed=7), paired_bootstrap(d, seed=7)
    assert first == again and first != paired_bootstrap(d, seed=8)
    assert first.mean == pytest.approx(d.mean().item()) and first.low < first.mean < first.high
    assert first.confidence == 0.95
    # the percentile interval of a mean of 200 draws: about ±1.96 standard errors
    assert first.high - first.low == pytest.approx(2 * 1.96 * d.std().item() / math.sqrt(200), rel=0.15)
    wider = paired_bootstrap(d, confidence=0.99, seed=7)
    assert wider.low < first.low and wider.high > first.high


def test_bootstrap_of_no_difference_has_zero_width():
    interval = paired_bootstrap(torch.zeros(16))
    assert (interval.mean, interval.low, interval.high) == (0.0, 0.0, 0.0)
    with pytest.raises(InvalidArgumentError):
        paired_bootstrap(torch.tensor([0.1, float("nan")]))
    with pytest.raises(InvalidArgumentError):
        paired_bootstrap(torch.zeros(4), confidence=1.0)


# ------------------------------------------------------------------ per-window NLL and scaling


def test_window_nlls_are_the_perplexity_per_window():
    model, _, _, mask = _setup()
    ids = _ids(6, 24, seed=4)
    with Sparsifier(model, mask):
        nlls = window_nlls(model, _windows(ids), batch_size=4, progress=False)
        per_batch = window_nlls(model, ids, batch_size=1, progress=False)
        result = perplexity(model, ids, batch_size=3, progress=False)
    assert nlls.shape == (6,) and nlls.dtype == torch.float64
    torch.testing.assert_close(nlls, per_batch, rtol=0, atol=1e-5)  # batching changes nothing but rounding
    assert nlls.mean().item() == pytest.approx(result.nll, rel=1e-12)
    with pytest.raises(InvalidArgumentError, match="batch size"):
        window_nlls(model, ids, batch_size=0)


def test_scaled_gives_exactly_the_mask_at_zero_and_spon_at_one():
    model, vectors, spon, mask = _setup()
    ids = _ids(2, 16, seed=5)
    zero_vectors, zero_thresholds = scaled(vectors, spon, mask, 0.0)
    assert zero_thresholds == mask and all((a == 0).all() for a in zero_vectors.alphas.values())
    assert torch.equal(_logits(model, zero_thresholds, ids, zero_vectors.alphas), _logits(model, mask, ids))
    full_vectors, full_thresholds = scaled(vectors, spon, mask, 1.0)
    assert full_thresholds == spon
    assert torch.equal(
        _logits(model, full_thresholds, ids, full_vectors.alphas), _logits(model, spon, ids, vectors.alphas)
    )
    half_vectors, half = scaled(vectors, spon, mask, 0.5)
    for name, alpha in vectors.alphas.items():
        assert torch.equal(half_vectors.alphas[name], 0.5 * alpha)
        assert half.taus[name] == pytest.approx(1.1 * mask.taus[name])
    assert half.calibration["spon_scale"] == 0.5 and "spon_scale" not in spon.calibration  # inputs untouched
    with pytest.raises(InvalidArgumentError, match=r"in \[0, 1\]"):
        scaled(vectors, spon, mask, 1.5)
    with pytest.raises(InvalidArgumentError, match="trained against"):
        scaled(vectors, spon, dataclasses.replace(mask, target=0.7), 0.5)


# ------------------------------------------------------------------ the rule


@torch.no_grad()
def _sampled(model, n, length, seed):
    """Windows sampled from the dense model itself: the dense model is the truth of this text, so
    whatever brings the masked model's distribution closer to it lowers the NLL."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (n, 1), generator=generator)  # (n, 1)
    for _ in range(length - 1):
        probs = torch.softmax(model(ids).logits[:, -1].float(), dim=-1)  # (n, V)
        ids = torch.cat([ids, torch.multinomial(probs, 1, generator=generator)], 1)
    return ids  # (n, length)


@pytest.fixture(scope="module")
def peaked():
    """A tiny model with large weights (the mask costs a lot), 64 windows of 24 tokens sampled
    from it, and the mask's thresholds at 0.8."""
    model = tiny_model("llama", initializer_range=0.3)
    ids = _sampled(model, 64, 24, seed=1)
    mask = calibrate(model, ids[:8], refine_levels=(0.8,), progress=False).thresholds(0.8, "teal")
    return model, ids, mask


def test_vectors_that_hurt_are_refused_and_the_file_is_the_mask(peaked, tmp_path, capsys):
    model, ids, mask = peaked
    vectors = SponVectors.zeros(model)
    generator = torch.Generator().manual_seed(2)
    for alpha in vectors.alphas.values():  # large random vectors: far from what the dense model computes
        alpha.copy_(2.0 * torch.randn(alpha.shape, generator=generator))
    spon = dataclasses.replace(mask, taus={name: 1.2 * tau for name, tau in mask.taus.items()})
    windows = _windows(ids[32:])
    out_vectors, out_thresholds, record = safeguard(
        model, vectors, spon, mask, windows, gammas=(1.0, 0.5), progress=False
    )
    assert record["gamma"] == 0.0 and record["refused"] is True and record["start"] == 1.0
    assert [r["gamma"] for r in record["scan"]] == [1.0, 0.5, 0.0]
    assert record["scan"][0]["low"] > 0  # worse than the mask with confidence at full scale
    assert record["interval"] == {"mean": 0.0, "low": 0.0, "high": 0.0, "confidence": 0.95, "n_boot": 2000, "seed": 0}
    assert record["ppl_spon"] == record["ppl_mask"] and record["text"]["source"] == "held-out"
    assert out_thresholds == mask and all((a == 0).all() for a in out_vectors.alphas.values())
    assert out_vectors.meta["safeguard"] is record and "safeguard" not in vectors.meta  # inputs untouched

    path = tmp_path / "spon-teal-0.8.safetensors"
    save_spon(out_vectors, out_thresholds, path)
    loaded, thresholds = load_spon(path, model)
    assert loaded.meta["safeguard"] == json.loads(json.dumps(record))
    assert thresholds.taus == mask.taus

    # the command line's report: one line, and a loud one on stderr
    _, _, again = run_safeguard(model, vectors, spon, mask, _windows(ids[32:40]), 8, "spon.safetensors")
    out, err = capsys.readouterr()
    assert again["refused"] and len(again["scan"]) == 11  # refused: every scale was tried
    assert out.startswith("safeguard on held-out (8 windows): gamma 0, log(ppl SPON / ppl mask) +0.0000")
    assert "WARNING: the safeguard refused the SPON vectors" in err and "spon.safetensors holds zero vectors" in err


def test_vectors_that_help_are_kept(peaked):
    model, ids, mask = peaked
    config = TrainConfig(steps=24, batch_size=8, lr=0.03, eval_every=8, checkpoint_every=0)
    vectors, spon = train_spon(model, mask, ids[:24], ids[24:32], config, progress=False)
    scan = gamma_scan(model, vectors, spon, mask, _windows(ids[32:]), gammas=(1.0, 0.5), progress=False)
    assert scan.rows[0]["high"] < 0  # SPON better than the mask with confidence on held-out samples
    kept, thresholds, record = safeguard(model, vectors, spon, mask, scan=scan)
    assert record["gamma"] == 1.0 and record["refused"] is False and thresholds == spon
    assert record["ppl_spon"] < record["ppl_mask"]
    assert math.log(record["ppl_spon"] / record["ppl_mask"]) == pytest.approx(record["interval"]["mean"])
    assert all(torch.equal(kept.alphas[n], a) for n, a in vectors.alphas.items())
    # scanning itself, the safeguard stops at the first safe scale, with the same result
    _, _, own = safeguard(model, vectors, spon, mask, _windows(ids[32:]), progress=False)
    assert [r["gamma"] for r in own["scan"]] == [1.0, 0.0] and own["scan"][0] == scan.rows[0]
    assert {k: v for k, v in own.items() if k != "scan"} == {k: v for k, v in record.items() if k != "scan"}


def _scan(highs: dict, means: dict | None = None) -> GammaScan:
    means = means or {g: h - 0.05 for g, h in highs.items()}
    rows = [
        {"gamma": g, "ppl_spon": 10 * math.exp(means[g]), "mean": means[g], "low": means[g] - 0.05, "high": h}
        for g, h in sorted(highs.items(), reverse=True)
    ]
    return GammaScan({"source": "by-hand", "windows": 8}, 10.0, rows)


def test_the_largest_safe_scale_at_or_below_the_start_is_chosen():
    scan = _scan({1.0: 0.02, 0.8: -0.01, 0.5: -0.03, 0.2: 0.01, 0.0: 0.0})
    assert scan.safe_gamma() == 0.8
    assert scan.safe_gamma(start=0.6) == 0.5 and scan.safe_gamma(start=0.3) == 0.0
    assert scan.safe_gamma(margin=0.02) == 1.0
    assert _scan({1.0: 0.02, 0.5: 0.01}).safe_gamma() == 0.0  # γ = 0 qualifies, rows or not
    best = _scan({1.0: 0.02, 0.8: 0.0, 0.5: 0.01}, means={1.0: -0.03, 0.8: -0.05, 0.5: -0.04})
    assert best.best_gamma() == 0.8
    assert best.as_dict()["rows"] == best.rows and best.as_dict()["text"]["source"] == "by-hand"

    model, vectors, spon, mask = _setup()
    chosen, thresholds, record = safeguard(model, vectors, spon, mask, scan=scan, start=0.9)
    assert (record["gamma"], record["start"], record["refused"]) == (0.8, 0.9, False)
    assert record["interval"]["high"] == -0.01 and record["ppl_spon"] == scan.row(0.8)["ppl_spon"]
    assert record["criterion"].startswith("the largest scale gamma") and record["text"] == scan.text
    assert all(torch.equal(chosen.alphas[n], 0.8 * a) for n, a in vectors.alphas.items())
    _, _, refused = safeguard(model, vectors, spon, mask, scan=_scan({1.0: 0.02, 0.5: 0.01}))
    assert refused["refused"] and refused["interval"]["high"] == 0.0 and refused["ppl_spon"] == 10.0
    with pytest.raises(InvalidArgumentError, match="held-out windows"):
        safeguard(model, vectors, spon, mask)


# ------------------------------------------------------------------ command line


def _train_args(*extra):
    return build_parser().parse_args(["train", "--sparsity", "0.5", "--out", "s.safetensors", *extra])


def test_safeguard_options_parse_and_training_text_is_refused(tmp_path):
    args = _train_args()
    assert (args.safeguard_text, args.safeguard_windows) == ("brown-val", 32)
    assert safeguard_source(args).name == "brown-val"  # trained on austen-train: other text
    args = _train_args("--safeguard-text", "brown-humor", "--safeguard-windows", "8")
    assert (args.safeguard_text, args.safeguard_windows) == ("brown-humor", 8)
    assert safeguard_source(_train_args("--safeguard-text", "none")) is None
    assert safeguard_source(_train_args("--safeguard-text", "austen-val")).name == "austen-val"  # other span
    for train, guard, part in (
        ("austen-train", "austen-train", "austen-train"),
        ("austen-train+brown-val", "brown-val", "brown-val"),
        ("brown", "brown-val", "brown"),  # the whole Brown Corpus holds the validation genres
    ):
        with pytest.raises(SponlibError, match=f"shares text with the training text '{part}'.*--safeguard-text none"):
            safeguard_source(_train_args("--train-corpus", train, "--safeguard-text", guard))
    with pytest.raises(SponlibError, match="--safeguard-text 'wiki'.*unknown corpus"):
        safeguard_source(_train_args("--safeguard-text", "wiki"))
    notes = tmp_path / "notes.txt"
    notes.write_text("Some notes of my own. " * 50)
    with pytest.raises(SponlibError, match="shares text with the training text 'notes'"):
        safeguard_source(_train_args("--train-corpus", f"austen-train+{notes}", "--safeguard-text", str(notes)))
    other = tmp_path / "other" / "notes.txt"  # another file of the same name is other text
    other.parent.mkdir()
    other.write_text("Other notes. " * 50)
    assert safeguard_source(_train_args("--train-corpus", str(notes), "--safeguard-text", str(other))).name == "notes"
    with pytest.raises(SponlibError, match="--safeguard-windows must be positive"):
        safeguard_source(_train_args("--safeguard-windows", "-1"))


def test_eval_warns_about_refused_vectors_and_records_the_safeguard(tiny_model_dir, tmp_path, capsys):
    from sponlib.models import load_model
    from sponlib.sparsity import quantile_thresholds

    model, _ = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    mask = quantile_thresholds(model, _ids(2, 32), "teal", 0.5)
    vectors = SponVectors.zeros(model)
    scan = _scan({1.0: 0.02, 0.5: 0.01})
    refused, thresholds, record = safeguard(model, vectors, mask, mask, scan=scan)
    path = tmp_path / "spon-teal-0.5.safetensors"
    save_spon(refused, thresholds, path)
    out = tmp_path / "eval.json"
    argv = ["eval", "--model", str(tiny_model_dir), "--corpus", "persuasion", "--windows", "2", "--window-len", "32"]
    assert main([*argv, "--spon", str(path), "--json", str(out)]) == 0
    assert "the safeguard refused the SPON vectors" in capsys.readouterr().err
    guard = json.loads(out.read_text())["safeguard"]
    assert guard == {"gamma": 0.0, "refused": True, "text": "by-hand", "interval": record["interval"]}


def test_train_runs_the_safeguard_and_records_it(tiny_model_dir, tmp_path, capsys):
    model = str(tiny_model_dir)
    calibration = tmp_path / "cal.safetensors"
    small = ["--windows", "2", "--window-len", "32", "--refine-windows", "1", "--refine-levels", "0.5"]
    assert main(["calibrate", "--model", model, "--out", str(calibration), *small]) == 0
    spon, record = tmp_path / "spon-teal-0.5.safetensors", tmp_path / "train.json"
    argv = ["train", "--model", model, "--sparsity", "0.5", "--calibration", str(calibration), "--out", str(spon)]
    argv += ["--train-windows", "2", "--train-window-len", "32", "--val-windows", "1", "--steps", "2"]
    argv += ["--train-batch", "2", "--eval-every", "1", "--safeguard-text", "brown-humor", "--safeguard-windows", "4"]
    assert main([*argv, "--json", str(record)]) == 0
    assert "safeguard on brown-humor (4 windows): gamma" in capsys.readouterr().out
    guard = json.loads(record.read_text())["safeguard"]
    assert guard["text"]["source"] == "brown-humor" and guard["text"]["window_len"] == 32
    vectors, _ = load_spon(spon)
    assert vectors.meta["safeguard"] == guard and "training" in vectors.meta
    assert main([*argv, "--safeguard-text", "austen-train"]) == 2
    assert "shares text with the training text 'austen-train'" in capsys.readouterr().err
