"""HookSet: every hook it registered is gone after the block, also when the block raises."""

import pytest
import torch
from torch import nn

from sponlib.models import HookSet


def test_hooks_removed_on_exit_and_on_error():
    layer = nn.Linear(3, 2)
    calls = []
    with HookSet() as hooks:
        hooks.pre(layer, lambda m, a: calls.append("pre"))
        hooks.post(layer, lambda m, a, o: calls.append("post"))
        assert len(hooks) == 2
        layer(torch.ones(1, 3))
    layer(torch.ones(1, 3))
    assert calls == ["pre", "post"]
    with pytest.raises(RuntimeError):
        with HookSet() as hooks:
            hooks.pre(layer, lambda m, a: calls.append("again"))
            raise RuntimeError("body failed")
    layer(torch.ones(1, 3))
    assert calls == ["pre", "post"]
    assert not layer._forward_pre_hooks and not layer._forward_hooks


def test_prepend_runs_before_existing_hooks():
    layer = nn.Linear(3, 2)
    seen = []
    handle = layer.register_forward_pre_hook(lambda m, a: (a[0] * 0,))  # e.g. a mask
    with HookSet() as hooks:
        hooks.pre(layer, lambda m, a: seen.append(a[0].clone()), prepend=True)
        layer(torch.ones(1, 3))
    handle.remove()
    assert torch.equal(seen[0], torch.ones(1, 3))  # saw the input before the other hook zeroed it
