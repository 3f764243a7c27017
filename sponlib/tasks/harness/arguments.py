"""The settings of the "sponlib" lm-eval model (its model_args), parsed and checked without loading
anything, and the check that lm-eval is installed. Importing this module needs no lm-eval.
"""

from __future__ import annotations

from ...errors import InvalidArgumentError, MissingPackageError
from ...masks import MaskRequest
from ...models.gguf import DEFAULT_MODEL

REQUIREMENT = "lm-eval>=0.4.13,<0.5"
MODEL_NAME = "sponlib"  # the name registered with lm-eval

# model_args keys of the registered "sponlib" model
MODEL_ARGS = {
    "model": f"known name, local Hugging Face folder or hub id (default {DEFAULT_MODEL}); alias: pretrained",
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
HFLM_ARGS = (
    "batch_size",
    "max_batch_size",
    "max_length",
    "truncation",
    "logits_cache",
    "add_bos_token",
    "prefix_token_id",
    "softmax_dtype",
    "mixed_precision_dtype",
    "think_end_token",
    "enable_thinking",
    "chat_template_args",
)


def require_lm_eval():
    """The lm_eval package, or a MissingPackageError that says how to install it."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    install = f'pip install "{REQUIREMENT}"  (or pip install "sponlib[harness]")'
    try:
        import lm_eval
    except ImportError:
        raise MissingPackageError(
            f"running lm-evaluation-harness tasks needs the package lm-eval, which is "
            f"not installed. Install it with:\n    {install}"
        ) from None
    try:
        found = version("lm_eval")
    except PackageNotFoundError:  # a source checkout on sys.path: trust it
        return lm_eval
    if not Version("0.4.13") <= Version(found) < Version("0.5"):  # the registry and HFLM this module uses
        raise MissingPackageError(
            f"lm-eval {found} is installed; sponlib needs {REQUIREMENT}. Install it with:\n    {install}"
        )
    return lm_eval


def check_hflm_args(kwargs: dict) -> None:
    unknown = sorted(set(kwargs) - set(HFLM_ARGS))
    if unknown:
        raise InvalidArgumentError(
            f"unknown lm-eval model setting(s) {', '.join(unknown)}; with a loaded model "
            f"these apply: {', '.join(HFLM_ARGS)}"
        )


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
        raise InvalidArgumentError(
            f"unknown model_args key(s) {', '.join(unknown)}; the sponlib model takes "
            f"{', '.join(MODEL_ARGS)} and the HFLM settings {', '.join(HFLM_ARGS)}"
        )
    settings = {
        "model": DEFAULT_MODEL,
        "dtype": "float32",
        "device": "cpu",
        "sparsity": None,
        "method": None,
        "calibration": None,
        "thresholds": None,
        "spon": None,
    }
    settings.update(args)
    for key in ("model", "dtype", "device", "method", "calibration", "thresholds", "spon"):
        if settings[key] is not None:
            settings[key] = str(settings[key])  # e.g. a folder named 2024 parsed as a number
    settings["sparsity"] = mask_request(settings).sparsity  # every mask check, before anything loads
    return settings, hflm


def mask_request(settings: dict) -> MaskRequest:
    """The mask that model_args settings name (sponlib.masks checks the combination)."""
    return MaskRequest(
        settings["sparsity"], settings["method"], settings["calibration"], settings["thresholds"], settings["spon"]
    )
