"""Temporary hooks on a model: register many, remove them all on exit, also when the body raises.

    with HookSet() as hooks:
        for layer in layers:
            hooks.pre(layer, fn)
        model(ids)
    # every handle removed here

Used wherever sponlib looks into a forward pass for one pass only (calibration statistics,
sparse-aware refinement, block capture, analysis capture). The `Sparsifier` manages its own
handles because it stays attached across many calls.
"""

from __future__ import annotations

from typing import Callable

from torch import nn


class HookSet:
    """A group of forward hooks with one owner: leaving the `with` block removes every one."""

    def __init__(self):
        self._handles: list = []

    def pre(self, module: nn.Module, fn: Callable, *, with_kwargs: bool = False, prepend: bool = False) -> None:
        """A forward pre-hook; `prepend=True` runs it before hooks already there (e.g. to see a
        projection's input before a Sparsifier's mask)."""
        self._handles.append(module.register_forward_pre_hook(fn, with_kwargs=with_kwargs, prepend=prepend))

    def post(self, module: nn.Module, fn: Callable, *, with_kwargs: bool = False) -> None:
        """A forward hook, run after the module."""
        self._handles.append(module.register_forward_hook(fn, with_kwargs=with_kwargs))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __len__(self) -> int:
        return len(self._handles)

    def __enter__(self) -> "HookSet":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
