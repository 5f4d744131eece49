"""The side-effect-free view of a user's model.

A *shadow* is a structural copy of the module tree: new module objects whose
parameter and buffer dicts point at the user's very tensors (no weight memory
is copied, and updates by a training loop show up live), set to eval mode,
with the user's hooks left out. cnnlens runs and hooks only the shadow, so the
user's modules, flags and hooks are never touched, and BatchNorm in eval mode
only reads its running statistics.

Modules that cannot be copied this way (TorchScript) are run through a
*guarded* path instead: the eval flags are set on the model itself and
restored, exactly, on exit.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .model import unwrap

_HOOK_SAFELIST_MODULE = "torch.nn.utils"  # weight_norm / spectral_norm compute weights in pre-hooks


def _fresh_hooks(value: dict) -> dict:
    """An empty hook dict of the same type, keeping only torch's own weight-reparametrization hooks."""
    kept = type(value)()
    for key, hook in value.items():
        if type(hook).__module__.startswith(_HOOK_SAFELIST_MODULE):
            kept[key] = hook
    return kept


def _copy_tree(module: nn.Module, memo: dict[int, nn.Module]) -> nn.Module:
    if id(module) in memo:  # a module used in two places stays one module in the shadow
        return memo[id(module)]
    clone = module.__class__.__new__(module.__class__)
    state = dict(module.__dict__)
    for key, value in module.__dict__.items():
        if "hooks" in key and isinstance(value, dict):
            state[key] = _fresh_hooks(value)
    state["_is_full_backward_hook"] = None
    state["_parameters"] = type(module._parameters)(module._parameters)
    state["_buffers"] = type(module._buffers)(module._buffers)
    state["_modules"] = type(module._modules)(
        (name, None if child is None else _copy_tree(child, memo)) for name, child in module._modules.items()
    )
    state["training"] = False
    clone.__dict__ = state
    memo[id(module)] = clone
    return clone


def _walk(model: nn.Module) -> tuple[tuple, bool]:
    """One pass over the module tree: its identity fingerprint and whether it holds TorchScript.

    The fingerprint lists the ids of every module, parameter and buffer, so it
    changes when the user swaps any of them (in-place weight updates keep it).
    """
    ids: list[int] = []
    scripted = False
    stack = [model]
    while stack:
        module = stack.pop()
        scripted = scripted or isinstance(module, torch.jit.ScriptModule)
        ids.append(id(module))
        ids.extend(map(id, module._parameters.values()))
        ids.extend(map(id, module._buffers.values()))
        ids.append(-1)
        stack.extend(child for child in module._modules.values() if child is not None)
    return tuple(ids), scripted


_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, nn.Module, list]] = weakref.WeakKeyDictionary()


def copyable(model: nn.Module) -> bool:
    """False for module trees the shadow cannot copy (TorchScript)."""
    return not any(isinstance(m, torch.jit.ScriptModule) for m in model.modules())


def shadow(model: nn.Module) -> nn.Module:
    """The eval-mode, hook-free shadow of ``model`` (cached while its structure is unchanged).

    The cache check walks the module tree once (tens of microseconds for a
    ResNet), so a look costs little beyond the model's own passes.
    """
    model = unwrap(model)
    key, scripted = _walk(model)
    if scripted:
        raise TypeError(f"{type(model).__name__} is a TorchScript module and cannot be shadowed; "
                        "use cnnlens.core.shadow.guarded(model).")
    cached = _CACHE.get(model)
    if cached is not None and cached[0] == key:
        _, net, mirrors = cached
        for mirror in mirrors:
            mirror.sync()
        return net
    memo: dict[int, nn.Module] = {}
    net = _copy_tree(model, memo)
    _CACHE[model] = (key, net, [_Mirror(original, memo[id(original)]) for original in model.modules()])
    return net


_MANAGED = frozenset({"_parameters", "_buffers", "_modules", "training", "_is_full_backward_hook"})


class _Mirror:
    """Keeps one shadow module's plain attributes (a temperature, a dropout ``p``, a flag) equal to the user's.

    The structure, tensors, training flags and hooks are the shadow's own; every other attribute follows
    the user's module, so a changed attribute is seen on the next call. The check runs at C speed
    (``itemgetter`` + identity comparison), a microsecond or so per module.
    """

    __slots__ = ("original", "clone", "keys", "values", "size")

    def __init__(self, original: nn.Module, clone: nn.Module):
        self.original = weakref.ref(original)  # the cache must not keep the user's model alive
        self.clone = clone
        self._index(original.__dict__)

    def _index(self, state: dict) -> None:
        keys = tuple(k for k in state if k not in _MANAGED and "hooks" not in k)
        self.keys = keys if len(keys) != 1 else keys * 2  # itemgetter of one key returns a bare value
        self.values = operator.itemgetter(*self.keys) if self.keys else None
        self.size = len(state)

    def sync(self) -> None:
        original = self.original()
        if original is None:
            return
        state, mirror = original.__dict__, self.clone.__dict__
        if len(state) != self.size:
            self._index(state)
        if self.values is None:
            return
        try:
            ours = self.values(state)
            if any(map(operator.is_not, ours, self.values(mirror))):
                mirror.update(zip(self.keys, ours))
        except KeyError:  # an attribute was added or removed: re-index and copy them all
            self._index(state)
            mirror.update((k, state[k]) for k in self.keys)


@contextmanager
def guarded(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` itself in eval mode, restoring every module's ``training`` flag on any exit."""
    model = unwrap(model)
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for module, flag in flags:
            module.train(flag) if isinstance(module, torch.jit.ScriptModule) else setattr(module, "training", flag)
