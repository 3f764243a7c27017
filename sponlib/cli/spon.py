"""`train` and `export`: SPON vectors for one mask rule and level, and a plain Hugging Face
checkpoint with them folded into its biases."""

from __future__ import annotations

import sys

from ..distributed import Replicas, check_even_batch, launched_world_size
from ..errors import SponlibError
from ..models.loading import load_model, resolve_dtype
from ..models.placement import input_device
from ..records import write_result
from ..spon.export import THRESHOLDS_FILE, fold_and_export
from ..spon.training import train_spon
from ..spon.vectors import SponVectors, load_spon, save_spon, thresholds_path
from . import options
from .inputs import load_placed, mask_request, resolve, train_config, training_text


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="train SPON vectors for one mask rule and level")
    options.add_model(p)
    options.add_placement(p)
    p.add_argument("--sparsity", type=float, required=True, help="target sparsity in [0, 1)")
    p.add_argument("--method", default="teal", help="mask rule: teal (default), wina, greedy, greedy-wina")
    p.add_argument("--out", required=True, help="SPON file to write (.safetensors); its thresholds go next to it")
    p.add_argument(
        "--calibration",
        metavar="FILE",
        help="calibration file (default: the shipped one, else calibrated first and written here)",
    )
    options.add_calibration(p, prefix="calib-")
    options.add_training(p)
    p.add_argument("--restart", action="store_true", help="ignore a checkpoint left by an interrupted run")
    p.add_argument("--json", metavar="OUT", help="also write a record of the run (throughput, validation KL)")
    p.set_defaults(run=cmd_train, data_parallel=True)

    p = sub.add_parser("export", help="fold SPON vectors into biases and write a Hugging Face checkpoint")
    p.add_argument("--spon", required=True, metavar="FILE", help="SPON file (from `train`)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (must not hold anything else)")
    p.add_argument("--model", default=None, help="model the vectors were trained on (default: as recorded in the file)")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    p.set_defaults(run=cmd_export)


def cmd_train(args) -> None:
    request = mask_request(args)
    config = train_config(args)  # bad settings fail before the model loads
    check_even_batch(config.batch_size, launched_world_size())  # ... and before the processes wait for each other
    with Replicas.from_environment(args.device) as replicas:
        model, tokenizer = load_placed(args, replicas)
        thresholds = resolve(args, request, model, tokenizer, replicas).thresholds
        train_windows, val_windows = training_text(args, tokenizer)
        train = train_windows()
        if replicas.is_main:
            shape = SponVectors.zeros(model, config.roles)
            processes = f"; {replicas.world_size} processes" if replicas.active else ""
            print(
                f"training {shape.parameter_count():,} SPON parameters ({shape.share_of(model):.3%} of the model) "
                f"on {len(train)} windows of {args.train_window_len} tokens; validation on {len(val_windows)} "
                f"windows{processes}",
                file=sys.stderr,
            )
        vectors, thresholds = train_spon(
            model,
            thresholds,
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
        save_spon(vectors, thresholds, args.out)
        t = vectors.meta["training"]
        print(
            f"wrote {args.out} and {thresholds_path(args.out)}: validation KL {t['val_kl_base']:.4f} (mask) -> "
            f"{t['val_kl_best']:.4f} (SPON, step {t['best_step']}); {t['tokens_per_s']:.0f} training tokens/s"
        )
        if args.json:
            training = {k: v for k, v in t.items() if k != "history"}
            payload = {
                "method": args.method,
                "sparsity": args.sparsity,
                "spon": args.out,
                "parameters": vectors.parameter_count(),
                "parameter_share": vectors.share_of(model),
                "training": training,
                "history": t["history"],
            }
            write_result(
                args.json,
                "spon_training",
                payload,
                model=model,
                device=input_device(model),
                dtype=resolve_dtype(args.dtype),
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
