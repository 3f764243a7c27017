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

lm-eval is an optional dependency (`pip install "sponlib[harness]"`): it is imported inside the
functions, so this module imports without it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

from ..errors import InvalidArgumentError, MissingPackageError
from ..placement import input_device
from ..sparsity import Sparsifier, check_sparsity, split_method

REQUIREMENT = "lm-eval>=0.4.13,<0.5"
MODEL_NAME = "sponlib"  # the name registered with lm-eval

# model_args keys of the registered "sponlib" model
MODEL_ARGS = {
    "model": "known name, local Hugging Face folder or hub id (default smollm2-135m); alias: pretrained",
    "dtype": "float32 (default), bfloat16 or float16",
    "device": "cpu (default), cuda, cuda:N or auto",
    "sparsity": "target sparsity in [0, 1); omit for the dense model",
    "method": "mask rule: teal (default), wina, greedy, greedy-wina",
    "calibration": "calibration file the thresholds are read from (default: the shipped one)",
    "thresholds": "a thresholds file instead of a calibration",
    "spon": "SPON vectors: a file, or 'shipped' for the shipped ones at `sparsity` (thresholds come with them)",
}
# HFLM settings that still mean something for a model passed in already loaded. Anything else is
# refused: HFLM would forward it to from_pretrained, which never runs here, and drop it silently.
HFLM_ARGS = ("batch_size", "max_batch_size", "max_length", "truncation", "logits_cache", "add_bos_token",
             "prefix_token_id", "softmax_dtype", "mixed_precision_dtype", "think_end_token", "enable_thinking",
             "chat_template_args")


def require_lm_eval():
    """The lm_eval package, or a MissingPackageError that says how to install it."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    install = f'pip install "{REQUIREMENT}"  (or pip install "sponlib[harness]")'
    try:
        import lm_eval
    except ImportError:
        raise MissingPackageError(f"running lm-evaluation-harness tasks needs the package lm-eval, which is "
                                  f"not installed. Install it with:\n    {install}") from None
    try:
        found = version("lm_eval")
    except PackageNotFoundError:  # a source checkout on sys.path: trust it
        return lm_eval
    if not Version("0.4.13") <= Version(found) < Version("0.5"):  # the registry and HFLM this module uses
        raise MissingPackageError(f"lm-eval {found} is installed; sponlib needs {REQUIREMENT}. Install it with:"
                                  f"\n    {install}")
    return lm_eval


def register() -> None:
    """Register the model name "sponlib" with lm-eval (idempotent). The entry is a lazy
    "module:attribute" reference, so HFLM is only imported when an evaluation asks for it."""
    require_lm_eval()
    import lm_eval.models  # noqa: F401  lm-eval fills its registry only while it is empty: fill it first
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=f"{__name__}:SponlibLM")


_LM_CLASS = None  # built on first use: its base class comes from lm-eval


def __getattr__(name: str):
    # `sponlib.tasks.harness.SponlibLM` exists only once lm-eval can be imported (PEP 562)
    if name == "SponlibLM":
        return _lm_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _lm_class():
    """SponlibLM: lm-eval's HFLM over an already-loaded model, every forward under the mask."""
    global _LM_CLASS
    require_lm_eval()  # also when the class exists: a clear error if lm-eval went away
    if _LM_CLASS is not None:
        return _LM_CLASS
    from lm_eval.models.huggingface import HFLM

    class SponlibLM(HFLM):
        """An HFLM whose model calls run under sponlib's Sparsifier (dense without thresholds).

        `sparsifier` is None for the dense model; `provenance` says what mask ran, for results.
        """

        def __init__(self, pretrained, tokenizer=None, thresholds=None, spon=None, batch_size=8, **kwargs):
            check_hflm_args(kwargs)
            if tokenizer is None or isinstance(pretrained, (str, os.PathLike)):
                raise InvalidArgumentError("the sponlib lm-eval model wraps a loaded model and its tokenizer: "
                                           "harness_lm(model, tokenizer, ...); by name use model_args "
                                           "(model=NAME,sparsity=...)")
            sparsifier = _sparsifier(pretrained, thresholds, spon)  # a bad pairing fails before lm-eval starts
            # HFLM warns that a model passed in loaded skips its loading options and distributed
            # set-up: true, and meant here, so those two warnings are left out
            logger = logging.getLogger(HFLM.__module__)
            level = logger.level
            logger.setLevel(logging.ERROR)
            try:
                super().__init__(pretrained=pretrained, tokenizer=tokenizer, backend="causal",
                                 batch_size=batch_size, **kwargs)
            finally:
                logger.setLevel(level)
            self.sparsifier = sparsifier
            self.provenance = {"method": thresholds.method if thresholds else "dense",
                               "sparsity": thresholds.target if thresholds else 0.0, "spon": spon is not None}

        @classmethod
        def create_from_arg_string(cls, arg_string, additional_config=None):
            return lm_from_model_args(arg_string, **(additional_config or {}))

        @classmethod
        def create_from_arg_obj(cls, arg_dict, additional_config=None):
            return lm_from_model_args(arg_dict, **(additional_config or {}))

        def masked(self):
            """The mask's hooks, on for the length of a `with` block (nothing for the dense model)."""
            return self.sparsifier if self.sparsifier is not None else contextlib.nullcontext()

        def _model_call(self, inps, attn_mask=None, labels=None):
            with self.masked():
                return super()._model_call(inps, attn_mask, labels)

        def _model_generate(self, context, max_length, stop, **generation_kwargs):
            with self.masked():  # one attach for the whole generation, not one per token
                return super()._model_generate(context, max_length, stop, **generation_kwargs)

        def get_model_info(self) -> dict:
            # HFLM's own asks the hub for the commit of `pretrained`: a network call, and there is
            # no hub id for a model passed in. Its dtype also becomes a string, for json.dumps.
            info = {"model_num_parameters": sum(p.numel() for p in self._model.parameters()),
                    "model_dtype": str(self._model.dtype).removeprefix("torch."),
                    "model_source": dict(getattr(self._model, "sponlib_source", {})),
                    "sponlib": dict(self.provenance)}
            if self.sparsifier is not None and self.sparsifier.measured():
                # over every token forwarded, batch padding included: close to, not exactly, the text's
                info["sponlib"]["measured_sparsity"] = self.sparsifier.summary()["weighted"]
            return info

    SponlibLM.__qualname__ = "SponlibLM"  # as found by register()'s "module:attribute" reference
    SponlibLM.__module__ = __name__
    _LM_CLASS = SponlibLM
    return SponlibLM


def check_hflm_args(kwargs: dict) -> None:
    unknown = sorted(set(kwargs) - set(HFLM_ARGS))
    if unknown:
        raise InvalidArgumentError(f"unknown lm-eval model setting(s) {', '.join(unknown)}; with a loaded model "
                                   f"these apply: {', '.join(HFLM_ARGS)}")


def _sparsifier(model, thresholds, spon) -> Sparsifier | None:
    if thresholds is None:
        if spon is not None:
            raise InvalidArgumentError("SPON vectors need the thresholds they were trained against: pass both "
                                       "(load_spon(path, model) returns vectors and thresholds)")
        return None
    alphas = None
    if spon is not None:
        device = input_device(model)
        alphas = {n: a.to(device) for n, a in getattr(spon, "alphas", spon).items()}  # SponVectors or a dict
    return Sparsifier(model, thresholds, alphas=alphas)


def harness_lm(model, tokenizer, thresholds=None, spon=None, batch_size: int = 8, **kwargs):
    """An lm-eval LM (an HFLM subclass) over a loaded model: dense without `thresholds`, masked with
    them, SPON with `spon` (SponVectors, or projection name -> vector) on top. `kwargs` are HFLM
    settings (HFLM_ARGS: max_length, add_bos_token, ...). HFLM gives `tokenizer` a pad token if it has
    none. Pass the result to run_harness or lm_eval.simple_evaluate."""
    register()
    return _lm_class()(model, tokenizer, thresholds=thresholds, spon=spon, batch_size=batch_size, **kwargs)


def parse_model_args(model_args: str | dict | None) -> dict:
    """'model=smollm2-135m,sparsity=0.5' -> {'model': 'smollm2-135m', 'sparsity': 0.5}, the way lm-eval
    parses --model_args (numbers and true/false converted, quotes keep a string); a dict is copied."""
    if model_args is None:
        return {}
    if isinstance(model_args, dict):
        return dict(model_args)
    require_lm_eval()
    from lm_eval.utils import simple_parse_args_string

    try:
        return simple_parse_args_string(model_args)
    except (IndexError, ValueError) as e:
        raise InvalidArgumentError(f"model_args must read key=value,key=value; got {model_args!r} ({e})") from None


def check_model_args(model_args: str | dict | None) -> tuple[dict, dict]:
    """Validate model_args without loading anything: (sponlib settings, HFLM settings). A bad key, an
    out-of-range sparsity, an unknown mask rule or a combination that means nothing fails here."""
    args = parse_model_args(model_args)
    if "pretrained" in args:  # what lm-eval's hf model calls it
        if "model" in args:
            raise InvalidArgumentError("model_args name the model twice (model= and pretrained=); keep one")
        args["model"] = args.pop("pretrained")
    hflm = {k: args.pop(k) for k in HFLM_ARGS if k in args}
    unknown = sorted(set(args) - set(MODEL_ARGS))
    if unknown:
        raise InvalidArgumentError(f"unknown model_args key(s) {', '.join(unknown)}; the sponlib model takes "
                                   f"{', '.join(MODEL_ARGS)} and the HFLM settings {', '.join(HFLM_ARGS)}")
    settings = {"model": "smollm2-135m", "dtype": "float32", "device": "cpu", "sparsity": None, "method": None,
                "calibration": None, "thresholds": None, "spon": None}
    settings.update(args)
    for key in ("model", "dtype", "device", "method", "calibration", "thresholds", "spon"):
        if settings[key] is not None:
            settings[key] = str(settings[key])  # e.g. a folder named 2024 parsed as a number
    if settings["sparsity"] is not None:
        settings["sparsity"] = check_sparsity(settings["sparsity"])
    if settings["method"] is not None:
        split_method(settings["method"])
    sparsity, spon, given = settings["sparsity"], settings["spon"], [k for k in ("spon", "thresholds", "calibration")
                                                                      if settings[k] is not None]
    if len(given) > 1:
        raise InvalidArgumentError(f"model_args give {' and '.join(given)}: one source of thresholds only "
                                   "(spon and thresholds files bring their own; calibration needs sparsity)")
    if spon == "shipped" and sparsity is None:
        raise InvalidArgumentError("spon=shipped picks the shipped vectors by level: add sparsity=LEVEL "
                                   "(e.g. sparsity=0.5)")
    if settings["calibration"] is not None and sparsity is None:
        raise InvalidArgumentError("calibration= without sparsity=: the dense model needs no thresholds; "
                                   "add sparsity=LEVEL")
    if settings["method"] is not None and not (sparsity is not None or given):
        raise InvalidArgumentError("method= without sparsity=, spon= or thresholds=: the dense model has no "
                                   "mask rule; add sparsity=LEVEL")
    return settings, hflm


def _check_agrees(what: str, thresholds, settings: dict) -> None:
    """A file's own thresholds against sparsity=/method= when those were given too."""
    sparsity, method = settings["sparsity"], settings["method"]
    if sparsity is not None and abs(sparsity - thresholds.target) > 1e-9:
        raise InvalidArgumentError(f"{what} is for sparsity {thresholds.target:g}, not {sparsity:g}; drop "
                                   "sparsity= (the file brings its thresholds) or use a matching file")
    if method is not None and method != thresholds.method:
        raise InvalidArgumentError(f"{what} is for mask rule {thresholds.method}, not {method}")


def lm_from_model_args(model_args: str | dict | None, **defaults):
    """The "sponlib" lm-eval model from model_args such as
    'model=smollm2-135m,sparsity=0.5,method=teal,spon=shipped,dtype=float32,device=cpu'
    (keys: MODEL_ARGS, plus the HFLM settings HFLM_ARGS). `defaults` are what lm-eval adds
    (batch_size, max_batch_size, device); model_args win over them."""
    from ..models import load_model

    given = parse_model_args(model_args)
    for key, value in defaults.items():
        if value is not None:
            given.setdefault(key, value)
    settings, hflm = check_model_args(given)  # everything checked before the model loads
    model, tokenizer = load_model(settings["model"], dtype=settings["dtype"], device=settings["device"])
    thresholds, spon, files = _mask_for(model, settings)
    lm = harness_lm(model, tokenizer, thresholds, spon, **hflm)
    lm.provenance.update(files)
    return lm


def _mask_for(model, settings: dict):
    """(thresholds, SPON vectors, where they came from) that the settings name, each file checked
    against the model's fingerprint."""
    from ..artifacts import artifacts_dir, model_name, shipped_calibration, shipped_calibration_path, spon_files
    from ..calibration import Calibration
    from ..models import KNOWN_MODELS
    from ..sparsity import Thresholds
    from ..spon import load_spon

    sparsity, method = settings["sparsity"], settings["method"]
    if settings["spon"] is not None:
        path = settings["spon"]
        if path == "shipped":
            if model_name(model) not in KNOWN_MODELS:  # a folder or hub id: its name is no artifacts folder
                raise InvalidArgumentError(f"spon=shipped: SPON vectors ship for the known models "
                                           f"({', '.join(KNOWN_MODELS)}) only; name a file trained for this "
                                           "model with spon=PATH")
            path = spon_files(artifacts_dir(model), method or "teal", [sparsity])[sparsity]
        vectors, thresholds = load_spon(path, model)
        _check_agrees(f"SPON file {path}", thresholds, settings)
        return thresholds, vectors, {"spon_file": _shown(path)}
    if settings["thresholds"] is not None:
        thresholds = Thresholds.load(settings["thresholds"], model)
        _check_agrees(f"thresholds file {settings['thresholds']}", thresholds, settings)
        return thresholds, None, {"thresholds_file": _shown(settings["thresholds"])}
    if sparsity is None:
        return None, None, {}
    if settings["calibration"] is not None:
        calibration, path = Calibration.load(settings["calibration"], model), settings["calibration"]
    else:
        calibration, path = shipped_calibration(model), shipped_calibration_path(model)
    return calibration.thresholds(sparsity, method or "teal"), None, {"calibration_file": _shown(path)}


def _shown(path) -> str:
    """A path as the results record it: relative to the working directory when inside it."""
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative


def check_tasks(tasks: list[str], include_path=None, include_defaults: bool = True):
    """lm-eval's TaskManager over its built-in tasks (unless `include_defaults` is False: indexing its
    ~15k task files takes about 5 s) and the task YAML folders of `include_path`, once every name in
    `tasks` (task, group or tag; or a YAML file) is known to it."""
    if isinstance(tasks, str) or not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise InvalidArgumentError(f"tasks must be a non-empty list of task names; got {tasks!r}")
    paths = [] if include_path is None else [include_path] if isinstance(include_path, (str, os.PathLike)) \
        else list(include_path)
    for path in paths:
        if not Path(path).is_dir():
            raise InvalidArgumentError(f"include path {str(path)!r} is not a folder of task YAML files")
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=[str(p) for p in paths] or None, include_defaults=include_defaults)
    missing = [t for t in tasks if t not in manager.all_tasks and not Path(t).is_file()]
    if missing:
        sources = (["lm-eval's built-in tasks"] if include_defaults else []) + [str(p) for p in paths]
        raise InvalidArgumentError(f"unknown task(s) {', '.join(missing)}: not among {' or '.join(sources) or 'no tasks'}"
                                   + ("; `lm-eval ls tasks` lists the built-in ones" if include_defaults else ""))
    return manager


def run_harness(model_args, tasks: list[str], include_path=None, limit=None, batch_size: int = 8,
                num_fewshot: int | None = None, include_defaults: bool = True, log_samples: bool = False,
                task_manager=None, **evaluate_kwargs) -> dict:
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
    return simple_evaluate(model=model, model_args=model_args, tasks=list(tasks), num_fewshot=num_fewshot,
                           batch_size=batch_size, limit=limit, task_manager=task_manager, log_samples=log_samples,
                           **evaluate_kwargs)


def results_record(results: dict) -> dict:
    """lm-eval's results without per-example outputs, made JSON-safe (task configs may hold
    functions; they are written as their repr)."""
    kept = {k: v for k, v in results.items() if k != "samples"}
    return json.loads(json.dumps(kept, default=str))
