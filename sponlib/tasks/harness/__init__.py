"""lm-evaluation-harness on a dense, masked or SPON model: standard tasks (hellaswag, lambada, ...)
scored through sponlib's mask.

    lm = harness_lm(model, tokenizer, thresholds, spon=vectors)  # an lm-eval HFLM
    results = run_harness(lm, ["hellaswag"])                      # lm-eval's results dict
    results = run_harness("model=smollm2-135m,sparsity=0.5,spon=shipped", ["hellaswag"])

    python -m sponlib harness --tasks hellaswag --sparsity 0.5 --spon shipped

`register()` adds the model name "sponlib" to lm-eval's registry, so that
`lm_eval.simple_evaluate(model="sponlib", model_args="model=smollm2-135m,sparsity=0.5,...")` loads
the model, its thresholds and its SPON vectors from such a string (MODEL_ARGS lists the keys).

The mask lives exactly as long as one model call: every forward lm-eval makes (log-likelihood
batches, each `generate`) attaches the Sparsifier's hooks and removes them when it returns or
raises. The user's model carries no hook between calls, after the evaluation, or after an
interrupted one; nothing needs closing.

lm-eval is an optional dependency (`pip install "sponlib[harness]"`): this package imports
without it, and says how to install it when it is needed.

    arguments   the model_args keys, parsed and checked without loading anything
    model       `SponlibLM`, lm-eval's HFLM under sponlib's mask (importing it needs lm-eval)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ...errors import InvalidArgumentError
from .arguments import (
    HFLM_ARGS,
    MODEL_ARGS,
    MODEL_NAME,
    REQUIREMENT,
    check_hflm_args,
    check_model_args,
    parse_model_args,
    require_lm_eval,
)

__all__ = [
    "HFLM_ARGS",
    "MODEL_ARGS",
    "MODEL_NAME",
    "REQUIREMENT",
    "check_hflm_args",
    "check_model_args",
    "check_tasks",
    "harness_lm",
    "lm_from_model_args",
    "parse_model_args",
    "register",
    "require_lm_eval",
    "results_record",
    "run_harness",
]


def register() -> None:
    """Register the model name "sponlib" with lm-eval (idempotent). The entry is a lazy
    "module:attribute" reference, so HFLM is only imported when an evaluation asks for it."""
    require_lm_eval()
    import lm_eval.models  # noqa: F401  lm-eval fills its registry only while it is empty: fill it first
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target="sponlib.tasks.harness.model:SponlibLM")


def harness_lm(model, tokenizer, thresholds=None, spon=None, batch_size: int = 8, **kwargs):
    """An lm-eval LM (an HFLM subclass) over a loaded model: dense without `thresholds`, masked with
    them, SPON with `spon` (SponVectors, or projection name -> vector) on top. `kwargs` are HFLM
    settings (HFLM_ARGS: max_length, add_bos_token, ...). HFLM gives `tokenizer` a pad token if it has
    none. Pass the result to run_harness or lm_eval.simple_evaluate."""
    register()
    from .model import SponlibLM  # lm-eval is there: register() checked

    return SponlibLM(model, tokenizer, thresholds=thresholds, spon=spon, batch_size=batch_size, **kwargs)


def lm_from_model_args(model_args: str | dict | None, **defaults):
    """The "sponlib" lm-eval model from model_args such as
    'model=smollm2-135m,sparsity=0.5,method=teal,spon=shipped,dtype=float32,device=cpu'
    (keys: MODEL_ARGS, plus the HFLM settings HFLM_ARGS). `defaults` are what lm-eval adds
    (batch_size, max_batch_size, device); model_args win over them. Settings are checked before
    the model loads."""
    register()
    from .model import lm_from_model_args as build

    return build(model_args, **defaults)


def check_tasks(tasks: list[str], include_path=None, include_defaults: bool = True):
    """lm-eval's TaskManager over its built-in tasks (unless `include_defaults` is False: indexing its
    ~15k task files takes about 5 s) and the task YAML folders of `include_path`, once every name in
    `tasks` (task, group or tag; or a YAML file) is known to it."""
    if isinstance(tasks, str) or not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise InvalidArgumentError(f"tasks must be a non-empty list of task names; got {tasks!r}")
    paths = (
        []
        if include_path is None
        else [include_path]
        if isinstance(include_path, (str, os.PathLike))
        else list(include_path)
    )
    for path in paths:
        if not Path(path).is_dir():
            raise InvalidArgumentError(f"include path {str(path)!r} is not a folder of task YAML files")
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=[str(p) for p in paths] or None, include_defaults=include_defaults)
    missing = [t for t in tasks if t not in manager.all_tasks and not Path(t).is_file()]
    if missing:
        sources = (["lm-eval's built-in tasks"] if include_defaults else []) + [str(p) for p in paths]
        raise InvalidArgumentError(
            f"unknown task(s) {', '.join(missing)}: not among {' or '.join(sources) or 'no tasks'}"
            + ("; `lm-eval ls tasks` lists the built-in ones" if include_defaults else "")
        )
    return manager


def run_harness(
    model_args,
    tasks: list[str],
    include_path=None,
    limit=None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
    include_defaults: bool = True,
    log_samples: bool = False,
    task_manager=None,
    **evaluate_kwargs,
) -> dict:
    """Evaluate lm-eval `tasks` (task, group or tag names) and return lm-eval's results dict.

    `model_args` is the "sponlib" model's settings (a 'key=value,...' string or a dict, see
    MODEL_ARGS) or an LM built by harness_lm. `include_path` adds folders of task YAML files and
    `include_defaults` keeps lm-eval's own (see check_tasks; `task_manager` is one check_tasks made).
    `limit` caps examples per task (a share of them below 1): for quick looks, not results.
    `log_samples` keeps per-example inputs and outputs under results["samples"]. Other keywords go to
    lm_eval.simple_evaluate. Task names, paths and model_args are all checked before the model loads."""
    if limit is not None:
        limit = float(limit)
        if not limit > 0:
            raise InvalidArgumentError(f"limit must be a positive count or a share in (0, 1); got {limit:g}")
        limit = int(limit) if limit >= 1 and limit.is_integer() else limit
    if task_manager is None:
        task_manager = check_tasks(tasks, include_path, include_defaults)
    register()
    from lm_eval import simple_evaluate
    from lm_eval.api.model import LM

    if isinstance(model_args, LM):
        model, model_args = model_args, None
        if getattr(model, "sparsifier", None) is not None:
            model.sparsifier.reset_stats()  # measured sparsity of this evaluation, not of all since harness_lm
    else:
        model, model_args = MODEL_NAME, parse_model_args(model_args)  # lm-eval loads it by the registered name
        check_model_args(model_args)
    return simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        limit=limit,
        task_manager=task_manager,
        log_samples=log_samples,
        **evaluate_kwargs,
    )


def results_record(results: dict) -> dict:
    """lm-eval's results without per-example outputs, made JSON-safe (task configs may hold
    functions; they are written as their repr)."""
    kept = {k: v for k, v in results.items() if k != "samples"}
    return json.loads(json.dumps(kept, default=str))
