"""Models: loading them, and finding one's way around them. Everything above this package asks
here where a model's parts are, instead of hard-coding module names.

    gguf          known models shipped as GGUF files in PyPI packages: find, check, convert, cache
    loading       `load_model` (known names, local folders, hub ids; one device or a device map)
    adapters      each decoder block's projections by role (q, k, v, o, gate, up, down)
    placement     where a module computes when a device map spreads the model; device records
    head          final hidden states, head logits (soft-capping included), the logit lens
    likelihood    the NLL of each token window, under whatever hooks are on the model
    fingerprint   what a thresholds, calibration or SPON file must match
    hooks         temporary forward hooks, all removed on exit
    tiny          tiny random models of every supported architecture, for tests
"""

from .adapters import (
    INPUT_GROUPS,
    ROLES,
    Adapter,
    Projection,
    block_output,
    block_projections,
    decoder_layers,
    get_adapter,
    iter_projections,
    register_adapter,
    supported_model_types,
)
from .fingerprint import check_fingerprint, model_fingerprint
from .gguf import DEFAULT_MODEL, KNOWN_MODELS, PackagedGGUF, cache_root, prepare_model
from .head import final_hidden, final_norm, head_logits, lens_logprobs
from .hooks import HookSet
from .likelihood import window_nll, window_nlls
from .loading import DEVICE_MAP_STRATEGIES, load_model, resolve_device, resolve_dtype
from .placement import device_record, execution_device, input_device, onloaded, placement_record

__all__ = [
    "window_nll",
    "window_nlls",
    "DEFAULT_MODEL",
    "DEVICE_MAP_STRATEGIES",
    "INPUT_GROUPS",
    "KNOWN_MODELS",
    "ROLES",
    "Adapter",
    "HookSet",
    "PackagedGGUF",
    "Projection",
    "block_output",
    "block_projections",
    "cache_root",
    "check_fingerprint",
    "decoder_layers",
    "device_record",
    "execution_device",
    "final_hidden",
    "final_norm",
    "get_adapter",
    "head_logits",
    "input_device",
    "iter_projections",
    "lens_logprobs",
    "load_model",
    "model_fingerprint",
    "onloaded",
    "placement_record",
    "prepare_model",
    "register_adapter",
    "resolve_device",
    "resolve_dtype",
    "supported_model_types",
]
