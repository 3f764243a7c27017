"""`SponlibLM`: lm-eval's HFLM over an already-loaded model, every model call under sponlib's mask,
and `lm_from_model_args`, which loads the model, its mask and the LM from model_args. Importing
this module needs lm-eval (the optional extra `harness`); sponlib.tasks.harness imports it only
once `require_lm_eval` has said lm-eval is there.
"""

from __future__ import annotations

import contextlib
import logging
import os

from lm_eval.models.huggingface import HFLM

from ...errors import InvalidArgumentError
from ...masks import with_rotations
from ...models.loading import load_model
from ...models.placement import input_device
from ...sparsity.sparsifier import Sparsifier
from .arguments import check_hflm_args, check_model_args, mask_request, parse_model_args


class SponlibLM(HFLM):
    """An HFLM whose model calls run under sponlib's Sparsifier (dense without thresholds).

    `sparsifier` is None for the dense model; `provenance` says what mask ran, for results.
    """

    def __init__(self, pretrained, tokenizer=None, thresholds=None, spon=None, batch_size=8, **kwargs):
        check_hflm_args(kwargs)
        if tokenizer is None or isinstance(pretrained, (str, os.PathLike)):
            raise InvalidArgumentError(
                "the sponlib lm-eval model wraps a loaded model and its tokenizer: "
                "harness_lm(model, tokenizer, ...); by name use model_args "
                "(model=NAME,sparsity=...)"
            )
        sparsifier = sparsifier_for(pretrained, thresholds, spon)  # a bad pairing fails before lm-eval starts
        # HFLM warns that a model passed in loaded skips its loading options and distributed
        # set-up: true, and meant here, so those two warnings are left out
        logger = logging.getLogger(HFLM.__module__)
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            super().__init__(
                pretrained=pretrained, tokenizer=tokenizer, backend="causal", batch_size=batch_size, **kwargs
            )
        finally:
            logger.setLevel(level)
        self.sparsifier = sparsifier
        self.provenance = {
            "method": thresholds.method if thresholds else "dense",
            "sparsity": thresholds.target if thresholds else 0.0,
            "spon": spon is not None,
        }

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
        info = {
            "model_num_parameters": sum(p.numel() for p in self._model.parameters()),
            "model_dtype": str(self._model.dtype).removeprefix("torch."),
            "model_source": dict(getattr(self._model, "sponlib_source", {})),
            "sponlib": dict(self.provenance),
        }
        if self.sparsifier is not None and self.sparsifier.measured():
            # over every token forwarded, batch padding included: close to, not exactly, the text's
            info["sponlib"]["measured_sparsity"] = self.sparsifier.summary()["weighted"]
        return info


def sparsifier_for(model, thresholds, spon) -> Sparsifier | None:
    """The Sparsifier of `thresholds` (and `spon`, SponVectors or name -> vector) on `model`, not
    attached; None for the dense model."""
    if thresholds is None:
        if spon is not None:
            raise InvalidArgumentError(
                "SPON vectors need the thresholds they were trained against: pass both "
                "(load_spon(path, model) returns vectors and thresholds)"
            )
        return None
    alphas = None
    if spon is not None:
        device = input_device(model)
        alphas = {n: a.to(device) for n, a in getattr(spon, "alphas", spon).items()}  # SponVectors or a dict
    return Sparsifier(model, thresholds, alphas=alphas)


def lm_from_model_args(model_args: str | dict | None, **defaults):
    """The "sponlib" lm-eval model from model_args such as
    'model=smollm2-135m,sparsity=0.5,method=teal,spon=shipped,dtype=float32,device=cpu'
    (keys: MODEL_ARGS, plus the HFLM settings HFLM_ARGS). `defaults` are what lm-eval adds
    (batch_size, max_batch_size, device); model_args win over them."""
    given = parse_model_args(model_args)
    for key, value in defaults.items():
        if value is not None:
            given.setdefault(key, value)
    settings, hflm = check_model_args(given)  # everything checked before the model loads
    model, tokenizer = load_model(settings["model"], dtype=settings["dtype"], device=settings["device"])
    mask = with_rotations(mask_request(settings).resolve(model), model, tokenizer)  # larosa's, from its text
    lm = SponlibLM(model, tokenizer, thresholds=mask.thresholds, spon=mask.spon, **hflm)
    lm.provenance.update(mask.source)
    return lm
