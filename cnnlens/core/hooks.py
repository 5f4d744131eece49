"""Capturing activations, always inside a context manager.

``capture(net, names)`` hooks the named modules of a shadow net and removes
every handle on exit (success, exception or KeyboardInterrupt), then forgets
the stored tensors. The hook hands downstream layers a copy of the output, so
an in-place op later in the network (``ReLU(inplace=True)``) cannot overwrite
the captured activation; gradients flow through the copy unchanged.

Hooks live on the shared shadow, so each one only acts in the thread that
installed it: views computing in parallel threads never see each other's
captures.

``stop_below`` makes the forward build no autograd graph until that layer's
output: Grad-CAM then backpropagates only down to its layer, and the part of
the network below it runs at inference cost.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .shadow import named_modules


class StopForward(BaseException):
    """Raised by a capture hook once every layer an objective needs has run: the rest of the forward is skipped."""


class Capture:
    """Activations recorded in one forward, by layer name (a reused module keeps its last call)."""

    def __init__(self) -> None:
        self.activations: dict[str, torch.Tensor] = {}
        self.stop_after: dict[str, int] | None = None  # layer -> calls per forward, when the forward may stop early
        self.counts: dict[str, int] = {}

    def stop_when_recorded(self, calls: dict[str, int]) -> None:
        """Stop the next forward (raise :class:`StopForward`) once each layer has run its ``calls`` times."""
        self.stop_after = dict(calls)
        self.counts = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.activations:
            raise RuntimeError(f"Layer {name!r} did not run in the forward pass, so it has no activation.")
        return self.activations[name]


@contextmanager
def tensor_output_hooks(modules: Mapping[str, nn.Module], record: Callable[[str, nn.Module, torch.Tensor], Any]
                        ) -> Iterator[None]:
    """Call ``record(name, module, output)`` for every tensor output of ``modules`` in this thread's forwards.

    The one way cnnlens hooks a (shadow) net, for probing and capturing alike: other threads' forwards on the
    same shared shadow are ignored, ``record``'s return value replaces the output as in a forward hook, and
    every handle is removed on exit, whatever happened.
    """
    owner = threading.get_ident()
    handles = []

    def hook_for(name: str) -> Callable[[nn.Module, Any, Any], Any]:
        def hook(module: nn.Module, _inputs: Any, output: Any) -> Any:
            if not isinstance(output, torch.Tensor) or threading.get_ident() != owner:
                return None
            return record(name, module, output)
        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(hook_for(name)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def capture(net: nn.Module, names: Iterable[str], stop_below: str | None = None) -> Iterator[Capture]:
    """Record the outputs of ``names`` in ``net`` during forwards run inside the block."""
    store = Capture()
    names = set(names) | ({stop_below} if stop_below else set())
    grad_mode = torch.is_grad_enabled()

    def record(name: str, _module: nn.Module, output: torch.Tensor) -> torch.Tensor:
        if name == stop_below:
            torch.set_grad_enabled(True)
            output = output.detach().requires_grad_(True)
        store.activations[name] = output
        if store.stop_after is not None and name in store.stop_after:
            store.counts[name] = store.counts.get(name, 0) + 1
            if all(store.counts.get(n, 0) >= c for n, c in store.stop_after.items()):
                store.stop_after = None
                raise StopForward
        return output.clone()

    modules = named_modules(net)
    try:
        with tensor_output_hooks({name: modules[name] for name in names}, record):
            if stop_below is not None:
                torch.set_grad_enabled(False)
            yield store
    finally:
        torch.set_grad_enabled(grad_mode)
        store.activations.clear()
