"""The lm-evaluation-harness adapter (sponlib.tasks.harness) on a tiny random Llama and the eight-item
tasks of tests/data/harness/: lm-eval's own per-example log-likelihoods and generations equal
sponlib's computation under the same mask, the model carries no hook afterwards, the registered
"sponlib" model loads what its model_args name, and bad input fails with a clear error."""

import contextlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sponlib.errors import FingerprintError, InvalidArgumentError
from sponlib.models import iter_projections, load_model
from sponlib.sparsity import Sparsifier, quantile_thresholds
from sponlib.spon import SponVectors, save_spon
from sponlib.tasks import harness

DATA = Path(__file__).parent / "data" / "harness"
# Largest difference allowed between lm-eval's log-likelihood of a continuation and sponlib's own
# (nats, float32 on CPU; batching and padding change the summation order, nothing else)
TOLERANCE = 1e-4
# ... and the smallest the mask (or the SPON vectors) must move the largest of them, so that the
# comparison would catch a mask that is not applied
MOVED = 1e-2


@pytest.fixture(scope="module")
def lm_eval():
    return pytest.importorskip("lm_eval")  # a fallback only: the dev extra installs lm-eval


@pytest.fixture(autouse=True)
def _offline_in_an_empty_folder(tmp_path, monkeypatch):
    """Every test runs with connections refused and in an empty working directory, which must stay
    empty: a local task needs no network, and nothing lands in the caller's tree."""
    attempts = []

    def refuse(sock, address, *args):
        attempts.append(address)  # recorded: a library may swallow the error below
        raise ConnectionRefusedError(f"no network in this test: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield
    assert not attempts, f"network connections attempted: {attempts}"
    assert not any(cwd.iterdir()), f"files written into the working directory: {list(cwd.iterdir())}"


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    """The task YAMLs with their data path made absolute (lm-eval hands data_files to
    datasets.load_dataset, which resolves a relative one against the working directory) and the
    datasets cache in a temporary folder."""
    folder = tmp_path_factory.mktemp("harness-tasks")
    for path in DATA.glob("*.yaml"):
        config = yaml.safe_load(path.read_text())
        config["dataset_kwargs"] = {
            "data_files": {"test": str(DATA / "sponlib_tiny.jsonl")},
            "cache_dir": str(folder / "datasets-cache"),
        }
        (folder / path.name).write_text(yaml.safe_dump(config))
    return folder


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """The tiny Llama, its tokenizer, teal thresholds at 0.5 from a pass over the task texts, and
    random SPON vectors for them."""
    model, tokenizer = load_model(str(tiny_model_dir))
    texts = [json.loads(line)["context"] for line in (DATA / "sponlib_tiny.jsonl").read_text().splitlines()]
    ids = tokenizer(" ".join(texts), return_tensors="pt").input_ids
    thresholds = quantile_thresholds(model, ids, "teal", 0.5)
    generator = torch.Generator().manual_seed(1)
    spon = SponVectors.zeros(model)
    spon.alphas = {n: 0.05 * torch.randn(a.shape, generator=generator) for n, a in spon.alphas.items()}
    return model, tokenizer, thresholds, spon


def hooks_left(model) -> int:
    return sum(len(p.module._forward_pre_hooks) for p in iter_projections(model))


def own_loglikelihood(model, context: list[int], continuation: list[int], sparsifier) -> float:
    """Sum of log-softmax over the continuation tokens, one unpadded forward under `sparsifier`."""
    ids = torch.tensor([context + continuation])  # (1, L)
    with torch.no_grad(), sparsifier or contextlib.nullcontext():
        logits = model(ids).logits[0, len(context) - 1 : -1].float()  # (len(continuation), vocab)
    return float(torch.log_softmax(logits, -1).gather(-1, torch.tensor(continuation)[:, None]).sum())


def own_generation(model, lm, context: str, sparsifier, until=("\n", "."), max_tokens: int = 4) -> str:
    ids = torch.tensor([lm.tok_encode(context)])
    with torch.no_grad(), sparsifier or contextlib.nullcontext():
        out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    text = lm.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    for stop in until:
        text = text.split(stop)[0]
    return text


def loglikelihood_gaps(results, lm, model, sparsifier) -> dict[tuple, tuple[float, float]]:
    """(task, doc, request) -> (lm-eval's log-likelihood, sponlib's), for every log-likelihood request."""
    pairs = {}
    for task in ("sponlib_tiny_choice", "sponlib_tiny_cloze"):
        for sample in results["samples"].get(task, []):
            for i, ((context, continuation), resp) in enumerate(zip(sample["arguments"], sample["resps"])):
                context_enc, continuation_enc = lm._encode_pair(context, continuation)
                pairs[(task, sample["doc_id"], i)] = (
                    resp[0][0],
                    own_loglikelihood(model, context_enc, continuation_enc, sparsifier),
                )
    return pairs


def evaluate(lm, tasks_dir, tasks=("sponlib_tiny",)):
    return harness.run_harness(lm, list(tasks), include_path=tasks_dir, include_defaults=False, log_samples=True)


def test_lm_eval_scores_equal_sponlib_under_the_mask(lm_eval, tiny, tasks_dir):
    model, tokenizer, thresholds, spon = tiny
    settings = {"dense": (None, None), "masked": (thresholds, None), "spon": (thresholds, spon)}
    scores, texts = {}, {}
    for name, (taus, vectors) in settings.items():
        # batch size 1: generation without padding is exactly sponlib's own
        lm = harness.harness_lm(model, tokenizer, taus, vectors, batch_size=1)
        results = evaluate(lm, tasks_dir)
        assert hooks_left(model) == 0  # the hooks lived only during lm-eval's model calls
        own = Sparsifier(model, taus, alphas=vectors.alphas if vectors else None) if taus else None
        pairs = loglikelihood_gaps(results, lm, model, own)
        assert len(pairs) == 8 * 4 + 8  # four choices per item, one right word per item
        gap = max(abs(a - b) for a, b in pairs.values())
        assert gap < TOLERANCE, f"{name}: lm-eval's log-likelihoods differ from sponlib's by {gap:.2e}"
        scores[name] = {k: a for k, (a, _) in pairs.items()}
        generations = results["samples"]["sponlib_tiny_gen"]
        assert len(generations) == 8
        texts[name] = [own_generation(model, lm, s["arguments"][0][0], own) for s in generations]
        assert [s["resps"][0][0] for s in generations] == texts[name], name
        assert results["config"]["sponlib"]["method"] == ("dense" if taus is None else "teal")
        assert ("measured_sparsity" in results["config"]["sponlib"]) == (taus is not None)
    for a, b in (("dense", "masked"), ("masked", "spon")):
        moved = max(abs(scores[a][k] - scores[b][k]) for k in scores[a])
        assert moved > MOVED, f"{b} scores within {moved:.1e} of {a}: the comparison above proves nothing"
    assert texts["dense"] != texts["masked"]  # generation too ran under the mask


def test_batched_scores_and_an_interrupted_call_leave_no_hook(lm_eval, tiny, tasks_dir):
    model, tokenizer, thresholds, _ = tiny
    lm = harness.harness_lm(model, tokenizer, thresholds, batch_size=8)  # padded batches
    results = evaluate(lm, tasks_dir, ["sponlib_tiny_choice", "sponlib_tiny_cloze"])
    pairs = loglikelihood_gaps(results, lm, model, Sparsifier(model, thresholds))
    assert max(abs(a - b) for a, b in pairs.values()) < TOLERANCE
    assert 0.3 < results["config"]["sponlib"]["measured_sparsity"] < 0.7  # padding included: near 0.5
    with pytest.raises(IndexError):
        lm._model_call(torch.tensor([[10**6]]))  # a token id past the vocabulary raises inside the forward
    assert hooks_left(model) == 0


def test_registered_model_loads_what_model_args_name(lm_eval, tiny, tiny_model_dir, tasks_dir, tmp_path):
    from lm_eval.api.registry import get_model

    from sponlib.sparsity import calibrate

    model, tokenizer, thresholds, spon = tiny
    harness.register()
    harness.register()  # idempotent
    from sponlib.tasks.harness.model import SponlibLM

    assert get_model("sponlib") is SponlibLM
    assert get_model("hf").__name__ == "HFLM"  # lm-eval's own models are still there
    thresholds.save(tmp_path / "thresholds.json")
    save_spon(spon, thresholds, tmp_path / "spon.safetensors")
    calibration = calibrate(model, torch.randint(0, 49152, (4, 64)), refine_levels=(0.5,), progress=False)
    calibration.save(tmp_path / "calibration.safetensors")
    folder = str(tiny_model_dir)
    cases = {  # model_args (string or dict) -> the mask sponlib applies for them
        f"model={folder},thresholds={tmp_path / 'thresholds.json'}": (thresholds, None),
        f"pretrained={folder},sparsity=0.5,method=teal,calibration={tmp_path / 'calibration.safetensors'}": (
            calibration.thresholds(0.5, "teal"),
            None,
        ),
        f"model={folder},spon={tmp_path / 'spon.safetensors'},sparsity=0.5,dtype=float32,device=cpu": (
            thresholds,
            spon,
        ),
    }
    for model_args, (taus, vectors) in cases.items():
        results = harness.run_harness(
            model_args,
            ["sponlib_tiny_cloze"],
            include_path=tasks_dir,
            include_defaults=False,
            log_samples=True,
            batch_size=4,
        )
        assert results["config"]["model"] == "sponlib"
        assert results["config"]["sponlib"]["spon"] == (vectors is not None)
        own = Sparsifier(model, taus, alphas=vectors.alphas if vectors else None)
        lm = harness.harness_lm(model, tokenizer)  # for its tokenisation only
        pairs = loglikelihood_gaps(results, lm, model, own)
        assert len(pairs) == 8 and max(abs(a - b) for a, b in pairs.values()) < TOLERANCE, model_args
    # lm-eval's own entry point, with a dict
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    results = simple_evaluate(
        model="sponlib",
        model_args={"model": folder},
        tasks=["sponlib_tiny_cloze"],
        task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
        limit=2,
        batch_size=2,
    )
    assert results["config"]["sponlib"] == {"method": "dense", "sparsity": 0.0, "spon": False}
    assert hooks_left(model) == 0


@pytest.mark.parametrize(
    "model_args, message",
    [
        ("sparsity=1.5", "must be in [0, 1)"),
        ("sparsity=half", "must be a number"),
        ("sparsity=0.5,method=topk", "unknown mask rule"),
        ("spon=shipped", "name the sparsity"),
        ("spon=a.safetensors,thresholds=t.json", "one source of thresholds"),
        ("sparsity=0.5,calibration=c.safetensors,thresholds=t.json", "one source of thresholds"),
        ("calibration=c.safetensors", "without a sparsity"),
        ("method=wina", "no mask rule"),
        ("sparsty=0.5", "unknown model_args key(s) sparsty"),
        ("model=a,pretrained=b", "twice"),
        ("model=a,parallelize=True", "unknown model_args key(s) parallelize"),
    ],
)
def test_bad_model_args_fail_before_anything_loads(lm_eval, model_args, message):
    with pytest.raises(InvalidArgumentError, match=message.replace("(", r"\(").replace("[", r"\[").replace(")", r"\)")):
        harness.check_model_args(model_args)


def test_bad_combinations_after_loading(lm_eval, tiny, tiny_model_dir, tasks_dir, tmp_path):
    model, tokenizer, thresholds, spon = tiny
    folder = str(tiny_model_dir)
    with pytest.raises(InvalidArgumentError, match="ship for the known models"):  # nothing ships for a folder
        harness.lm_from_model_args(f"model={folder},sparsity=0.5,spon=shipped")
    with pytest.raises(InvalidArgumentError, match="no calibration shipped"):
        harness.lm_from_model_args(f"model={folder},sparsity=0.5")
    save_spon(spon, thresholds, tmp_path / "spon.safetensors")
    with pytest.raises(InvalidArgumentError, match="made for sparsity 0.5, not 0.4"):
        harness.lm_from_model_args(f"model={folder},sparsity=0.4,spon={tmp_path / 'spon.safetensors'}")
    with pytest.raises(InvalidArgumentError, match="mask rule teal, not wina"):
        harness.lm_from_model_args(f"model={folder},method=wina,spon={tmp_path / 'spon.safetensors'}")
    with pytest.raises(InvalidArgumentError, match="need the thresholds"):
        harness.harness_lm(model, tokenizer, spon=spon)
    with pytest.raises(InvalidArgumentError, match="unknown lm-eval model setting"):
        harness.harness_lm(model, tokenizer, thresholds, parallelize=True)
    other = load_model(folder)[0]
    with torch.no_grad():
        next(iter_projections(other)).module.weight[0] += 1  # another model, same shapes
    with pytest.raises(FingerprintError):
        harness.harness_lm(other, tokenizer, thresholds)
    with pytest.raises(InvalidArgumentError, match="unknown task"):
        harness.run_harness(f"model={folder}", ["no_such_task"], include_path=tasks_dir, include_defaults=False)
    with pytest.raises(InvalidArgumentError, match="not a folder"):
        harness.run_harness(f"model={folder}", ["sponlib_tiny"], include_path=tmp_path / "missing")
    with pytest.raises(InvalidArgumentError, match="non-empty list"):
        harness.run_harness(f"model={folder}", "sponlib_tiny", include_path=tasks_dir)
    with pytest.raises(InvalidArgumentError, match="limit"):
        harness.run_harness(f"model={folder}", ["sponlib_tiny"], include_path=tasks_dir, limit=0)
    assert hooks_left(model) == 0


def test_command_line(lm_eval, tiny, tiny_model_dir, tasks_dir, tmp_path, capsys):
    from sponlib.cli import main

    _, _, thresholds, _ = tiny
    thresholds.save(tmp_path / "thresholds.json")
    out = tmp_path / "harness.json"
    assert (
        main(
            [
                "harness",
                "--model",
                str(tiny_model_dir),
                "--thresholds",
                str(tmp_path / "thresholds.json"),
                "--tasks",
                "sponlib_tiny_cloze,sponlib_tiny_choice",
                "--include-path",
                str(tasks_dir),
                "--limit",
                "4",
                "--batch-size",
                "4",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "sponlib_tiny_cloze" in printed and "perplexity" in printed
    record = json.loads(out.read_text())
    assert record["kind"] == "lm_eval_harness" and record["model"]["architecture"] == "LlamaForCausalLM"
    assert set(record["lm_eval"]["results"]) == {"sponlib_tiny_cloze", "sponlib_tiny_choice"}
    assert record["lm_eval"]["config"]["sponlib"]["method"] == "teal"
    assert "samples" not in record["lm_eval"]
    assert main(["harness", "--model", str(tiny_model_dir), "--tasks", "sponlib_tiny", "--sparsity", "1"]) == 2
    assert "must be in [0, 1)" in capsys.readouterr().err


def test_imports_without_lm_eval_and_says_how_to_install_it():
    code = (
        "import sys; sys.modules['lm_eval'] = None\n"  # lm_eval and its submodules now fail to import
        "import sponlib.tasks.harness as h\n"
        "from sponlib.errors import MissingPackageError\n"
        "for call in (lambda: h.harness_lm(None, None), lambda: h.run_harness('model=x', ['t']), h.register,\n"
        "             lambda: h.lm_from_model_args('model=x')):\n"
        "    try:\n"
        "        call()\n"
        "    except MissingPackageError as e:\n"
        "        assert 'pip install \"lm-eval>=0.4.13,<0.5\"' in str(e), e\n"
        "    else:\n"
        "        raise SystemExit('no MissingPackageError')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
