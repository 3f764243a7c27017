"""`train` and `export`: SPON vectors for one mask rule and level, and a plain Hugging Face
checkpoint with them folded into its biases.

After training, `train` runs the safeguard (sponlib.spon.safeguard) on held-out text of another
domain (--safeguard-text): the vectors are scaled down until they are not worse than the plain
mask there, and the scale, the text and the interval go into the SPON file's metadata.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..data import TextSource, load_windows
from ..distributed import Replicas, check_even_batch, launched_world_size
from ..errors import DataError, SponlibError
from ..mixtures import parse_sources, source_from_name
from ..models.loading import load_model, resolve_dtype
from ..models.placement import input_device
from ..records import write_result
from ..sparsity.rules import METHODS
from ..spon.export import THRESHOLDS_FILE, fold_and_export
from ..spon.safeguard import safeguard
from ..spon.training import train_spon
from ..spon.vectors import SponVectors, load_spon, save_spon, thresholds_path
from . import options
from .inputs import load_placed, mask_request, resolve, train_config, training_text


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="train SPON vectors for one mask rule and level")
    options.add_model(p)
    options.add_placement(p)
    p.add_argument("--sparsity", type=float, required=True, help="target sparsity in [0, 1)")
    p.add_argument("--method", default="teal", choices=METHODS, help="mask rule (default teal)")
    p.add_argument("--out", required=True, help="SPON file to write (.safetensors); its thresholds go next to it")
    p.add_argument(
        "--calibration",
        metavar="FILE",
        help="calibration file (default: the shipped one, else calibrated first and written here)",
    )
    options.add_calibration(p, prefix="calib-")
    options.add_training(p)
    options.add_safeguard(p)
    p.add_argument("--restart", action="store_true", help="ignore a checkpoint left by an interrupted run")
    p.add_argument("--json", metavar="OUT", help="also write a record of the run (throughput, validation KL)")
    p.set_defaults(run=cmd_train, data_parallel=True)

    p = sub.add_parser("export", help="fold SPON vectors into biases and write a Hugging Face checkpoint")
    p.add_argument("--spon", required=True, metavar="FILE", help="SPON file (from `train`)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (must not hold anything else)")
    p.add_argument("--model", default=None, help="model the vectors were trained on (default: as recorded in the file)")
    options.add_dtype(p, "float32")
    p.set_defaults(run=cmd_export)


def _shares_text(a: TextSource, b: TextSource) -> bool:
    """Whether two sources read a common stretch of one file (austen-train and austen-val do not)."""
    common = {Path(f).resolve() for f in a.files} & {Path(f).resolve() for f in b.files}
    return bool(common) and a.span[0] < b.span[1] and b.span[0] < a.span[1]


def safeguard_source(args) -> TextSource | None:
    """--safeguard-text as a text source, or None for `none` (the safeguard off); refused, before
    the model loads, when it is (part of) the training text, each source of a "+" mixture alike."""
    name = args.safeguard_text.strip()
    if name.lower() == "none":
        return None
    if args.safeguard_windows < 0:
        raise SponlibError(f"--safeguard-windows must be positive, or 0 for all (got {args.safeguard_windows})")
    try:
        source = source_from_name(name)
    except DataError as e:
        raise SponlibError(f"--safeguard-text {name!r}: {e}") from None
    for part in parse_sources(args.train_corpus):  # each source of a "+" mixture; the same name shares it all
        if _shares_text(source, part):
            raise SponlibError(
                f"--safeguard-text {name!r} shares text with the training text {part.name!r}: the safeguard must "
                "judge the vectors on text they were not trained on. Name held-out text of another domain with "
                "--safeguard-text NAME, or turn the safeguard off with --safeguard-text none"
            )
    return source


def run_safeguard(model, vectors, thresholds, mask_thresholds, windows, batch_size: int, out: str):
    """The safeguard after training: the vectors and thresholds at the safe scale, and its record;
    one line on stdout, and a loud one on stderr when the vectors are refused."""
    vectors, thresholds, guard = safeguard(model, vectors, thresholds, mask_thresholds, windows, batch_size=batch_size)
    i, text = guard["interval"], guard["text"]
    print(
        f"safeguard on {text['source']} ({text['windows']} windows): gamma {guard['gamma']:g}, "
        f"log(ppl SPON / ppl mask) {i['mean']:+.4f} [{i['low']:+.4f}, {i['high']:+.4f}] ({i['confidence']:.0%}); "
        f"ppl {guard['ppl_mask']:.3f} (mask) -> {guard['ppl_spon']:.3f} (SPON)"
    )
    if guard["refused"]:
        full = guard["scan"][0]  # the largest scale scanned
        print(
            f"WARNING: the safeguard refused the SPON vectors: at every scale gamma > 0 they may hurt "
            f"{text['source']} (at none are they better than the plain mask at {i['confidence']:.0%} confidence; at "
            f"gamma {full['gamma']:g}: {full['mean']:+.4f} [{full['low']:+.4f}, {full['high']:+.4f}]). {out} holds "
            "zero vectors, the plain mask; the scan is in its metadata",
            file=sys.stderr,
        )
    return vectors, thresholds, guard


def cmd_train(args) -> None:
    request = mask_request(args)
    config = train_config(args)  # bad settings fail before the model loads
    guard_source = safeguard_source(args)  # ... and so does safeguard text that is training text
    check_even_batch(config.batch_size, launched_world_size())  # ... and before the processes wait for each other
    with Replicas.from_environment(args.device) as replicas:
        model, tokenizer = load_placed(args, replicas)
        mask_thresholds = resolve(args, request, model, tokenizer, replicas).thresholds
        train_windows, val_windows = training_text(args, tokenizer)
        train = train_windows()
        guard_windows = None
        if guard_source is not None:  # picked now, in every process: too short a text fails before training
            guard_windows = load_windows(
                guard_source, tokenizer, args.train_window_len, args.safeguard_windows, args.train_seed
            )
        if replicas.is_main:
            announce(args, model, config, train, val_windows, replicas)
        vectors, thresholds = train_spon(
            model,
            mask_thresholds,
            train.ids,
            val_windows.ids,
            config,
            checkpoint=args.out + ".ckpt",
            restart=args.restart,
            replicas=replicas,
        )
        if not replicas.is_main:
            return
        vectors.meta["training"].update(train_text=train.describe(), val_text=val_windows.describe())
        save_spon(vectors, thresholds, args.out)  # the trained vectors are kept even if the safeguard fails
        guard = None
        if guard_windows is not None:
            batch = config.micro_batch or config.batch_size
            vectors, thresholds, guard = run_safeguard(
                model, vectors, thresholds, mask_thresholds, guard_windows, batch, args.out
            )
            save_spon(vectors, thresholds, args.out)
        t = vectors.meta["training"]
        print(
            f"wrote {args.out} and {thresholds_path(args.out)}: validation KL {t['val_kl_base']:.4f} (mask) -> "
            f"{t['val_kl_best']:.4f} (SPON, step {t['best_step']}); {t['tokens_per_s']:.0f} training tokens/s"
        )
        if args.json:
            write_training_record(args, model, vectors, guard)


def announce(args, model, config, train, val_windows, replicas) -> None:
    """What is about to be trained, on stderr."""
    shape = SponVectors.zeros(model, config.roles)
    processes = f"; {replicas.world_size} processes" if replicas.active else ""
    print(
        f"training {shape.parameter_count():,} SPON parameters ({shape.share_of(model):.3%} of the model) "
        f"on {len(train)} windows of {args.train_window_len} tokens; validation on {len(val_windows)} "
        f"windows{processes}",
        file=sys.stderr,
    )


def write_training_record(args, model, vectors, guard: dict | None) -> None:
    """The --json record of `train`: settings, throughput, validation KL, history, the safeguard."""
    t = vectors.meta["training"]
    payload = {
        "method": args.method,
        "sparsity": args.sparsity,
        "spon": args.out,
        "parameters": vectors.parameter_count(),
        "parameter_share": vectors.share_of(model),
        "training": {k: v for k, v in t.items() if k != "history"},
        "history": t["history"],
        "safeguard": guard,  # None: turned off (--safeguard-text none)
    }
    write_result(
        args.json, "spon_training", payload, model=model, device=input_device(model), dtype=resolve_dtype(args.dtype)
    )
    print(f"wrote {args.json}")


def cmd_export(args) -> None:
    recorded = SponVectors.load(args.spon).meta.get("fingerprint", {}).get("source")
    model_name = args.model or recorded
    if not model_name:
        raise SponlibError(f"{args.spon} does not say which model it was trained on; name it with --model")
    model, tokenizer = load_model(model_name, dtype=args.dtype)
    vectors, thresholds = load_spon(args.spon, model)
    out = fold_and_export(model, tokenizer, vectors, thresholds, args.out)
    print(
        f"wrote {out}: loads with AutoModelForCausalLM.from_pretrained; its thresholds are in {out}/{THRESHOLDS_FILE}"
    )
