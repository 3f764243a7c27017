"""`harness`: lm-evaluation-harness tasks on a dense, masked or SPON model (the optional extra
`harness`; sponlib.tasks.harness)."""

from __future__ import annotations

import time

from ..sparsity.rules import METHODS
from ..tasks.harness import check_model_args, check_tasks, lm_from_model_args, results_record, run_harness
from . import options
from .inputs import write_record

MASK_KEYS = ("sparsity", "method", "calibration", "thresholds", "spon")


def add_commands(sub) -> None:
    p = sub.add_parser(
        "harness",
        help="lm-evaluation-harness tasks (hellaswag, lambada, ...) on a dense, masked "
        "or SPON model (needs lm-eval: pip install 'sponlib[harness]')",
    )
    options.add_model(p)
    p.add_argument(
        "--tasks",
        type=options.names,
        required=True,
        help="comma-separated lm-eval task, group or tag names, e.g. hellaswag,lambada_openai",
    )
    p.add_argument("--sparsity", type=float, help="target sparsity in [0, 1); omit for the dense model")
    p.add_argument("--method", default=None, choices=METHODS, help="mask rule (default teal)")
    p.add_argument(
        "--calibration", metavar="FILE", help="calibration file (default: the one shipped for a known model)"
    )
    p.add_argument(
        "--spon",
        metavar="FILE|shipped",
        help="SPON vectors, or `shipped` for those shipped at --sparsity (their thresholds come with them)",
    )
    p.add_argument("--thresholds", metavar="FILE", help="a thresholds file instead of a calibration")
    p.add_argument(
        "--include-path", action="append", default=[], metavar="DIR", help="folder of extra task YAML files; repeatable"
    )
    p.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: each task's own)")
    p.add_argument(
        "--limit",
        type=float,
        default=None,
        help="examples per task, or a share of them below 1: for quick looks, not results",
    )
    p.add_argument("--batch-size", type=int, default=8, help="requests per forward pass (default 8)")
    p.add_argument("--json", metavar="OUT", help="write lm-eval's results (no per-example outputs) with provenance")
    p.set_defaults(run=cmd_harness)


def cmd_harness(args) -> None:
    model_args = {
        "model": args.model,
        "dtype": args.dtype,
        "device": args.device,
        **{k: getattr(args, k) for k in MASK_KEYS if getattr(args, k) is not None},
    }
    check_model_args(model_args)  # bad settings and task names fail before the model loads
    manager = check_tasks(args.tasks, args.include_path)
    lm = lm_from_model_args(model_args, batch_size=args.batch_size)
    started = time.perf_counter()
    results = run_harness(
        lm,
        args.tasks,
        limit=args.limit,
        batch_size=args.batch_size,
        num_fewshot=args.num_fewshot,
        task_manager=manager,
    )
    from lm_eval.utils import make_table  # lm-eval is an optional extra: present once run_harness ran

    print(make_table(results))
    if results.get("groups"):
        print(make_table(results, "groups"))
    mask = results["config"]["sponlib"]
    measured = f", measured {mask['measured_sparsity']:.3f}" if "measured_sparsity" in mask else ""
    print(f"mask: {mask['method']}{'+spon' if mask['spon'] else ''} at {mask['sparsity']:g}{measured}")
    if args.json:
        payload = {
            "model_args": model_args,
            "tasks": args.tasks,
            "include_path": args.include_path,
            "limit": args.limit,
            "num_fewshot": args.num_fewshot,
            "batch_size": args.batch_size,
            "elapsed_s": round(time.perf_counter() - started, 1),
            "lm_eval": results_record(results),
        }
        write_record(args, "lm_eval_harness", payload, lm.model)
        print(f"wrote {args.json}")
