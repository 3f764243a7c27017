"""Data parallelism over torch.distributed, on the CPU with the gloo backend: two processes must
give what one process gives on the same data.

Tolerances: the vectors of a two-process run differ from the one-process run only by the order of
floating-point sums (the batch is split in two, and the gradients are averaged). After 20 AdamW
steps at lr 0.03 the vectors, up to 0.3 in size, agree to 1e-5 (measured: 4e-7), validation KLs to a
relative 1e-6; perplexity sums per window in float64 and agrees to a relative 1e-9.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sponlib.distributed import Replicas, check_even_batch
from sponlib.errors import InvalidArgumentError

WORKER = Path(__file__).with_name("dp_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, processes=2, timeout=600):
    """`torchrun --nproc_per_node N ...`, one thread per process (the test machine has few cores)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(processes),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def single(*args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env={**env, "OMP_NUM_THREADS": "1"}
    )


def worker_result(tmp_path, what: str, processes: int) -> dict:
    out = tmp_path / f"{what}-{processes}.pt"
    run = (
        torchrun(str(WORKER), what, str(out), processes=processes)
        if processes > 1
        else single(str(WORKER), what, str(out))
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return torch.load(out, weights_only=False)


# ------------------------------------------------------------------ the one process


def test_one_process_is_the_identity():
    replicas = Replicas()
    assert not replicas.active and replicas.is_main and replicas.describe() == {"processes": 1, "backend": None}
    assert replicas.share(7) == slice(0, 7) and replicas.batch_share(5) == slice(0, 5)
    values = torch.tensor([1.5, 2.0])
    assert replicas.sum(values) is values and replicas.broadcast("x") == "x"
    grads = [torch.ones(3)]
    replicas.all_reduce_mean_(grads)
    assert torch.equal(grads[0], torch.ones(3))


@pytest.mark.parametrize("n, world", [(16, 2), (5, 2), (7, 3), (3, 3)])
def test_shares_cover_every_item_once_and_differ_by_at_most_one(n, world):
    shares = [Replicas(rank=r, world_size=world).share(n) for r in range(world)]
    covered = [i for s in shares for i in range(n)[s]]
    assert covered == list(range(n))
    sizes = [s.stop - s.start for s in shares]
    assert max(sizes) - min(sizes) <= 1


def test_uneven_work_is_refused_with_what_to_do():
    with pytest.raises(InvalidArgumentError, match="does not split evenly over 2 processes; use a multiple of 2"):
        check_even_batch(5, 2)
    with pytest.raises(InvalidArgumentError, match="1 validation windows cannot be shared by 2 processes"):
        Replicas(rank=0, world_size=2).share(1, "validation windows")


def test_a_half_launched_environment_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(InvalidArgumentError, match="start the processes with torchrun or accelerate launch"):
        Replicas.from_environment("cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(InvalidArgumentError, match="is not a number"):
        Replicas.from_environment("cpu")


# ------------------------------------------------------------------ two gloo processes


def test_two_processes_train_the_vectors_one_process_trains(tmp_path):
    two, one = worker_result(tmp_path, "train", 2), worker_result(tmp_path, "train", 1)
    assert two["agree"], "the two processes ended with different vectors"
    assert two["replicas"] == {"processes": 2, "backend": "gloo"} and two["training"]["processes"] == 2
    assert one["replicas"]["processes"] == 1
    largest = max(a.abs().max().item() for a in one["alphas"].values())
    assert largest > 0.05, "the vectors hardly moved: the comparison would prove nothing"
    assert two["alphas"].keys() == one["alphas"].keys()
    for name, alpha in one["alphas"].items():
        torch.testing.assert_close(two["alphas"][name], alpha, rtol=0, atol=1e-5)
    for (step2, kl2), (step1, kl1) in zip(
        two["training"]["history"]["val"], one["training"]["history"]["val"], strict=True
    ):
        assert step2 == step1 and kl2 == pytest.approx(kl1, rel=1e-6)
    history1, history2 = one["training"]["history"]["loss"], two["training"]["history"]["loss"]
    assert [s for s, _ in history2] == [s for s, _ in history1]
    assert [v for _, v in history2] == pytest.approx([v for _, v in history1], rel=1e-5)
    assert two["training"]["train_tokens"] == one["training"]["train_tokens"] == 20 * 4 * 32


def test_two_processes_refit_one_set_of_thresholds(tmp_path):
    """With the thresholds refitted under the vectors, every process must keep the same ones."""
    two = worker_result(tmp_path, "train-tracked", 2)
    assert two["agree"] and two["training"]["best_step"] > 0


def test_two_processes_measure_the_perplexity_and_sparsity_of_one(tmp_path):
    two, one = worker_result(tmp_path, "perplexity", 2), worker_result(tmp_path, "perplexity", 1)
    assert two["agree"]
    assert torch.equal(two["gathered"], torch.arange(10.0).view(5, 2))  # shares of 3 and 2 rows, in rank order
    for row2, row1 in zip(two["rows"], one["rows"], strict=True):
        assert row2.keys() == row1.keys() and row2["windows"] == 5
        for key, value in row1.items():
            assert row2[key] == (pytest.approx(value, rel=1e-9) if isinstance(value, float) else value), key


# ------------------------------------------------------------------ the command line


def sponlib_command(*args):
    return ["-m", "sponlib", *args]


@pytest.fixture(scope="module")
def tiny_calibration(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dp-cal") / "cal.safetensors"
    run = single(
        *sponlib_command(
            "calibrate",
            "--model",
            str(tiny_model_dir),
            "--out",
            str(out),
            "--windows",
            "4",
            "--window-len",
            "64",
            "--refine-windows",
            "2",
            "--refine-levels",
            "0.5",
        )
    )
    assert run.returncode == 0, run.stderr
    return out


def test_train_under_torchrun_writes_the_vectors_of_one_process(tiny_model_dir, tiny_calibration, tmp_path):
    train = [
        "train",
        "--model",
        str(tiny_model_dir),
        "--sparsity",
        "0.5",
        "--calibration",
        str(tiny_calibration),
        "--train-windows",
        "8",
        "--train-window-len",
        "64",
        "--stride",
        "32",
        "--val-windows",
        "2",
        "--steps",
        "6",
        "--train-batch",
        "4",
        "--eval-every",
        "3",
        "--lr",
        "0.01",
        "--no-track-sparsity",
    ]
    two = torchrun(
        *sponlib_command(
            *train, "--out", str(tmp_path / "two" / "spon.safetensors"), "--json", str(tmp_path / "two.json")
        )
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote") == 2  # rank 0 alone reports (and writes) the vectors and the record
    one = single(*sponlib_command(*train, "--out", str(tmp_path / "one" / "spon.safetensors")))
    assert one.returncode == 0, one.stderr
    from sponlib.spon import SponVectors

    vectors = {n: SponVectors.load(tmp_path / n / "spon.safetensors") for n in ("one", "two")}
    assert vectors["two"].meta["training"]["processes"] == 2 and vectors["two"].meta["training"]["backend"] == "gloo"
    for name, alpha in vectors["one"].alphas.items():
        torch.testing.assert_close(vectors["two"].alphas[name], alpha, rtol=0, atol=1e-5)
    record = json.loads((tmp_path / "two.json").read_text())
    assert record["training"]["processes"] == 2 and record["training"]["train_tokens"] == 6 * 4 * 64
    assert sorted(os.listdir(tmp_path / "two")) == ["spon.safetensors", "spon.thresholds.json"]  # no checkpoint left


def test_eval_under_accelerate_launch_measures_what_one_process_does(tiny_model_dir, tiny_calibration, tmp_path):
    evaluate = [
        "eval",
        "--model",
        str(tiny_model_dir),
        "--corpus",
        "persuasion",
        "--windows",
        "5",
        "--window-len",
        "64",
        "--sparsity",
        "0.5",
        "--calibration",
        str(tiny_calibration),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf")}  # no user accelerate config
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(free_port()),
            "-m",
            "sponlib",
            *evaluate,
            "--json",
            str(tmp_path / "two.json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one = single(*sponlib_command(*evaluate, "--json", str(tmp_path / "one.json")))
    assert one.returncode == 0, one.stderr
    records = {n: json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two")}
    assert (records["two"]["processes"], records["one"]["processes"]) == (2, 1)
    [row2], [row1] = records["two"]["results"], records["one"]["results"]
    assert row2["windows"] == row1["windows"] == 5
    assert row2["ppl"] == pytest.approx(row1["ppl"], rel=1e-9)
    assert row2["measured"] == pytest.approx(row1["measured"], rel=1e-12)


def test_launched_commands_refuse_what_they_cannot_share(tiny_model_dir, tmp_path):
    env = {**os.environ, "WORLD_SIZE": "2"}
    run = subprocess.run(
        [
            sys.executable,
            *sponlib_command("calibrate", "--model", str(tiny_model_dir), "--out", str(tmp_path / "c.safetensors")),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 2 and "`calibrate` runs in one process" in run.stderr
    run = subprocess.run(
        [
            sys.executable,
            *sponlib_command(
                "train",
                "--model",
                str(tiny_model_dir),
                "--sparsity",
                "0.5",
                "--train-batch",
                "3",
                "--out",
                str(tmp_path / "s.safetensors"),
            ),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 2 and "does not split evenly over 2 processes" in run.stderr
    run = torchrun(
        *sponlib_command("eval", "--model", str(tiny_model_dir), "--corpus", "persuasion", "--device-map", "auto")
    )
    assert run.returncode != 0 and "--device-map spreads one model over the devices of one process" in run.stderr
