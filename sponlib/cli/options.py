"""The options several commands share, declared once: model, placement, text, windows, trained
vectors, calibration and training. Defaults come from the protocol (sponlib.experiments.protocol)
and the library's own defaults, so that `--help` and the records agree with them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from ..errors import InvalidArgumentError
from ..experiments import protocol
from ..models.adapters import ROLES
from ..models.loading import DEVICE_MAP_STRATEGIES, resolve_dtype
from ..sparsity.rules import METHODS
from ..spon.distillation import PRECISIONS
from ..spon.training import TrainConfig
from ..spon.vectors import check_roles


def floats(text: str) -> tuple[float, ...]:
    """'0.25,0.5' -> (0.25, 0.5); '' -> () (empty items dropped)."""
    return tuple(float(x) for x in text.split(",") if x)


def joined(values) -> str:
    """(0.25, 0.5) -> '0.25,0.5': a default as it is typed on the command line, for --help."""
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def names(text: str) -> list[str]:
    """'teal,wina' -> ['teal', 'wina'] (empty items dropped)."""
    return [item for item in text.split(",") if item]


def one_or_more(allowed: Sequence[str], what: str) -> Callable[[str], list[str]]:
    """An argparse type for a comma list drawn from a fixed set: 'teal,wina' -> ['teal', 'wina'];
    an unknown or missing item is an argparse error that names the allowed values. The set rides
    on the type as `.allowed`, for --help texts and the tests."""
    allowed = tuple(allowed)

    def parse(text: str) -> list[str]:
        items = names(text)
        if not items:
            raise argparse.ArgumentTypeError(f"name at least one {what}: {', '.join(allowed)}")
        for item in items:
            if item not in allowed:
                raise argparse.ArgumentTypeError(f"unknown {what} {item!r}; choose from {', '.join(allowed)}")
        return items

    parse.allowed = allowed
    parse.__name__ = what  # argparse names the type by it in its messages
    return parse


def dtype_name(text: str) -> str:
    """A dtype name as load_model takes it, checked by the library (its error lists the names)."""
    try:
        resolve_dtype(text)
    except InvalidArgumentError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def spon_roles(text: str) -> tuple[str, ...]:
    """'q,k,down' -> ('q', 'k', 'down'): projections that get SPON vectors, checked by the library."""
    try:
        return check_roles(names(text))
    except InvalidArgumentError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


spon_roles.allowed = ROLES


def memory_limits(text: str) -> dict:
    """'0=70GiB,cpu=200GiB' -> {0: '70GiB', 'cpu': '200GiB'}."""
    limits = {}
    for item in text.split(","):
        device, sep, size = item.partition("=")
        if not sep or not device.strip() or not size.strip():
            raise argparse.ArgumentTypeError(f"{item!r} is not DEVICE=SIZE (e.g. 0=70GiB or cpu=200GiB)")
        device = device.strip()
        limits[int(device) if device.isdigit() else device] = size.strip()
    return limits


def add_model(p: argparse.ArgumentParser, device: bool = True) -> None:
    p.add_argument(
        "--model",
        default=protocol.MODEL,
        help=f"known name, local Hugging Face folder or hub id (default: {protocol.MODEL})",
    )
    add_dtype(p, protocol.DTYPE)
    if device:
        p.add_argument(
            "--device",
            default="cpu",
            help="cpu (default), cuda, cuda:N or auto; under torchrun, cuda is each process's own GPU",
        )


def add_dtype(p: argparse.ArgumentParser, default: str) -> None:
    """--dtype, checked by the library's own dtype names (float32/fp32, bfloat16/bf16, float16/fp16)."""
    p.add_argument(
        "--dtype",
        type=dtype_name,
        default=default,
        help="weights and activations: float32, bfloat16 or float16 (also fp32, bf16, fp16; default %(default)s)",
    )


def add_placement(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("a model larger than one device (instead of --device)")
    g.add_argument(
        "--device-map",
        metavar="STRATEGY|FILE",
        help=f"spread the model with accelerate: {', '.join(DEVICE_MAP_STRATEGIES)}, or a JSON "
        "file of module name -> device (0, cuda:1, cpu, disk) (default: all on --device)",
    )
    g.add_argument(
        "--max-memory",
        type=memory_limits,
        metavar="DEVICE=SIZE,...",
        help="per-device limits for a strategy, e.g. 0=70GiB,1=70GiB,cpu=200GiB",
    )
    g.add_argument("--offload-folder", metavar="DIR", help="where modules mapped to disk are kept")


def add_text(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("text (at least one; each is evaluated separately)")
    g.add_argument(
        "--corpus",
        action="append",
        default=[],
        metavar="NAME",
        help="named corpus (see `python -m sponlib corpora`); repeatable",
    )
    g.add_argument(
        "--text-file", action="append", default=[], metavar="PATH", help="UTF-8 text file, .txt or .txt.gz; repeatable"
    )
    g.add_argument("--hf-dataset", metavar="PATH", help="datasets id or local folder (needs the hub for ids)")
    g.add_argument("--hf-config", default=None, help="data set configuration, e.g. wikitext-2-raw-v1")
    g.add_argument("--hf-split", default="test", help="split of --hf-dataset to read (default %(default)s)")
    g.add_argument("--hf-column", default="text", help="column of --hf-dataset holding the text (default %(default)s)")


def add_window_len(p, flag: str) -> None:
    """Tokens per window, of the test, calibration or training text."""
    p.add_argument(
        flag, type=int, default=protocol.WINDOW_LEN, help=f"tokens per window (default {protocol.WINDOW_LEN})"
    )


def add_windows(p: argparse.ArgumentParser, windows: int = protocol.WINDOWS, seed_of: str = "the windows") -> None:
    p.add_argument("--windows", type=int, default=windows, help=f"windows per text, 0 for all (default {windows})")
    add_window_len(p, "--window-len")
    p.add_argument(
        "--seed", type=int, default=protocol.SEED, help=f"seed that picks {seed_of} (default {protocol.SEED})"
    )


def add_trained(p: argparse.ArgumentParser) -> None:
    """The SPON vectors and calibration of commands that evaluate trained vectors."""
    p.add_argument("--method", default="teal", choices=METHODS, help="mask rule (default teal)")
    p.add_argument(
        "--levels",
        type=floats,
        default=None,
        help="comma-separated levels (default: every level with vectors in --spon-dir)",
    )
    p.add_argument(
        "--spon-dir", default=None, help="folder of spon-<rule>-<level>.safetensors (default data/artifacts/<model>)"
    )
    p.add_argument("--calibration", default=None, help="calibration file (default: the shipped one)")


def add_calibration(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """The text and passes of a calibration. Commands that also take test text name its options
    --calib-corpus, --calib-windows, ... (`prefix="calib-"`)."""
    g = p.add_argument_group("calibration (text is never the test novel)")
    text = protocol.CALIBRATION_TEXT
    g.add_argument(f"--{prefix}corpus", default=text, help=f"calibration corpus (default {text})")
    g.add_argument(
        f"--{prefix}windows",
        type=int,
        default=protocol.WINDOWS,
        help=f"windows for statistics (default {protocol.WINDOWS})",
    )
    add_window_len(g, f"--{prefix}window-len")
    g.add_argument(
        f"--{prefix}seed",
        type=int,
        default=protocol.SEED,
        help="seed that picks the windows of this text (default %(default)s)",
    )
    g.add_argument(
        "--refine-windows",
        type=int,
        default=8,
        help="windows for the sparse-aware refinement, one batch (default 8)",
    )
    g.add_argument(
        "--refine-levels",
        type=floats,
        default=protocol.SWEEP_LEVELS,
        help="comma-separated levels refined under sparsity (default: the protocol levels)",
    )
    g.add_argument(
        "--greedy-windows",
        type=int,
        default=None,
        help="windows for the greedy allocation; 0 skips it (default: 1 when a greedy rule is used)",
    )


def add_genre_run(p: argparse.ArgumentParser) -> None:
    """The model, test windows, calibration and SPON training settings of the experiments that
    train on the genre protocol (robust, comparisons)."""
    add_model(p)
    add_windows(p)
    p.add_argument("--calibration", metavar="FILE", help="calibration file (default: the shipped one)")
    add_calibration(p, prefix="calib-")
    p.add_argument("--train-windows", type=int, default=1024, help="distinct training windows (default 1024)")
    p.add_argument("--steps", type=int, default=250, help="optimiser steps per training run (default 250)")
    p.add_argument("--train-batch", type=int, default=32, help="windows per step (default 32)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 0.001)")
    p.add_argument("--batch-size", type=int, default=16, help="windows per evaluation forward pass (default 16)")


def add_training(p: argparse.ArgumentParser) -> None:
    """The training and validation text and every setting of a SPON training run (TrainConfig)."""
    d = TrainConfig()
    g = p.add_argument_group("SPON training (training and validation text are never the test novel)")
    train, val = protocol.TRAIN_TEXT, protocol.VALIDATION_TEXT
    g.add_argument(
        "--train-corpus",
        default=train,
        help=f"training text: a named corpus or a text file, several joined by '+' for a mixture (default {train})",
    )
    g.add_argument("--train-windows", type=int, default=1024, help="distinct training windows (default 1024)")
    add_window_len(g, "--train-window-len")
    g.add_argument(
        "--stride",
        type=int,
        default=None,
        help="tokens between training window starts; windows overlap below the length "
        "(default: a quarter of the length)",
    )
    g.add_argument("--val-corpus", default=val, help=f"validation text, named as the training text (default {val})")
    g.add_argument("--val-windows", type=int, default=16, help="validation windows (default 16)")
    g.add_argument("--steps", type=int, default=d.steps, help=f"optimiser steps (default {d.steps})")
    g.add_argument("--train-batch", type=int, default=d.batch_size, help=f"windows per step (default {d.batch_size})")
    g.add_argument(
        "--micro-batch",
        type=int,
        default=d.micro_batch,
        help="windows per forward pass, when a step's windows do not fit in memory at once (default: "
        "all of a process's share); the vectors are the same",
    )
    add_optimisation(g, d)


def add_optimisation(g, d: TrainConfig) -> None:
    """The optimiser, schedule, precision, threshold refits and projections of SPON training."""
    g.add_argument("--lr", type=float, default=d.lr, help=f"peak AdamW learning rate (default {d.lr})")
    g.add_argument(
        "--weight-decay",
        type=float,
        default=d.weight_decay,
        help="AdamW weight decay on the vectors (default %(default)s)",
    )
    g.add_argument("--warmup", type=float, default=d.warmup, help="share of steps warming up (default %(default)s)")
    g.add_argument(
        "--eval-every", type=int, default=d.eval_every, help="steps between validations (default %(default)s)"
    )
    g.add_argument(
        "--checkpoint-every",
        type=int,
        default=d.checkpoint_every,
        help="steps between checkpoints, 0 for none (default %(default)s)",
    )
    g.add_argument(
        "--train-seed",
        type=int,
        default=d.seed,
        help="seed of the training windows and their order (default %(default)s)",
    )
    add_precision(g, d.precision)
    g.add_argument(
        "--no-track-sparsity",
        dest="track_sparsity",
        action="store_false",
        help="keep the thresholds fixed instead of refitting them under the vectors before each validation "
        "(default: refit them)",
    )
    g.add_argument(
        "--refit-windows",
        type=int,
        default=d.refit_windows,
        help=f"training windows of each threshold refit (default {d.refit_windows})",
    )
    g.add_argument(
        "--roles",
        type=spon_roles,
        default=d.roles,
        metavar="ROLE,...",
        help=f"comma-separated projections that get vectors, of {','.join(ROLES)} (default all)",
    )


def add_precision(p, default: str) -> None:
    """--precision of SPON training, one of the library's precisions."""
    p.add_argument(
        "--precision",
        default=default,
        choices=PRECISIONS,
        help="training precision: auto is bf16 autocast on CUDA and fp32 elsewhere (default %(default)s)",
    )


SAFEGUARD_TEXT = protocol.ROBUST_VALIDATION_TEXT  # the held-out Brown genres (sponlib.data.VALIDATION_GENRES)
SAFEGUARD_WINDOWS = 32


def add_safeguard(p: argparse.ArgumentParser) -> None:
    """The held-out text on which `train` scales the vectors down until they do not hurt it."""
    g = p.add_argument_group("safeguard (after training: the vectors scaled down until not worse than the mask)")
    g.add_argument(
        "--safeguard-text",
        default=SAFEGUARD_TEXT,
        metavar="NAME",
        help="held-out text of another domain than the training text: a named corpus or a .txt/.txt.gz file; "
        f"none turns the safeguard off (default {SAFEGUARD_TEXT})",
    )
    g.add_argument(
        "--safeguard-windows",
        type=int,
        default=SAFEGUARD_WINDOWS,
        help=f"its windows, of --train-window-len tokens picked with --train-seed (default {SAFEGUARD_WINDOWS}; "
        "0 for all)",
    )
