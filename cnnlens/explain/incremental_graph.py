"""The model's graph for incremental inference (:mod:`cnnlens.explain.incremental`): its ``torch.fx`` trace
(cached per shared network, traced with fx's process-wide patches confined to the tracing thread), and what
each node is to the engine: a sliding window it can compute on crops, an element-wise or binary operation
that maps rectangles as they are, or a cut every path from the input to the output passes through."""

from __future__ import annotations

import builtins
import functools
import operator
import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx._symbolic_trace import _Patcher

_POINTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.Sigmoid,
                      nn.Tanh, nn.GELU, nn.ELU, nn.Mish, nn.Hardtanh, nn.Identity, nn.Dropout, nn.Dropout2d,
                      nn.PReLU, nn.Softplus)
_POINTWISE_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu_, F.relu6, F.leaky_relu, F.hardswish,
                        F.hardsigmoid, F.silu, F.gelu, F.elu, F.mish, F.hardtanh, F.dropout, torch.sigmoid,
                        torch.tanh, F.sigmoid, F.tanh, torch.nn.functional.softplus}
_POINTWISE_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "contiguous", "clone"}
_BINARY_FUNCTIONS = {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
                     operator.truediv, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # shared net -> fx.Graph or the trace error
_TRACE_LOCK = threading.Lock()  # one trace at a time: the confined patches below replace fx's patcher methods


def graph_of(net: nn.Module, shared: nn.Module) -> fx.Graph | None:
    """The fx graph of ``net`` (cached with ``shared``, the module the session keeps caches with), or None
    when it cannot be traced."""
    with _TRACE_LOCK:
        cached = _GRAPHS.get(shared)
        if cached is None:
            try:
                cached = _traced_in_this_thread(net)
            except Exception as error:  # noqa: BLE001 - any trace failure means: run in full
                cached = error
            _GRAPHS[shared] = cached
    return cached if isinstance(cached, fx.Graph) else None


def _traced_in_this_thread(net: nn.Module) -> fx.Graph:
    """``torch.fx.symbolic_trace(net).graph``, with fx's patches confined to this thread.

    While it traces, fx replaces ``nn.Module.__call__`` and ``__getattr__`` (and some module globals) for the
    whole process; a forward running meanwhile in another thread — another view of the Lens, the user's
    training loop — would be recorded into this graph and handed proxies. Here each patch falls through to
    the original everywhere but in the tracing thread.
    """
    thread = threading.get_ident()
    patch_method, patch = _Patcher.patch_method, _Patcher.patch

    def here_only(original: Any, replacement: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(replacement)
        def dispatch(*args: Any, **kwargs: Any) -> Any:
            chosen = replacement if threading.get_ident() == thread else original
            return chosen(*args, **kwargs)
        return dispatch

    def confined_method(self: Any, cls: type, name: str, new_fn: Callable[..., Any], deduplicate: bool = True
                        ) -> None:
        return patch_method(self, cls, name, here_only(getattr(cls, name), new_fn), deduplicate)

    def confined(self: Any, frame_dict: dict, name: str, new_fn: Callable[..., Any], deduplicate: bool = True
                 ) -> None:
        original = frame_dict.get(name, getattr(builtins, name, None))
        return patch(self, frame_dict, name, here_only(original, new_fn) if original is not None else new_fn,
                     deduplicate)

    _Patcher.patch_method, _Patcher.patch = confined_method, confined
    try:
        return fx.symbolic_trace(net).graph
    finally:
        _Patcher.patch_method, _Patcher.patch = patch_method, patch


def output_node_of(graph: fx.Graph, layer: str) -> fx.Node | None:
    """The node whose value is the output of module ``layer``: its call, or the last node run inside it."""
    found = None
    for node in graph.nodes:
        if node.op == "call_module" and node.target == layer:
            found = node
        elif node.op not in ("placeholder", "output", "get_attr") and layer in node.meta.get("nn_module_stack", {}):
            found = node
    return found


def window_geometry(node: fx.Node, module: nn.Module | None) -> tuple[str, dict] | None:
    """(kind, parameters) of a sliding-window layer this module can compute on crops, else None."""
    def pair(v: Any) -> tuple[int, int]:
        return (v, v) if isinstance(v, int) else tuple(v)

    if isinstance(module, nn.Conv2d) and module.padding_mode == "zeros":
        padding = module.padding
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0, 0)
            else:  # "same": torch pads (total // 2) before; odd totals are asymmetric, which crops cannot match
                totals = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
                if any(t % 2 for t in totals):
                    return None
                padding = tuple(t // 2 for t in totals)
        return "conv", {"kernel": pair(module.kernel_size), "stride": pair(module.stride), "padding": pair(padding),
                        "dilation": pair(module.dilation), "module": module}
    if isinstance(module, nn.MaxPool2d) and not module.return_indices:
        stride = module.stride if module.stride is not None else module.kernel_size
        return "max", {"kernel": pair(module.kernel_size), "stride": pair(stride), "padding": pair(module.padding),
                       "dilation": pair(module.dilation)}
    if (isinstance(module, nn.AvgPool2d) and module.count_include_pad and not module.ceil_mode
            and module.divisor_override is None):
        stride = module.stride if module.stride is not None else module.kernel_size
        return "avg", {"kernel": pair(module.kernel_size), "stride": pair(stride), "padding": pair(module.padding),
                       "dilation": (1, 1)}
    return None


def cut_nodes(nodes: list[fx.Node], modules: dict[str, nn.Module]) -> list[fx.Node]:
    """The nodes every path from the input to the output passes through (the rest of the network sees the
    image only through them), in order, where a first-order estimate may stand in for the rest: the last
    of each chain of element-wise nodes (a ReLU after its BatchNorm estimates more of the network at the
    same cost)."""
    inputs = [n for n in nodes if n.op == "placeholder"]
    output = next((n for n in nodes if n.op == "output"), None)
    if len(inputs) != 1 or output is None:
        return []

    def reaches_output_without(avoid: fx.Node) -> bool:
        seen, todo = {inputs[0]}, [inputs[0]]
        while todo:
            for user in todo.pop().users:
                if user is output:
                    return True
                if user is not avoid and user not in seen:
                    seen.add(user)
                    todo.append(user)
        return False

    through = [n for n in nodes if n.op not in ("placeholder", "output", "get_attr")
               and not reaches_output_without(n)]
    cuts = []
    for node, after in zip(through, [*through[1:], None]):
        module = modules.get(after.target) if after is not None and after.op == "call_module" else None
        if after is not None and list(node.users) == [after] and is_pointwise(after, module):
            continue
        cuts.append(node)
    return cuts


OUT_OF_PLACE = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                 operator.itruediv: operator.truediv}


def is_pointwise(node: fx.Node, module: nn.Module | None) -> bool:
    if node.op == "call_module":
        if isinstance(module, nn.BatchNorm2d):
            return not module.training and module.running_mean is not None
        return isinstance(module, _POINTWISE_MODULES)
    if node.op == "call_function":
        return node.target in _POINTWISE_FUNCTIONS and not (node.target is F.dropout and node.kwargs.get(
            "training", len(node.args) > 2 and node.args[2]))
    return node.op == "call_method" and node.target in _POINTWISE_METHODS


def is_binary(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _BINARY_FUNCTIONS) or (
        node.op == "call_method" and node.target in _BINARY_METHODS)
