"""Command line: `python -m sponlib <command>`, one sub-command per stage.

    prepare    convert and cache a known model (done on first use anyway)
    corpora    list the named corpora
    calibrate  statistics of every projection input, from which thresholds are read
    eval       perplexity on corpora or text files, dense or sparsified, optionally as JSON
    sweep      perplexity dense and for each mask rule at each level (data/results/sparsity_sweep.json)
    train      train SPON vectors for one mask rule and level
    export     fold SPON vectors into biases and write a plain Hugging Face checkpoint
    recovery   train and evaluate SPON across levels, rules and ablations (data/results/spon_recovery.json)
    analyse    layer-by-layer comparison of dense, masked and SPON (drift, CKA, KL)
    generalize shipped SPON vectors on many texts: recovery per Brown genre (data/results/spon_generalization.json)
    tasks      cloze, next-sentence choice, knowledge probe and generation drift (data/results/tasks.json)
    harness    lm-evaluation-harness tasks on a dense, masked or SPON model (optional extra `harness`)
    readme     regenerate the README's result tables from data/results/
    figures    export the README's figures as PNG from data/results/ (docs/figures/), through chromium

Errors sponlib raises on purpose print as one line (exit status 2), without a traceback.

Beyond one GPU: calibrate, eval and train take --device-map (one process, the model spread over
devices by accelerate); eval and train also run as data-parallel processes under torchrun or
`accelerate launch`, where rank 0 alone prints and writes.
"""

from __future__ import annotations

import argparse
import sys
import time

from .calibration import PROTOCOL_LEVELS
from .errors import SponlibError


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m",
                   help="known name, local Hugging Face folder or hub id (default: smollm2-135m)")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto; under torchrun, "
                   "cuda is each process's own GPU")


def _add_placement_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("a model larger than one device (instead of --device)")
    g.add_argument("--device-map", metavar="STRATEGY|FILE",
                   help="spread the model with accelerate: auto, balanced, balanced_low_0, sequential, or a JSON "
                        "file of module name -> device (0, cuda:1, cpu, disk)")
    g.add_argument("--max-memory", type=_memory_limits, metavar="DEVICE=SIZE,...",
                   help="per-device limits for a strategy, e.g. 0=70GiB,1=70GiB,cpu=200GiB")
    g.add_argument("--offload-folder", metavar="DIR", help="where modules mapped to disk are kept")


def _memory_limits(text: str) -> dict:
    """'0=70GiB,cpu=200GiB' -> {0: '70GiB', 'cpu': '200GiB'}."""
    limits = {}
    for item in text.split(","):
        device, sep, size = item.partition("=")
        if not sep or not device.strip() or not size.strip():
            raise argparse.ArgumentTypeError(f"{item!r} is not DEVICE=SIZE (e.g. 0=70GiB or cpu=200GiB)")
        device = device.strip()
        limits[int(device) if device.isdigit() else device] = size.strip()
    return limits


def _add_text_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("text (at least one; each is evaluated separately)")
    g.add_argument("--corpus", action="append", default=[], metavar="NAME",
                   help="named corpus (see `python -m sponlib corpora`); repeatable")
    g.add_argument("--text-file", action="append", default=[], metavar="PATH",
                   help="UTF-8 text file, .txt or .txt.gz; repeatable")
    g.add_argument("--hf-dataset", metavar="PATH", help="datasets id or local folder (needs the hub for ids)")
    g.add_argument("--hf-config", default=None, help="data set configuration, e.g. wikitext-2-raw-v1")
    g.add_argument("--hf-split", default="test")
    g.add_argument("--hf-column", default="text")


def _add_window_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--windows", type=int, default=64, help="windows per text, 0 for all (default 64)")
    p.add_argument("--window-len", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed that picks the windows (default 0)")


def _add_trained_args(p: argparse.ArgumentParser) -> None:
    """The SPON vectors and calibration of commands that evaluate trained vectors (analyse, generalize)."""
    p.add_argument("--method", default="teal", help="mask rule (default teal)")
    p.add_argument("--levels", type=_floats, default=None,
                   help="comma-separated levels (default: every level with vectors in --spon-dir)")
    p.add_argument("--spon-dir", default=None,
                   help="folder of spon-<rule>-<level>.safetensors (default data/artifacts/<model>)")
    p.add_argument("--calibration", default=None, help="calibration file (default: the shipped one)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sponlib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="convert and cache a known model")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--force", action="store_true", help="convert again even if cached")
    p.set_defaults(run=cmd_prepare)

    p = sub.add_parser("corpora", help="list the named corpora")
    p.set_defaults(run=cmd_corpora)

    p = sub.add_parser("calibrate", help="calibrate thresholds for every projection")
    _add_model_args(p)
    _add_placement_args(p)
    _add_calibration_args(p)
    p.add_argument("--out", required=True, help="calibration file to write (.safetensors)")
    p.add_argument("--json", metavar="OUT", help="also write a record: time taken, and measured sparsity "
                   "on held-out text with and without the sparse-aware refinement")
    p.add_argument("--check-corpus", default="persuasion", help="held-out text for --json (default persuasion)")
    p.add_argument("--check-windows", type=int, default=4, help="held-out windows for --json (default 4)")
    p.set_defaults(run=cmd_calibrate)

    p = sub.add_parser("eval", help="perplexity over non-overlapping windows, dense or sparsified")
    _add_model_args(p)
    _add_placement_args(p)
    _add_text_args(p)
    _add_window_args(p)
    p.add_argument("--sparsity", type=float, help="target sparsity in [0, 1); omit for the dense model")
    p.add_argument("--method", default="teal", help="mask rule: teal (default), wina, greedy, greedy-wina")
    p.add_argument("--calibration", metavar="FILE",
                   help="calibration file; calibrated first (and written there) if missing "
                        "(default: the one shipped in data/artifacts/ for a known model)")
    p.add_argument("--spon", metavar="FILE", help="SPON vectors (their thresholds come with them; "
                   "--sparsity and --method, if given, must agree)")
    p.add_argument("--thresholds", metavar="FILE", help="a thresholds file instead of a calibration, e.g. "
                   "the sparsity_thresholds.json of an exported SPON model")
    _add_calibration_args(p, prefix="calib-")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default 4)")
    p.add_argument("--json", metavar="OUT", help="write the result record here (atomically)")
    p.set_defaults(run=cmd_eval, data_parallel=True)

    p = sub.add_parser("train", help="train SPON vectors for one mask rule and level")
    _add_model_args(p)
    _add_placement_args(p)
    p.add_argument("--sparsity", type=float, required=True, help="target sparsity in [0, 1)")
    p.add_argument("--method", default="teal", help="mask rule: teal (default), wina, greedy, greedy-wina")
    p.add_argument("--out", required=True, help="SPON file to write (.safetensors); its thresholds go next to it")
    p.add_argument("--calibration", metavar="FILE", help="calibration file (default: the shipped one, "
                   "else calibrated first and written here)")
    _add_calibration_args(p, prefix="calib-")
    _add_training_args(p)
    p.add_argument("--restart", action="store_true", help="ignore a checkpoint left by an interrupted run")
    p.add_argument("--json", metavar="OUT", help="also write a record of the run (throughput, validation KL)")
    p.set_defaults(run=cmd_train, data_parallel=True)

    p = sub.add_parser("export", help="fold SPON vectors into biases and write a Hugging Face checkpoint")
    p.add_argument("--spon", required=True, metavar="FILE", help="SPON file (from `train`)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (must not hold anything else)")
    p.add_argument("--model", default=None, help="model the vectors were trained on (default: as recorded in the file)")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("recovery", help="SPON recovery across levels, mask rules and ablations")
    _add_model_args(p)
    p.add_argument("--levels", type=_floats, default=(0.25, 0.4, 0.5, 0.6, 0.7), help="teal levels")
    p.add_argument("--only", default=None, help="comma-separated experiment groups: levels,rules,roles,data")
    p.add_argument("--test-corpus", action="append", default=None, metavar="NAME",
                   help="in-domain then out-of-domain test text (default persuasion, brown)")
    _add_window_args(p)
    p.add_argument("--calibration", metavar="FILE", help="calibration file (default: the shipped one)")
    _add_calibration_args(p, prefix="calib-")
    _add_training_args(p)
    p.add_argument("--tune-lrs", type=_floats, default=(), help="comma-separated learning rates to try first on "
                   "validation KL (teal 0.5); the best is used for every run")
    p.add_argument("--tune-steps", type=int, default=100)
    p.add_argument("--artifacts", default=None, help="folder for the teal vectors (default data/artifacts/<model>)")
    p.add_argument("--json", required=True, metavar="OUT")
    p.set_defaults(run=cmd_recovery)

    p = sub.add_parser("sweep", help="perplexity dense and for each mask rule at each level")
    _add_model_args(p)
    _add_text_args(p)
    _add_window_args(p)
    p.add_argument("--levels", type=_floats, default=PROTOCOL_LEVELS, help="comma-separated targets")
    p.add_argument("--methods", type=lambda text: text.split(","), default=["teal", "wina", "greedy"],
                   help="comma-separated mask rules (default teal,wina,greedy)")
    p.add_argument("--calibration", metavar="FILE", required=True,
                   help="calibration file; made (with greedy allocations) and written there if missing")
    _add_calibration_args(p, prefix="calib-")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--json", metavar="OUT", required=True)
    p.set_defaults(run=cmd_sweep)

    p = sub.add_parser("analyse", help="layer-by-layer comparison of dense, masked and SPON (drift, CKA, KL)")
    _add_model_args(p)
    p.add_argument("--corpus", default="persuasion", help="text to analyse (default persuasion)")
    p.add_argument("--windows", type=int, default=8, help="windows of that text (default 8)")
    p.add_argument("--window-len", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the windows and token sample (default 0)")
    _add_trained_args(p)
    p.add_argument("--main-level", type=float, default=0.5, help="level of the heatmaps and PCA (default 0.5)")
    p.add_argument("--max-tokens", type=int, default=2048, help="tokens compared per variant (default 2048)")
    p.add_argument("--lens-tokens", type=int, default=512,
                   help="tokens of the logit lens, spread over the windows (default 512)")
    p.add_argument("--json", required=True, help="where to write the record")
    p.set_defaults(run=cmd_analyse)

    p = sub.add_parser("generalize", help="shipped SPON vectors on many texts: recovery per Brown genre")
    _add_model_args(p)
    p.add_argument("--corpus", action="append", default=[], metavar="NAME",
                   help="text to evaluate, the in-domain one first; repeatable (default: persuasion and every "
                        "brown-<genre>)")
    p.add_argument("--windows", type=int, default=32, help="windows per text (default 32)")
    p.add_argument("--window-len", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed that picks the windows (default 0)")
    _add_trained_args(p)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", required=True, help="where to write the record")
    p.set_defaults(run=cmd_generalize)

    p = sub.add_parser("harness", help="lm-evaluation-harness tasks (hellaswag, lambada, ...) on a dense, masked "
                       "or SPON model (needs lm-eval: pip install 'sponlib[harness]')")
    _add_model_args(p)
    p.add_argument("--tasks", type=lambda text: [t for t in text.split(",") if t], required=True,
                   help="comma-separated lm-eval task, group or tag names, e.g. hellaswag,lambada_openai")
    p.add_argument("--sparsity", type=float, help="target sparsity in [0, 1); omit for the dense model")
    p.add_argument("--method", default=None, help="mask rule: teal (default), wina, greedy, greedy-wina")
    p.add_argument("--calibration", metavar="FILE", help="calibration file (default: the one shipped for a known model)")
    p.add_argument("--spon", metavar="FILE|shipped", help="SPON vectors, or `shipped` for those shipped at --sparsity "
                   "(their thresholds come with them)")
    p.add_argument("--thresholds", metavar="FILE", help="a thresholds file instead of a calibration")
    p.add_argument("--include-path", action="append", default=[], metavar="DIR",
                   help="folder of extra task YAML files; repeatable")
    p.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: each task's own)")
    p.add_argument("--limit", type=float, default=None,
                   help="examples per task, or a share of them below 1: for quick looks, not results")
    p.add_argument("--batch-size", type=int, default=8, help="requests per forward pass (default 8)")
    p.add_argument("--json", metavar="OUT", help="write lm-eval's results (no per-example outputs) with provenance")
    p.set_defaults(run=cmd_harness)

    p = sub.add_parser("tasks", help="task accuracy, knowledge and generation drift: dense, masked and SPON")
    _add_model_args(p)
    _add_trained_args(p)
    p.add_argument("--cloze", type=int, default=200, help="cloze passages per held-out text (default 200)")
    p.add_argument("--choice", type=int, default=250, help="next-sentence choices per held-out text (default 250)")
    p.add_argument("--drift", type=int, default=50, help="generation prompts per held-out text (default 50)")
    p.add_argument("--seed", type=int, default=0, help="seed that picks the examples (default 0)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", default="data/results/tasks.json",
                   help="record to write or extend; other families in it are kept (default %(default)s)")
    p.set_defaults(run=cmd_tasks)

    p = sub.add_parser("readme", help="regenerate the README's result tables from data/results/")
    p.add_argument("--readme", default="README.md")
    p.add_argument("--check", action="store_true", help="fail if the README is out of date instead of writing")
    p.set_defaults(run=cmd_readme)

    p = sub.add_parser("figures", help="export the README's figures as PNG from data/results/ (needs chromium)")
    p.add_argument("--out", default="docs/figures", help="folder for the PNGs (default docs/figures)")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME",
                   help="figures to export, by name (default all; an unknown name lists the known ones)")
    p.set_defaults(run=cmd_figures)
    return parser


def cmd_prepare(args) -> None:
    from .models import prepare_model

    print(prepare_model(args.model, force=args.force))


def cmd_corpora(args) -> None:
    from .data import corpus_names, load_corpus

    for name in corpus_names():
        source = load_corpus(name)
        span = "" if source.span == (0.0, 1.0) else f"  tokens {source.span[0]:.0%}-{source.span[1]:.0%}"
        print(f"{name:28s} {len(source.files):2d} file(s){span}")


def text_sources(args) -> list:
    """The TextSources named on the command line, in order; an error if there are none."""
    from .data import hub_dataset, load_corpus, text_file

    sources = [load_corpus(n) for n in args.corpus] + [text_file(p) for p in args.text_file]
    if args.hf_dataset:
        sources.append(hub_dataset(args.hf_dataset, args.hf_config, args.hf_split, args.hf_column))
    if not sources:
        raise SponlibError("name some text: --corpus NAME, --text-file PATH or --hf-dataset PATH")
    return sources


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


def _add_training_args(p: argparse.ArgumentParser) -> None:
    from .training import TrainConfig

    d = TrainConfig()
    g = p.add_argument_group("SPON training (training and validation text are never the test novel)")
    g.add_argument("--train-corpus", default="austen-train", help="training text (default austen-train)")
    g.add_argument("--train-windows", type=int, default=1024, help="distinct training windows (default 1024)")
    g.add_argument("--train-window-len", type=int, default=512, help="tokens per window (default 512)")
    g.add_argument("--stride", type=int, default=None,
                   help="tokens between training window starts; windows overlap below the length "
                        "(default: a quarter of the length)")
    g.add_argument("--val-corpus", default="austen-val", help="validation text (default austen-val)")
    g.add_argument("--val-windows", type=int, default=16, help="validation windows (default 16)")
    g.add_argument("--steps", type=int, default=d.steps, help=f"optimiser steps (default {d.steps})")
    g.add_argument("--train-batch", type=int, default=d.batch_size, help=f"windows per step (default {d.batch_size})")
    g.add_argument("--micro-batch", type=int, default=d.micro_batch,
                   help="windows per forward pass, when a step's windows do not fit in memory at once (default: "
                        "all of a process's share); the vectors are the same")
    g.add_argument("--lr", type=float, default=d.lr, help=f"peak AdamW learning rate (default {d.lr})")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--warmup", type=float, default=d.warmup, help="share of steps warming up (default %(default)s)")
    g.add_argument("--eval-every", type=int, default=d.eval_every, help="steps between validations")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between checkpoints")
    g.add_argument("--train-seed", type=int, default=d.seed, help="seed of the training windows and their order")
    g.add_argument("--precision", default=d.precision, help="auto (bf16 autocast on CUDA, fp32 elsewhere), fp32, bf16")
    g.add_argument("--no-track-sparsity", dest="track_sparsity", action="store_false",
                   help="keep the thresholds fixed instead of refitting them under the vectors before each validation")
    g.add_argument("--refit-windows", type=int, default=d.refit_windows,
                   help=f"training windows of each threshold refit (default {d.refit_windows})")
    g.add_argument("--roles", type=lambda text: tuple(text.split(",")), default=d.roles,
                   help="comma-separated projections that get vectors (default all: q,k,v,o,gate,up,down)")


def _train_config(args):
    from .training import TrainConfig

    return TrainConfig(steps=args.steps, batch_size=args.train_batch, micro_batch=args.micro_batch, lr=args.lr,
                       weight_decay=args.weight_decay, warmup=args.warmup, eval_every=args.eval_every,
                       checkpoint_every=args.checkpoint_every, seed=args.train_seed, precision=args.precision,
                       roles=args.roles, track_sparsity=args.track_sparsity, refit_windows=args.refit_windows)


def _training_text(args, tokenizer):
    """Training windows for a count (None: --train-windows) and the validation windows."""
    from .data import load_corpus, load_windows

    train_source, val_source = load_corpus(args.train_corpus), load_corpus(args.val_corpus)
    cache = {}

    def train_windows(n=None):
        n = n or args.train_windows
        if n not in cache:
            stride = args.stride or max(1, args.train_window_len // 4)
            cache[n] = load_windows(train_source, tokenizer, args.train_window_len, n, args.train_seed, stride)
        return cache[n]

    return train_windows, load_windows(val_source, tokenizer, args.train_window_len, args.val_windows, args.train_seed)


def _add_calibration_args(p: argparse.ArgumentParser, prefix: str = "") -> None:
    g = p.add_argument_group("calibration (text is never the test novel)")
    g.add_argument(f"--{prefix}corpus", default="austen-train", help="calibration corpus (default austen-train)")
    g.add_argument(f"--{prefix}windows", type=int, default=64, help="windows for statistics (default 64)")
    g.add_argument(f"--{prefix}window-len", type=int, default=512, help="tokens per window (default 512)")
    g.add_argument(f"--{prefix}seed", type=int, default=0)
    g.add_argument("--refine-windows", type=int, default=8,
                   help="windows for the sparse-aware refinement, one batch (default 8)")
    g.add_argument("--refine-levels", type=_floats, default=PROTOCOL_LEVELS,
                   help="comma-separated levels refined under sparsity (default: the protocol levels)")
    g.add_argument("--greedy-windows", type=int, default=None,
                   help="windows for the greedy allocation; 0 skips it (default: 1 when a greedy rule is used)")


def _calibration_settings(args, prefix: str = "") -> dict:
    """The calibration arguments, whether they were named --corpus or --calib-corpus."""
    attr = prefix.replace("-", "_")
    settings = {key: getattr(args, attr + key) for key in ("corpus", "windows", "window_len", "seed")}
    return {**settings, "refine_windows": args.refine_windows, "refine_levels": args.refine_levels}


def _calibrate(model, tokenizer, settings: dict, greedy_windows: int, greedy_scores=None):
    from .calibration import calibrate
    from .data import load_corpus, load_windows

    windows = load_windows(load_corpus(settings["corpus"]), tokenizer, settings["window_len"],
                           settings["windows"], settings["seed"])
    meta = {"corpus": settings["corpus"], "seed": settings["seed"]}
    return calibrate(model, windows, refine_windows=settings["refine_windows"],
                     refine_levels=settings["refine_levels"], greedy_windows=greedy_windows,
                     greedy_scores=greedy_scores, meta=meta)


def _calibration_for(args, model, tokenizer, methods, prefix: str = ""):
    """Load --calibration if it exists; else calibrate (with greedy if a greedy rule is asked) and
    write it to --calibration when given."""
    import os

    from .artifacts import shipped_calibration_path
    from .calibration import Calibration
    from .sparsity import split_method

    if args.calibration is None:
        path = shipped_calibration_path(model)
        args.calibration = str(path) if path else None
    if args.calibration and os.path.exists(args.calibration):
        return Calibration.load(args.calibration, model)
    greedy_scores = sorted({split_method(m)[0] for m in methods if split_method(m)[1] == "greedy"})
    greedy_windows = args.greedy_windows if args.greedy_windows is not None else (1 if greedy_scores else 0)
    print("calibrating first (save it with `python -m sponlib calibrate --out FILE` to reuse it)", file=sys.stderr)
    calibration = _calibrate(model, tokenizer, _calibration_settings(args, prefix), greedy_windows, greedy_scores)
    if args.calibration:
        calibration.save(args.calibration)
    return calibration


def _device_map(text: str | None):
    """--device-map: a strategy name, or a JSON file of module name -> device."""
    import json
    import os

    from .models import DEVICE_MAP_STRATEGIES

    if text is None or text in DEVICE_MAP_STRATEGIES:
        return text
    if not os.path.isfile(text):
        raise SponlibError(f"--device-map {text!r} is neither a strategy ({', '.join(DEVICE_MAP_STRATEGIES)}) "
                           "nor a JSON file")
    try:
        with open(text) as f:
            device_map = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SponlibError(f"--device-map file {text} is not valid JSON ({e})") from None
    if not isinstance(device_map, dict) or not device_map:
        raise SponlibError(f"--device-map file {text} must hold one object of module name -> device")
    return device_map


def _load_placed(args, replicas):
    """The model on --device (under torchrun: each process's own GPU) or spread by --device-map."""
    from .models import load_model

    device_map = _device_map(args.device_map)
    if device_map is None:
        if args.max_memory is not None or args.offload_folder is not None:
            raise SponlibError("--max-memory and --offload-folder go with --device-map")
        return load_model(args.model, dtype=args.dtype, device=replicas.device(args.device))
    if replicas.active:
        raise SponlibError("--device-map spreads one model over the devices of one process; under torchrun each "
                           "process holds a whole model on its own GPU (--device cuda). Use one or the other")
    return load_model(args.model, dtype=args.dtype, device=args.device, device_map=device_map,
                      max_memory=args.max_memory, offload_folder=args.offload_folder)


def _placement_payload(model, replicas) -> dict:
    """Where the run computed, for result records."""
    from .placement import placement_record

    return {"placement": placement_record(model), **replicas.describe()}


def _print_rows(rows: list[dict]) -> None:
    print(f"{'text':24s} {'rule':12s} {'target':>6s} {'measured':>8s} {'windows':>7s} {'tokens':>7s} {'ppl':>10s}")
    for row in rows:
        measured = f"{row['measured']:8.3f}" if "measured" in row else f"{'-':>8s}"
        rule = row["method"] + ("+spon" if row.get("spon") else "")
        print(f"{row['corpus']:24s} {rule:12s} {row['target']:6.2f} {measured} "
              f"{row['windows']:7d} {row['tokens']:7d} {row['ppl']:10.3f}")


def _windows_for(args, tokenizer) -> list:
    from .data import load_windows

    return [load_windows(source, tokenizer, args.window_len, args.windows, args.seed) for source in text_sources(args)]


def cmd_calibrate(args) -> None:
    from .distributed import Replicas

    replicas = Replicas()  # one process (main refuses data-parallel launch for this command)
    model, tokenizer = _load_placed(args, replicas)
    greedy_windows = args.greedy_windows if args.greedy_windows is not None else 0
    started = time.perf_counter()
    calibration = _calibrate(model, tokenizer, _calibration_settings(args), greedy_windows)
    calibration.save(args.out)
    print(f"wrote {args.out} ({time.perf_counter() - started:.0f} s)")
    if args.json:
        from .data import load_corpus, load_windows
        from .models import resolve_dtype
        from .placement import input_device
        from .results import write_result
        from .sweep import calibration_check

        held_out = load_windows(load_corpus(args.check_corpus), tokenizer, args.window_len, args.check_windows,
                                args.seed)
        rows = calibration_check(model, calibration, held_out, args.refine_levels)
        payload = {"calibration": calibration.meta, "check": held_out.describe(), "tolerance": 0.02,
                   "results": rows, **_placement_payload(model, replicas)}
        write_result(args.json, "calibration", payload, model=model, device=input_device(model),
                     dtype=resolve_dtype(args.dtype))
        print(f"wrote {args.json}")


def cmd_eval(args) -> None:
    from .distributed import Replicas
    from .models import resolve_dtype
    from .placement import input_device
    from .results import write_result
    from .sparsity import check_sparsity, split_method
    from .sweep import evaluate

    text_sources(args)  # checked before the model loads: bad input fails fast
    if args.sparsity is not None:
        check_sparsity(args.sparsity)
        split_method(args.method)
    if args.spon and args.thresholds:
        raise SponlibError("--spon brings its own thresholds; drop --thresholds")
    with Replicas.from_environment(args.device) as replicas:
        model, tokenizer = _load_placed(args, replicas)
        thresholds, spon = None, None
        if args.spon:
            spon, thresholds = _spon_for(args, model)
        elif args.thresholds:
            from .sparsity import Thresholds

            thresholds = Thresholds.load(args.thresholds, model)
        elif args.sparsity is not None:
            thresholds = _thresholds_for(args, model, tokenizer, replicas)
        started = time.perf_counter()
        rows = evaluate(model, _windows_for(args, tokenizer), thresholds, args.batch_size, spon=spon,
                        replicas=replicas, progress=replicas.is_main)
        if not replicas.is_main:
            return
        _print_rows(rows)
        if args.json:
            payload = {"windows": args.windows, "window_len": args.window_len, "seed": args.seed,
                       "batch_size": args.batch_size, "elapsed_s": round(time.perf_counter() - started, 2),
                       **_placement_payload(model, replicas)}
            if thresholds is not None:
                payload.update(method=thresholds.method, sparsity=thresholds.target,
                               calibration=thresholds.calibration)
            if spon is not None:
                payload.update(spon=args.spon)
            if args.thresholds:
                payload.update(thresholds=args.thresholds)
            write_result(args.json, "perplexity", {**payload, "results": rows}, model=model,
                         device=input_device(model), dtype=resolve_dtype(args.dtype))
            print(f"wrote {args.json}")


def _thresholds_for(args, model, tokenizer, replicas):
    """Thresholds of --method at --sparsity from the calibration. Under torchrun rank 0 alone loads
    or calibrates, and the others receive its thresholds: every process masks alike."""
    thresholds = None
    if replicas.is_main:
        calibration = _calibration_for(args, model, tokenizer, [args.method], prefix="calib-")
        thresholds = calibration.thresholds(args.sparsity, args.method)
    return replicas.broadcast(thresholds)


def _spon_for(args, model):
    """The vectors and thresholds of --spon, checked against --sparsity/--method if those were given."""
    from .spon import load_spon

    spon, thresholds = load_spon(args.spon, model)
    if args.sparsity is not None and abs(args.sparsity - thresholds.target) > 1e-9:
        raise SponlibError(f"{args.spon} was trained at sparsity {thresholds.target:g}, not {args.sparsity:g}; "
                           "drop --sparsity (the file brings its thresholds) or use a matching file")
    if args.sparsity is not None and args.method != thresholds.method:
        raise SponlibError(f"{args.spon} was trained with mask rule {thresholds.method}, not {args.method}")
    return spon, thresholds


def cmd_train(args) -> None:
    from .distributed import Replicas, check_even_batch, launched_world_size
    from .models import resolve_dtype
    from .placement import input_device
    from .results import write_result
    from .sparsity import check_sparsity, split_method
    from .spon import SponVectors, save_spon, thresholds_path
    from .training import train_spon

    check_sparsity(args.sparsity)
    split_method(args.method)
    config = _train_config(args)  # bad settings fail before the model loads
    check_even_batch(config.batch_size, launched_world_size())  # ... and before the processes wait for each other
    with Replicas.from_environment(args.device) as replicas:
        model, tokenizer = _load_placed(args, replicas)
        thresholds = _thresholds_for(args, model, tokenizer, replicas)
        train_windows, val_windows = _training_text(args, tokenizer)
        train = train_windows()
        if replicas.is_main:
            shape = SponVectors.zeros(model, config.roles)
            print(f"training {shape.parameter_count():,} SPON parameters ({shape.share_of(model):.3%} of the model) "
                  f"on {len(train)} windows of {args.train_window_len} tokens; validation on {len(val_windows)} "
                  f"windows{f'; {replicas.world_size} processes' if replicas.active else ''}", file=sys.stderr)
        vectors, thresholds = train_spon(model, thresholds, train.ids, val_windows.ids, config,
                                         checkpoint=args.out + ".ckpt", restart=args.restart, replicas=replicas)
        if not replicas.is_main:
            return
        vectors.meta["training"].update(train_text=train.describe(), val_text=val_windows.describe())
        save_spon(vectors, thresholds, args.out)
        t = vectors.meta["training"]
        print(f"wrote {args.out} and {thresholds_path(args.out)}: validation KL {t['val_kl_base']:.4f} (mask) -> "
              f"{t['val_kl_best']:.4f} (SPON, step {t['best_step']}); {t['tokens_per_s']:.0f} training tokens/s")
        if args.json:
            training = {k: v for k, v in t.items() if k != "history"}
            payload = {"method": args.method, "sparsity": args.sparsity, "spon": args.out,
                       "parameters": vectors.parameter_count(), "parameter_share": vectors.share_of(model),
                       "training": training, "history": t["history"]}
            write_result(args.json, "spon_training", payload, model=model, device=input_device(model),
                         dtype=resolve_dtype(args.dtype))
            print(f"wrote {args.json}")


def cmd_export(args) -> None:
    from .export import fold_and_export
    from .models import load_model
    from .spon import SponVectors, load_spon

    recorded = SponVectors.load(args.spon).meta.get("fingerprint", {}).get("source")
    model_name = args.model or recorded
    if not model_name:
        raise SponlibError(f"{args.spon} does not say which model it was trained on; name it with --model")
    model, tokenizer = load_model(model_name, dtype=args.dtype)
    vectors, thresholds = load_spon(args.spon, model)
    out = fold_and_export(model, tokenizer, vectors, thresholds, args.out)
    print(f"wrote {out}: loads with AutoModelForCausalLM.from_pretrained; its thresholds are in "
          f"{out}/sparsity_thresholds.json")


def cmd_recovery(args) -> None:
    from .data import data_dir, load_corpus, load_windows
    from .models import load_model
    from .artifacts import model_name
    from .recovery import RecoveryRun, check_experiments, protocol_experiments

    experiments = protocol_experiments(args.levels)
    if args.only:
        groups = set(args.only.split(","))
        experiments = [e for e in experiments if e.group in groups]
    config = _train_config(args)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    calibration = _calibration_for(args, model, tokenizer, sorted({e.method for e in experiments}), prefix="calib-")
    check_experiments(experiments, calibration)
    train_windows, val_windows = _training_text(args, tokenizer)
    for count in sorted({e.train_windows for e in experiments if e.train_windows} | {args.train_windows}):
        train_windows(count)  # too little training text fails now, not after hours
    tests = [load_windows(load_corpus(name), tokenizer, args.window_len, args.windows, args.seed)
             for name in (args.test_corpus or ["persuasion", "brown"])]
    artifacts = args.artifacts or str(data_dir() / "artifacts" / (model_name(model) or "model"))
    run = RecoveryRun(model, calibration, tests, train_windows, val_windows, config, args.json, artifacts,
                      tune_lrs=args.tune_lrs, tune_steps=args.tune_steps)
    if args.tune_lrs:
        print(f"learning rate {run.learning_rate():g} (lowest validation KL of {', '.join(map(str, args.tune_lrs))})")
    for experiment in experiments:
        row = run.run(experiment)
        print(f"{row['name']:28s} recovery in {_fmt(row['recovery_in'])} out {_fmt(row['recovery_out'])}  "
              + "  ".join(f"{c}: {t['ppl_dense']:.2f}/{t['ppl_masked']:.2f}/{t['ppl_spon']:.2f}"
                          for c, t in row["texts"].items()), flush=True)
    print(f"wrote {args.json}")


def _fmt(value) -> str:
    return "   -  " if value is None else f"{value:6.3f}"


def cmd_sweep(args) -> None:
    from .models import load_model, resolve_device, resolve_dtype
    from .results import write_result
    from .sparsity import check_sparsity, split_method
    from .sweep import sweep

    text_sources(args)
    for level in args.levels:
        check_sparsity(level)
    for method in args.methods:
        split_method(method)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    calibration = _calibration_for(args, model, tokenizer, args.methods, prefix="calib-")
    windows_list = _windows_for(args, tokenizer)
    payload = sweep(model, calibration, windows_list, args.levels, args.methods, args.batch_size)
    _print_rows(payload["results"])
    record = {"windows": args.windows, "window_len": args.window_len, "seed": args.seed,
              "batch_size": args.batch_size, "calibration": calibration.meta, **payload}
    write_result(args.json, "sparsity_sweep", record, model=model, device=resolve_device(args.device),
                 dtype=resolve_dtype(args.dtype))
    print(f"wrote {args.json}")


def _trained(args, model) -> tuple[dict, object, dict]:
    """The SPON vectors of --spon-dir (level -> (vectors, thresholds)), listed once, the calibration,
    and where both came from, for the record."""
    import os

    from .artifacts import artifacts_dir, shipped_calibration_path, spon_files
    from .calibration import Calibration
    from .spon import load_spon

    files = spon_files(args.spon_dir or artifacts_dir(model), args.method, args.levels)
    spon = {level: load_spon(path, model) for level, path in files.items()}
    calibration_path = args.calibration or shipped_calibration_path(model)
    if calibration_path is None:
        raise SponlibError("name a calibration file: --calibration FILE (make one with `python -m sponlib calibrate`)")
    calibration = Calibration.load(calibration_path, model)
    shown = lambda path: os.path.relpath(path) if not os.path.relpath(path).startswith("..") else str(path)  # noqa: E731
    provenance = {"calibration": shown(calibration_path),
                  "spon_files": {f"{level:g}": shown(path) for level, path in files.items()}}
    return spon, calibration, provenance


def cmd_analyse(args) -> None:
    from .analysis_record import run_analysis
    from .data import load_corpus, load_windows
    from .models import load_model, resolve_device, resolve_dtype
    from .results import write_result
    from .sparsity import split_method

    split_method(args.method)
    source = load_corpus(args.corpus)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    spon, calibration, provenance = _trained(args, model)
    windows = load_windows(source, tokenizer, args.window_len, args.windows, args.seed)
    payload = run_analysis(model, windows.ids, calibration, spon, rule=args.method, main_level=args.main_level,
                           max_tokens=args.max_tokens, lens_tokens=args.lens_tokens, seed=args.seed)
    payload = {"windows": windows.describe(), **provenance, **payload}
    write_result(args.json, "representation_analysis", payload, model=model, device=resolve_device(args.device),
                 dtype=resolve_dtype(args.dtype))
    s = payload["summary"]
    print(f"{'metric (distance from dense, mean over layers)':48s} {'masked':>9s} {'SPON':>9s}")
    for metric in payload["metric_order"]:
        print(f"{metric:48s} {s[metric]['masked']:9.4f} {s[metric]['spon']:9.4f}")
    print(f"wrote {args.json}")


def cmd_generalize(args) -> None:
    from .data import load_corpus, load_windows
    from .generalization import DEFAULT_TEXTS, generalization
    from .models import load_model, resolve_device, resolve_dtype
    from .results import write_result
    from .sparsity import split_method

    split_method(args.method)
    sources = [load_corpus(name) for name in (args.corpus or DEFAULT_TEXTS)]  # unknown names fail before the model
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    spon, calibration, provenance = _trained(args, model)
    texts = [load_windows(source, tokenizer, args.window_len, args.windows, args.seed) for source in sources]
    started = time.perf_counter()
    payload = generalization(model, calibration, texts, spon, rule=args.method, batch_size=args.batch_size)
    payload = {**provenance, "elapsed_s": round(time.perf_counter() - started, 1), **payload}
    write_result(args.json, "spon_generalization", payload, model=model, device=resolve_device(args.device),
                 dtype=resolve_dtype(args.dtype))
    print(f"{'text':26s} {'level':>5s} {'dense':>8s} {'masked':>9s} {'SPON':>9s} {'recovery':>9s}")
    for row in payload["rows"]:
        recovered = "-" if row["recovery"] is None else f"{row['recovery']:.3f}"
        print(f"{row['text']:26s} {row['level']:5g} {row['ppl_dense']:8.2f} {row['ppl_masked']:9.2f} "
              f"{row['ppl_spon']:9.2f} {recovered:>9s}")
    print(f"wrote {args.json}")


def cmd_harness(args) -> None:
    from .models import resolve_device, resolve_dtype
    from .results import write_result
    from .tasks.harness import check_model_args, check_tasks, lm_from_model_args, results_record, run_harness

    keys = ("sparsity", "method", "calibration", "thresholds", "spon")
    model_args = {"model": args.model, "dtype": args.dtype, "device": args.device,
                  **{k: getattr(args, k) for k in keys if getattr(args, k) is not None}}
    check_model_args(model_args)  # bad settings and task names fail before the model loads
    manager = check_tasks(args.tasks, args.include_path)
    lm = lm_from_model_args(model_args, batch_size=args.batch_size)
    started = time.perf_counter()
    results = run_harness(lm, args.tasks, limit=args.limit, batch_size=args.batch_size,
                          num_fewshot=args.num_fewshot, task_manager=manager)
    from lm_eval.utils import make_table

    print(make_table(results))
    if results.get("groups"):
        print(make_table(results, "groups"))
    mask = results["config"]["sponlib"]
    measured = f", measured {mask['measured_sparsity']:.3f}" if "measured_sparsity" in mask else ""
    print(f"mask: {mask['method']}{'+spon' if mask['spon'] else ''} at {mask['sparsity']:g}{measured}")
    if args.json:
        payload = {"model_args": model_args, "tasks": args.tasks, "include_path": args.include_path,
                   "limit": args.limit, "num_fewshot": args.num_fewshot, "batch_size": args.batch_size,
                   "elapsed_s": round(time.perf_counter() - started, 1), "lm_eval": results_record(results)}
        write_result(args.json, "lm_eval_harness", payload, model=lm.model, device=resolve_device(args.device),
                     dtype=resolve_dtype(args.dtype))
        print(f"wrote {args.json}")


def cmd_tasks(args) -> None:
    from .io import sha256_file
    from .models import load_model
    from .sparsity import split_method
    from .tasks.record import TaskSizes, run_family

    split_method(args.method)
    sizes = TaskSizes(cloze=args.cloze, choice=args.choice, drift=args.drift, seed=args.seed)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    spon, calibration, provenance = _trained(args, model)
    # the vectors of a family whose weights may not be committed (Gemma) stay identifiable
    provenance["spon_sha256"] = {level: sha256_file(path) for level, path in provenance["spon_files"].items()}
    entry = run_family(args.json, model, tokenizer, calibration, spon, sorted(spon), args.method, sizes,
                       args.batch_size, provenance)
    print(f"{'task':30s} {'level':>5s} {'dense':>7s} {'masked':>7s} {'SPON':>7s} {'recovery':>9s}")
    for row in entry["summary"]:
        recovered = "-" if row["recovery"] is None else f"{row['recovery']:.2f}"
        print(f"{row['task'] + '/' + row['source'] + '/' + row['metric']:30s} {row['level']:5g} "
              f"{row['dense']['value']:7.3f} {row['masked']['value']:7.3f} {row['spon']['value']:7.3f} {recovered:>9s}")
    print(f"wrote {args.json}")


def cmd_readme(args) -> None:
    from .report import update_readme

    changed = update_readme(args.readme, check=args.check)
    if args.check and changed:
        raise SponlibError(f"{args.readme} is out of date with data/results/; run `python -m sponlib readme`")
    print(f"{args.readme}: {'updated' if changed else 'up to date'}")


def cmd_figures(args) -> None:
    from .figures import export_figures

    for path in export_figures(args.out, names=args.only):
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")


def main(argv: list[str] | None = None) -> int:
    from .distributed import launched_world_size

    args = build_parser().parse_args(argv)
    try:
        if launched_world_size() > 1 and not getattr(args, "data_parallel", False):
            raise SponlibError(f"`{args.command}` runs in one process; of the commands only eval and train share "
                               "their work among processes started by torchrun or accelerate launch")
        args.run(args)
    except SponlibError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
    return 0
