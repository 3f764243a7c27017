"""From parsed arguments to what the commands work on: the model (on a device, spread by a device
map, or one per data-parallel process), text windows, a calibration, the mask, trained vectors
and training settings. Each check that needs no model runs before the model loads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from ..artifacts import artifacts_dir, shipped_calibration_path, spon_files
from ..data import hub_dataset, load_corpus, load_windows, text_file
from ..distributed import Replicas
from ..errors import SponlibError
from ..io import sha256_file
from ..masks import DEFAULT_RULE, Mask, MaskRequest, with_rotations
from ..mixtures import mixture_windows, parse_sources
from ..models.loading import DEVICE_MAP_STRATEGIES, load_model, resolve_device, resolve_dtype
from ..models.placement import placement_record
from ..paths import display_path
from ..records import write_result
from ..sparsity.calibration import Calibration, calibrate
from ..sparsity.rules import split_method
from ..spon.training import TrainConfig
from ..spon.vectors import load_spon

# ------------------------------------------------------------------ the model


def device_map(text: str | None):
    """--device-map: a strategy name, or a JSON file of module name -> device."""
    if text is None or text in DEVICE_MAP_STRATEGIES:
        return text
    if not os.path.isfile(text):
        raise SponlibError(
            f"--device-map {text!r} is neither a strategy ({', '.join(DEVICE_MAP_STRATEGIES)}) nor a JSON file"
        )
    try:
        with open(text) as f:
            mapping = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SponlibError(f"--device-map file {text} is not valid JSON ({e})") from None
    if not isinstance(mapping, dict) or not mapping:
        raise SponlibError(f"--device-map file {text} must hold one object of module name -> device")
    return mapping


def load_placed(args, replicas: Replicas):
    """The model on --device (under torchrun: each process's own GPU) or spread by --device-map."""
    mapping = device_map(args.device_map)
    if mapping is None:
        if args.max_memory is not None or args.offload_folder is not None:
            raise SponlibError("--max-memory and --offload-folder go with --device-map")
        return load_model(args.model, dtype=args.dtype, device=replicas.device(args.device))
    if replicas.active:
        raise SponlibError(
            "--device-map spreads one model over the devices of one process; under torchrun each "
            "process holds a whole model on its own GPU (--device cuda). Use one or the other"
        )
    return load_model(
        args.model,
        dtype=args.dtype,
        device=args.device,
        device_map=mapping,
        max_memory=args.max_memory,
        offload_folder=args.offload_folder,
    )


def placement_payload(model, replicas: Replicas) -> dict:
    """Where the run computed, for result records."""
    return {"placement": placement_record(model), **replicas.describe()}


# ------------------------------------------------------------------ text


def text_sources(args) -> list:
    """The TextSources named on the command line, in order; an error if there are none."""
    sources = [load_corpus(n) for n in args.corpus] + [text_file(p) for p in args.text_file]
    if args.hf_dataset:
        sources.append(hub_dataset(args.hf_dataset, args.hf_config, args.hf_split, args.hf_column))
    if not sources:
        raise SponlibError("name some text: --corpus NAME, --text-file PATH or --hf-dataset PATH")
    return sources


def windows_of(args, tokenizer, sources) -> list:
    """--windows windows of --window-len tokens of each source, picked with --seed."""
    return [load_windows(source, tokenizer, args.window_len, args.windows, args.seed) for source in sources]


def training_text(args, tokenizer):
    """Training windows for a count (None: --train-windows) and the validation windows."""
    train_sources, val_sources = parse_sources(args.train_corpus), parse_sources(args.val_corpus)
    cache = {}

    def train_windows(n=None):
        n = n or args.train_windows
        if n not in cache:
            stride = args.stride or max(1, args.train_window_len // 4)
            cache[n] = mixture_windows(train_sources, tokenizer, args.train_window_len, n, args.train_seed, stride)
        return cache[n]

    val = mixture_windows(val_sources, tokenizer, args.train_window_len, args.val_windows, args.train_seed)
    return train_windows, val


# TrainConfig fields whose option has another name (--train-batch, --train-seed: beside the
# calibration's and the test text's own); every other field is the option of its name.
TRAINING_OPTIONS = {"batch_size": "train_batch", "seed": "train_seed"}


def train_config(args) -> TrainConfig:
    """The TrainConfig the training options give."""
    fields = (f.name for f in dataclasses.fields(TrainConfig))
    return TrainConfig(**{name: getattr(args, TRAINING_OPTIONS.get(name, name)) for name in fields})


# ------------------------------------------------------------------ calibration and masks


def calibrate_from(args, model, tokenizer, greedy_windows: int, greedy_scores=None, prefix: str = "") -> Calibration:
    """Calibrate on the text the calibration options name (--corpus, ... or --calib-corpus, ...)."""
    attr = prefix.replace("-", "_")
    corpus, windows, window_len, seed = (
        getattr(args, attr + key) for key in ("corpus", "windows", "window_len", "seed")
    )
    text = load_windows(load_corpus(corpus), tokenizer, window_len, windows, seed)
    return calibrate(
        model,
        text,
        refine_windows=args.refine_windows,
        refine_levels=args.refine_levels,
        greedy_windows=greedy_windows,
        greedy_scores=greedy_scores,
        meta={"corpus": corpus, "seed": seed},
    )


def calibration_for(args, model, tokenizer, methods) -> Calibration:
    """--calibration if the file exists, else the one shipped for a known model; with neither,
    calibrate first (with greedy allocations when a greedy rule is asked) and write the result
    to --calibration when one was named."""
    path = args.calibration or shipped_calibration_path(model)
    if path is not None and os.path.exists(path):
        return Calibration.load(path, model)
    scores = sorted({split_method(m)[0] for m in methods if split_method(m)[1] == "greedy"})
    greedy_windows = args.greedy_windows if args.greedy_windows is not None else (1 if scores else 0)
    print("calibrating first (save it with `python -m sponlib calibrate --out FILE` to reuse it)", file=sys.stderr)
    calibration = calibrate_from(args, model, tokenizer, greedy_windows, scores, prefix="calib-")
    if args.calibration:
        calibration.save(args.calibration)
    return calibration


def mask_request(args) -> MaskRequest:
    """The mask --sparsity, --method, --calibration, --thresholds and --spon name, checked before
    the model loads (a command without some of these options leaves them out)."""
    return MaskRequest(
        args.sparsity, args.method, args.calibration, getattr(args, "thresholds", None), getattr(args, "spon", None)
    )


def resolve(args, request: MaskRequest, model, tokenizer, replicas: Replicas) -> Mask:
    """The requested mask on the model. Under torchrun rank 0 alone loads or calibrates, and the
    others receive its mask: every process masks alike."""
    mask = None
    if replicas.is_main:
        if request.needs_calibration:
            calibration = calibration_for(args, model, tokenizer, [request.rule or DEFAULT_RULE])
            request = MaskRequest(request.sparsity, request.rule, calibration)
        mask = with_rotations(request.resolve(model), model, tokenizer)  # larosa's, from its text
    return replicas.broadcast(mask)


def trained(args, model) -> tuple[dict, Calibration, dict]:
    """The SPON vectors of --spon-dir (level -> (vectors, thresholds)), the calibration (--calibration
    or the shipped one), and where both came from, for the record: the files, and the vectors'
    hashes (so that vectors of a family whose weights may not be committed stay identifiable)."""
    files = spon_files(args.spon_dir or artifacts_dir(model), args.method, args.levels)
    spon = {level: load_spon(path, model) for level, path in files.items()}
    calibration_path = args.calibration or shipped_calibration_path(model)
    if calibration_path is None:
        raise SponlibError("name a calibration file: --calibration FILE (make one with `python -m sponlib calibrate`)")
    calibration = Calibration.load(calibration_path, model)
    provenance = {
        "calibration": display_path(calibration_path),
        "calibration_sha256": sha256_file(calibration_path),
        "spon_files": {f"{level:g}": display_path(path) for level, path in files.items()},
        "spon_sha256": {f"{level:g}": sha256_file(path) for level, path in files.items()},
    }
    return spon, calibration, provenance


# ------------------------------------------------------------------ output


def write_record(args, kind: str, payload: dict, model) -> None:
    """The --json record of a single-process command, on the --device and --dtype it ran with."""
    write_result(
        args.json, kind, payload, model=model, device=resolve_device(args.device), dtype=resolve_dtype(args.dtype)
    )


def print_table(columns, rows) -> None:
    """Columns (title, width): a positive width left-aligns its cells, a negative one right-aligns.
    Rows hold the cells as strings."""

    def line(cells) -> str:
        return " ".join(f"{c:<{w}}" if w > 0 else f"{c:>{-w}}" for c, (_, w) in zip(cells, columns))

    print(line([title for title, _ in columns]))
    for cells in rows:
        print(line(cells))
