"""What cnnlens knows about a model: its input spec and its layer table.

Nothing here changes the user's model. Per-model settings given with
:func:`configure` live in a weak dictionary keyed by the model, not on it.
The layer table comes from one probe forward on the model's shadow, with a
function mode that tracks each tensor's receptive field through every op.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves


def unwrap(model: nn.Module) -> nn.Module:
    """The module that really computes: strips DataParallel, DDP and torch.compile wrappers."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


@dataclass
class InputSpec:
    """How a model wants its input, given once per model with :func:`configure`.

    ``mean``/``std`` normalize [0, 1] images before the model (leave them None
    when the model normalizes inside, like the embedded default);
    ``input_size`` (H, W) resizes images that arrive at another size;
    ``classes`` names the outputs; ``output`` picks the logits out of a model
    that returns a tuple, dict or dataclass (an index, a key, an attribute
    name, or a callable); ``channels`` the input's channels, where the first
    convolution cnnlens finds is not the one the input meets (a stem written
    with ``F.conv2d``, or registered after another convolution).
    """

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_size: tuple[int, int] | None = None
    classes: tuple[str, ...] | None = None
    output: Any = None
    channels: int | None = None


_SPECS: weakref.WeakKeyDictionary[nn.Module, InputSpec] = weakref.WeakKeyDictionary()


def configure(model: nn.Module, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
              input_size: int | Sequence[int] | None = None, classes: Sequence[str] | None = None,
              output: Any = None, channels: int | None = None, reset: bool = False) -> InputSpec:
    """Tell cnnlens once how ``model`` takes its input; every method uses it from then on.

    Each call changes only what it is given (a later ``configure(model, classes=...)``
    keeps the mean/std and size set before); ``reset=True`` starts again from nothing.
    """
    model = unwrap(model)
    if (mean is None) != (std is None):
        raise ValueError("mean and std must be given together (or neither).")
    if std is not None and any(s <= 0 for s in std):
        raise ValueError(f"std must be positive, got {tuple(std)}.")
    if mean is not None and len(mean) != len(std):
        raise ValueError(f"mean and std must have one value per input channel each; got {len(mean)} and "
                         f"{len(std)} values.")
    if isinstance(classes, str):
        raise TypeError("classes must be a list of class names (one per output score), not one string.")
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    if input_size is not None and (len(input_size) != 2 or min(input_size) <= 0):
        raise ValueError(f"input_size must be a positive int or (H, W), got {input_size!r}.")
    if output is not None and not (callable(output) or isinstance(output, (int, str))):
        raise TypeError("output must be an index, a key or attribute name, or a callable "
                        f"taking the model's output; got {type(output).__name__}.")
    if channels is not None and (isinstance(channels, bool) or not isinstance(channels, int) or channels <= 0):
        raise ValueError(f"channels must be a positive int (the input's channels), got {channels!r}.")
    given: dict[str, Any] = {}
    if channels is not None:
        given["channels"] = channels
    if mean is not None:
        given.update(mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))
    if input_size is not None:
        given["input_size"] = tuple(int(s) for s in input_size)
    if classes is not None:
        given["classes"] = tuple(str(c) for c in classes)
    if output is not None:
        given["output"] = output
    base = InputSpec() if reset else spec_of(model)
    spec = dataclasses.replace(base, **given)
    channels = spec.channels or expected_channels(model)
    if spec.mean is not None and channels is not None and len(spec.mean) not in (1, channels):
        raise ValueError(f"mean and std have {len(spec.mean)} values each, but the model takes {channels}-channel "
                         f"images: give {channels} values each (or configure(channels=...) if that is wrong).")
    _SPECS[model] = spec
    return spec


def spec_of(model: nn.Module) -> InputSpec:
    """The model's :class:`InputSpec` (defaults when never configured; class names read from ``model.classes``)."""
    model = unwrap(model)
    spec = _SPECS.get(model)
    if spec is None:
        classes = getattr(model, "classes", None)
        spec = InputSpec(classes=tuple(classes) if isinstance(classes, (list, tuple)) else None)
    return spec


def expected_channels(model: nn.Module) -> int | None:
    """Input channels of the model's first convolution module (in registration order), or None when it has
    none: a guess, which ``configure(model, channels=...)`` overrides."""
    for module in unwrap(model).modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return module.in_channels
    return None


@dataclass(frozen=True)
class LayerInfo:
    """One module of the model as seen in a probe forward.

    ``shape`` is the output shape for one image; ``rf_size``/``rf_stride`` the
    receptive field of one output unit and the distance between neighbouring
    units, in input pixels (for non-spatial outputs ``rf_size`` is the image
    size and ``rf_stride`` None); ``rf_start`` the input coordinate where unit
    0's field starts (negative with padding); ``calls`` how often the module
    ran in one forward (activations of reused modules are the last call's).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    channels: int | None
    rf_size: int
    rf_stride: int | None
    rf_start: tuple[int, int] = (0, 0)
    calls: int = 1

    @property
    def spatial(self) -> bool:
        """True when the output has a spatial grid laid out C×H×W (H·W > 1); channels-last outputs are not."""
        return len(self.shape) == 3 and self.shape[1] * self.shape[2] > 1 and self.rf_stride is not None

    def whole_field(self, y: int, x: int, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
        """The box ``(y0, y1, x0, x1)`` of unit (y, x)'s whole receptive field, not clipped (it may reach beyond
        the image), except along an axis the field covers entirely: there the image's side. A tile of this box
        shows every unit of a layer at one scale."""
        h, w = image_size
        if self.rf_stride is None:
            return 0, h, 0, w
        box = []
        for start, length in ((self.rf_start[0] + y * self.rf_stride, h), (self.rf_start[1] + x * self.rf_stride, w)):
            box += [0, length] if self.rf_size >= length else [start, start + self.rf_size]
        return tuple(box)

    def receptive_field(self, y: int, x: int, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
        """The input box ``(y0, y1, x0, x1)`` (end-exclusive, clipped to the image) that unit (y, x) sees."""
        h, w = image_size
        if self.rf_stride is None:
            return 0, h, 0, w
        y0 = self.rf_start[0] + y * self.rf_stride
        x0 = self.rf_start[1] + x * self.rf_stride
        return max(y0, 0), min(y0 + self.rf_size, h), max(x0, 0), min(x0 + self.rf_size, w)


# --- receptive-field tracking -------------------------------------------------------------------

@dataclass(frozen=True)
class _RF:
    size: tuple[int, int]
    stride: tuple[int, int]
    start: tuple[int, int]


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _window(rf: _RF, kernel, stride, padding, dilation) -> _RF:
    k, s, p, d = _pair(kernel), _pair(stride), _pair(padding), _pair(dilation)
    return _RF(
        size=tuple(rf.size[i] + (k[i] - 1) * d[i] * rf.stride[i] for i in range(2)),
        stride=tuple(rf.stride[i] * s[i] for i in range(2)),
        start=tuple(rf.start[i] - p[i] * rf.stride[i] for i in range(2)),
    )


def _next_rf(name: str, rf: _RF, args: tuple, kwargs: dict, out_hw: tuple[int, int] | None) -> _RF | None:
    """Receptive field of an op's output from its (widest) input's; None = no spatial structure left."""
    if out_hw is None:
        return None
    if name == "conv2d":
        weight = _arg(args, kwargs, 1, "weight", None)
        padding = _arg(args, kwargs, 4, "padding", 0)
        dilation = _arg(args, kwargs, 5, "dilation", 1)
        if isinstance(padding, str):  # "same" / "valid"
            k = weight.shape[-1]
            d = dilation if isinstance(dilation, int) else dilation[0]
            padding = d * (k - 1) // 2 if padding == "same" else 0
        return _window(rf, weight.shape[-2:], _arg(args, kwargs, 3, "stride", 1), padding, dilation)
    if name in ("max_pool2d", "_max_pool2d", "max_pool2d_with_indices", "avg_pool2d"):
        kernel = _arg(args, kwargs, 1, "kernel_size", 1)
        stride = _arg(args, kwargs, 2, "stride", None) or kernel
        dilation = _arg(args, kwargs, 4, "dilation", 1) if "max" in name else 1
        return _window(rf, kernel, stride, _arg(args, kwargs, 3, "padding", 0), dilation)
    if name.lstrip("_").startswith("adaptive_") and name.endswith("pool2d"):
        inp = args[0]
        in_hw = inp.shape[-2:]
        if any(out_hw[i] > in_hw[i] for i in range(2)):  # upsampling (VGG's 7×7 pool below 224 px): its units
            return None  # repeat input cells unevenly, no stride places them
        k = tuple(math.ceil(in_hw[i] / out_hw[i]) for i in range(2))
        s = tuple(max(in_hw[i] // out_hw[i], 1) for i in range(2))
        return _window(rf, k, s, 0, 1)
    if name == "pad":
        pad = _arg(args, kwargs, 1, "pad", ())
        if len(pad) >= 4:
            return _RF(rf.size, rf.stride, (rf.start[0] - pad[2] * rf.stride[0], rf.start[1] - pad[0] * rf.stride[1]))
    return rf


_AXIS_MOVES = frozenset({"permute", "transpose", "movedim", "moveaxis", "swapaxes", "swapdims"})


def _grid_last_after_move(inp: torch.Tensor, grid_last: bool, out: torch.Tensor) -> bool:
    """After an axis-moving op: is the H×W grid on ``out``'s last two axes (C×H×W) or not (channels-last)?"""
    if inp.dim() != out.dim() or out.dim() < 4:
        return False
    grid = tuple(inp.shape[-2:]) if grid_last else tuple(inp.shape[-3:-1])
    channels = inp.shape[-3] if grid_last else inp.shape[-1]
    return tuple(out.shape[-2:]) == grid and out.shape[-3] == channels


class _ReceptiveFieldMode(TorchFunctionMode):
    """Labels every tensor computed from the probe input with its receptive field and grid layout.

    A tensor's grid is "last" (…×C×H×W) or, after a permute to channels-last (…×H×W×C, as in
    ConvNeXt and Swin blocks), not; the receptive field is carried through either way.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[int, tuple[_RF | None, weakref.ref, bool]] = {}

    def field(self, t: torch.Tensor) -> _RF | None | str:
        entry = self.fields.get(id(t))
        if entry is None or entry[1]() is not t:
            return "untracked"
        return entry[0]

    def grid_last(self, t: torch.Tensor) -> bool:
        """Whether ``t``'s spatial grid sits on its last two axes (False for channels-last tensors)."""
        entry = self.fields.get(id(t))
        return entry is not None and entry[1]() is t and entry[2]

    def label(self, t: torch.Tensor, rf: _RF | None, grid_last: bool = True) -> None:
        self.fields[id(t)] = (rf, weakref.ref(t), grid_last)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tracked = [(t, self.field(t)) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        tracked = [(t, f) for t, f in tracked if f != "untracked"]
        if not tracked:
            return out
        spatial = [(t, f) for t, f in tracked if f is not None]
        name = getattr(func, "__name__", "")
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            if not spatial or t.dim() < 4:
                self.label(t, None)
                continue
            # inputs on the output's own grid carry its local field; a broadcast 1×1 gate (squeeze-and-excitation)
            # sees the whole image but does not move the grid, so it does not set the field
            same_grid = [(i, f) for i, f in spatial if i.dim() == t.dim() and i.shape[-2:] == t.shape[-2:]]
            source, widest = max(same_grid or spatial, key=lambda tf: tf[1].size[0] * tf[1].size[1])
            grid_last = self.grid_last(source)
            if name in _AXIS_MOVES:
                self.label(t, widest, _grid_last_after_move(source, grid_last, t))
            elif grid_last:
                self.label(t, _next_rf(name, widest, args, kwargs, tuple(t.shape[-2:])))
            else:  # channels-last: element-wise ops, norms and linear layers keep the field
                self.label(t, widest, False)
        return out


def probe_layers(net: nn.Module, forward: Callable[[torch.Tensor], Any], x: torch.Tensor) -> list[LayerInfo]:
    """Run ``forward(x)`` once on ``net`` (a shadow) and describe every module that ran, in completion order.

    A forward that fails part-way (a head that does not take this size, say) still describes the layers that
    ran before the failure; the method's own forward reports the error when it needs the rest.
    """
    from .hooks import tensor_output_hooks  # hooks.py and shadow.py import this module
    from .shadow import named_modules

    mode = _ReceptiveFieldMode()
    seen: dict[str, dict[str, Any]] = {}
    h, w = x.shape[-2:]

    def record(name: str, module: nn.Module, output: torch.Tensor) -> None:
        entry = seen.pop(name, {"calls": 0})  # re-insert: order = last completion
        rf = mode.field(output)
        entry.update(calls=entry["calls"] + 1, kind=type(module).__name__, shape=tuple(output.shape[1:]),
                     rf=rf if isinstance(rf, _RF) and mode.grid_last(output) else None)
        seen[name] = entry

    modules = {name: module for name, module in named_modules(net).items() if name}
    with tensor_output_hooks(modules, record), torch.no_grad(), mode:
        x = x.detach()
        mode.label(x, _RF((1, 1), (1, 1), (0, 0)))
        try:
            forward(x)
        except Exception:  # noqa: BLE001 - the layers that ran are described; a real call shows the error
            pass
    table = []
    for name, e in seen.items():
        rf = e["rf"]
        shape = e["shape"]
        if isinstance(rf, _RF) and len(shape) == 3:
            info = LayerInfo(name, e["kind"], shape, shape[0], max(rf.size), max(rf.stride), rf.start, e["calls"])
        else:
            info = LayerInfo(name, e["kind"], shape, shape[0] if shape else None, max(h, w), None, (0, 0), e["calls"])
        table.append(info)
    return table


def find_layer(table: list[LayerInfo], name: str | None, *, spatial: bool = False,
               argument: str = "layer") -> LayerInfo:
    """The table entry for ``name`` (None = the last spatial layer), or a ValueError listing valid names."""
    candidates = [info for info in table if info.spatial] if spatial else table
    if not candidates:
        raise ValueError(f"The model has no layer with spatial output (C×H×W), so {argument} cannot be chosen; "
                         "this method needs a convolutional layer.")
    if name is None:
        return candidates[-1]
    if not isinstance(name, str):
        raise TypeError(f"{argument} must be a layer name (str), got {type(name).__name__}.")
    for info in candidates:
        if info.name == name:
            return info
    names = [info.name for info in candidates]
    what = "Layers with spatial output" if spatial else "Layers"
    shown = ", ".join(names) if len(names) <= 40 else ", ".join(names[:20] + ["..."] + names[-19:])
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    flat = next((info for info in table if info.name == name), None)
    if flat is not None:
        raise ValueError(f"{argument} {name!r} has no spatial output (its output is {tuple(flat.shape)}); "
                         f"this needs a C×H×W layer. {what}: {shown}.{hint}")
    raise ValueError(f"Unknown {argument} {name!r}. {what}: {shown}.{hint}")
