"""One look at a model: its shadow, input spec, layer table and a checked forward.

Every method opens ``with look(model) as s:`` and then only touches ``s.net``
(the shadow), so the user's model is never run, hooked or switched to eval.
"""

from __future__ import annotations

import functools
import math
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import nn

from .hooks import Capture, StopForward
from .images import Batch, to_batch
from .model import InputSpec, LayerInfo, expected_channels, find_layer, probe_layers, spec_of, unwrap
from .objectives import Objective, class_probabilities
from .results import Prediction
from .shadow import ShadowError, copyable, guarded, module_name, named_modules, view

_SIZE_ERRORS = ("mat1 and mat2 shapes cannot be multiplied", "Calculated padded input size", "Output size is too small",
                "Given groups=", "Given input size", "Expected input batch_size", "expected input with shape",
                "size of tensor a", "must match the size", "shape '[", "is invalid for input of size",
                "Expected size for first two dimensions", "Kernel size can't be greater than actual input size")

_TABLES: weakref.WeakKeyDictionary[nn.Module, OrderedDict[tuple[int, int], list[LayerInfo]]] = \
    weakref.WeakKeyDictionary()
_PROBE_SECONDS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, int], float]] = weakref.WeakKeyDictionary()
_PROBE_FAILURES: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, int], str]] = weakref.WeakKeyDictionary()
MAX_TABLES = 8  # layer tables kept per model (one per input size, least recently used dropped)
DEFAULT_BATCH = 64  # images per forward of the batched methods, unless the heap asks for fewer
HEAP_BLOCK = 32 * 2**20  # glibc's largest heap block (M_MMAP_THRESHOLD's ceiling on 64-bit); larger allocations
# get fresh mmapped pages, and their page faults cost more than the forward itself on large batches (measured,
# 2 cores, a map of occluded forwards at 224 px: resnet18 1.4×, vgg16 1.3×, densenet121 2.7× slower at 64 images
# per batch than at a batch whose largest activation fits in one heap block)
STREAM_BLOCK = 8 * 2**20  # a pass over a dataset (forward after forward, nothing in between) keeps each part's
# largest activation to this: glibc returns the top of its heap to the system on free once it exceeds the trim
# threshold (twice the largest block freed so far, at most 64 MiB), and a part whose activations alive at once
# pass it is faulted in afresh on every forward. Measured (raw forwards, parts of 64 / 32 MiB rule / 8 MiB rule):
# the default model 1.12 / 1.12 / 0.80 s on 1,024 images, resnet18 at 128 px 2.36 / 2.13 / 1.78 s, mobilenet_v2
# 2.49 / 1.80 / 0.95 s on 256; with glibc's thresholds fixed (MALLOC_MMAP_MAX_=0, a huge MALLOC_TRIM_THRESHOLD_)
# every part size runs alike, so the cause is the allocator, not the caches


_CHANNELS: weakref.WeakKeyDictionary[nn.Module, int | None] = weakref.WeakKeyDictionary()


def _channels(model: nn.Module, net: nn.Module) -> int | None:
    """The model's input channels, remembered per shadow (a new shadow comes with any structural change)."""
    if net is model:
        return expected_channels(model)
    if net not in _CHANNELS:
        _CHANNELS[net] = expected_channels(model)
    return _CHANNELS[net]


def select_output(out: Any, selector: Any) -> torch.Tensor:
    """The logits inside a model's output, using the selector given to ``configure(model, output=...)``."""
    if selector is None:
        if isinstance(out, torch.Tensor):
            return out
        raise TypeError(f"The model returned a {type(out).__name__}, not a tensor. Tell cnnlens where the logits "
                        "are: cnnlens.configure(model, output=0) for a tuple, output='logits' for a dict key or "
                        "attribute, or output=lambda out: ... .")
    if callable(selector):
        return selector(out)
    if isinstance(out, dict):
        if selector not in out:
            keys = ", ".join(map(str, out))
            raise ValueError(f"output={selector!r} is not a key of the model's output; keys: {keys}.")
        return out[selector]
    if isinstance(selector, str):
        if not hasattr(out, selector):
            raise ValueError(f"output={selector!r}: the model's {type(out).__name__} output has no such attribute.")
        return getattr(out, selector)
    return out[selector]


class InputRangeWarning(UserWarning):
    """The input's values do not look like [0, 1] images."""


def warn_if_out_of_range(x: torch.Tensor, normalizes: bool) -> None:
    """Warn about inputs that look already normalized (negative values) or scaled to 0–255."""
    low, high = (float(v) for v in torch.aminmax(x.detach()))
    if low < -0.05:
        twice = ("cnnlens normalizes with the mean/std given to configure(), so this input would be normalized "
                 "twice" if normalizes else "cnnlens applies the model's normalization itself when you give "
                 "configure(model, mean=..., std=...)")
        warnings.warn(f"x has negative values (min {low:.3g}) and looks already normalized; cnnlens expects images "
                      f"in [0, 1] and {twice}. Pass the unnormalized image.", InputRangeWarning, stacklevel=4)
    elif high > 1.5:
        warnings.warn(f"x has values up to {high:.3g}; cnnlens expects images in [0, 1] (uint8 images are scaled "
                      "for you). Divide a float image in 0–255 by 255.", InputRangeWarning, stacklevel=4)


class Session:
    """A model seen through cnnlens: ``net`` is what runs (the shadow, or the guarded model itself)."""

    def __init__(self, model: nn.Module, net: nn.Module, is_shadow: bool, shared: nn.Module | None = None):
        self.model = model
        self.net = net
        self.is_shadow = is_shadow
        self._shared = shared if shared is not None else net  # what caches are kept with (not a snapshot)
        self.spec: InputSpec = spec_of(model)
        self.channels = self.spec.channels or _channels(model, self._shared)
        ref = next(iter(model.parameters()), None)
        ref = ref if ref is not None else next(iter(model.buffers()), None)
        self.device = ref.device if ref is not None else torch.device("cpu")
        self.dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
        self._norm = None
        if self.spec.mean is not None:
            shape = (1, -1, 1, 1)
            self._norm = (torch.tensor(self.spec.mean, device=self.device, dtype=self.dtype).view(shape),
                          torch.tensor(self.spec.std, device=self.device, dtype=self.dtype).view(shape))

    # --- input and output ---------------------------------------------------------------------

    def prepare(self, x: Any, argument: str = "x") -> Batch:
        """Any image input → a :class:`Batch` at the model's size, on its device (a warning when its values do
        not look like [0, 1] images); errors name ``argument``."""
        batch = to_batch(x, channels=self.channels, size=self.spec.input_size, device=self.device, dtype=self.dtype,
                         argument=argument)
        warn_if_out_of_range(batch.x, self.spec.mean is not None)
        return batch

    def net_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the network itself receives for [0, 1] images ``x``: in the model's dtype (a synthesized image is
        float32 whatever the model), normalized when the spec says so, and a new tensor either way, so that a
        forward that changes its input in place (``x -= 0.5``, ``x.sub_(mean)``) changes neither the images a
        method goes on using nor a gradient method's leaf."""
        if self._norm is not None:
            return (x.to(self.dtype) - self._norm[0]) / self._norm[1]
        return x.to(self.dtype, copy=True)

    def raw_forward(self, x: torch.Tensor) -> Any:
        """The network's own output for [0, 1] images ``x`` (normalized first when the spec says so)."""
        x = self.net_input(x)
        try:
            return self.net(x)
        except RuntimeError as error:
            text = str(error)
            if any(pattern in text for pattern in _SIZE_ERRORS):
                raise ValueError(f"x of size {tuple(x.shape[-2:])} does not fit the model ({text.splitlines()[0]}). "
                                 "Resize it, or set cnnlens.configure(model, input_size=(H, W)).") from error
            raise

    def run(self, x: torch.Tensor, objective: Objective, cap: Capture, also: tuple[str, ...] = ()
            ) -> torch.Tensor | None:
        """One forward for ``objective``: its logits when it needs them; otherwise the network's output is not
        read (a backbone with no class head works) and, when the layer table for this size is known, the
        forward stops after the last call of the deepest layer the objective reads."""
        if objective.needs_logits or not objective.layers:
            return self.logits(x)
        needed = objective.layers | set(also)
        tables = _TABLES.get(self._shared, {})
        table = tables.get(tuple(x.shape[-2:]))
        if table is not None:
            calls = {info.name: info.calls for info in table}
            cap.stop_when_recorded({name: calls.get(name, 1) for name in needed})
        try:
            self.raw_forward(x)
        except StopForward:
            pass
        except Exception:  # noqa: BLE001 - past the layers it needs, the objective does not read the network
            if not needed <= cap.activations.keys():
                raise
        finally:
            cap.stop_after = None
        return None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Checked B×K logits for ``x``: NaN/Inf or a wrong shape is a clear ValueError."""
        return self.checked_logits(self.raw_forward(x))

    def checked_logits(self, output: Any) -> torch.Tensor:
        """The B×K logits inside the network's ``output``, checked (see :meth:`logits`)."""
        out = select_output(output, self.spec.output)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"The selected model output is a {type(out).__name__}, not a tensor of logits.")
        if out.dim() > 2 and all(s == 1 for s in out.shape[2:]):
            out = out.flatten(1)
        if out.dim() != 2:
            raise ValueError(f"The model's output has shape {tuple(out.shape)}; cnnlens needs B×K class scores.")
        if not torch.isfinite(out).all():
            raise ValueError("The model's output contains NaN or Inf for this input; "
                             "check the input's range and the model's weights.")
        names = self.spec.classes
        if names is not None and len(names) != out.shape[1]:
            warnings.warn(f"The model scores {out.shape[1]} classes but has {len(names)} class names (configure("
                          "classes=...) or its .classes); classes without a name show their index.", stacklevel=2)
        return out

    def class_name(self, index: int) -> str:
        classes = self.spec.classes
        return classes[index] if classes is not None and 0 <= index < len(classes) else str(index)

    def predictions(self, logits: torch.Tensor | None, k: int = 5, batch: int = 1) -> list[list[Prediction]]:
        """Top-``k`` predictions (index, name, probability) for each row of ``logits`` (none without logits)."""
        if logits is None:
            return [[] for _ in range(batch)]
        probs = class_probabilities(logits.detach().float())
        top = probs.topk(min(k, probs.shape[1]), dim=1)
        return [[Prediction(i, self.class_name(i), p) for p, i in zip(ps, idx)]
                for ps, idx in zip(top.values.tolist(), top.indices.tolist())]

    # --- layers -------------------------------------------------------------------------------

    def layers(self, size: tuple[int, int] | None = None) -> list[LayerInfo]:
        """The layer table for inputs of ``size`` (probed once, cached with the shadow)."""
        if not self.is_shadow:
            raise TypeError("This reads the model's layers, and a TorchScript model's modules cannot be hooked; "
                            "pass the eager nn.Module.")
        size = tuple(size or self.spec.input_size or (224, 224))
        tables = _TABLES.setdefault(self._shared, OrderedDict())
        if size in tables:
            tables.move_to_end(size)
        else:
            probe = torch.full((1, self.channels or 3, *size), 0.5, device=self.device, dtype=self.dtype)
            failures = _PROBE_FAILURES.setdefault(self._shared, {})
            failures.pop(size, None)

            def forward(x: torch.Tensor) -> Any:
                """The probe's forward, remembering why it failed (the probe describes the layers that ran)."""
                try:
                    return self.raw_forward(x)
                except Exception as error:  # noqa: BLE001 - kept as text, re-raised for the probe to stop at
                    failures[size] = str(error).splitlines()[0] if str(error) else type(error).__name__
                    raise

            start = time.perf_counter()
            tables[size] = probe_layers(self.net, forward, probe)
            _PROBE_SECONDS.setdefault(self._shared, {})[size] = time.perf_counter() - start
            while len(tables) > MAX_TABLES:
                tables.popitem(last=False)
        return tables[size]

    def probe_failure(self, size: tuple[int, int]) -> str | None:
        """Why the layer-table probe forward failed at ``size`` (its table stops there), or None."""
        self.layers(size)
        return _PROBE_FAILURES.get(self._shared, {}).get(tuple(size))

    def probe_seconds(self, size: tuple[int, int]) -> float:
        """How long the layer-table probe forward took at ``size`` (an upper bound of one forward's time)."""
        self.layers(size)
        return _PROBE_SECONDS.get(self._shared, {}).get(tuple(size), 0.0)

    def batch_in_heap(self, size: tuple[int, int], most: int, block: int = HEAP_BLOCK) -> int:
        """Images per forward at ``size``, at most ``most``: on the CPU, as many as keep the largest module output
        of a batch within ``block`` bytes (one heap block, ``HEAP_BLOCK``, by default), so that the allocator
        reuses its memory instead of faulting in fresh pages for every activation; elsewhere, and for a TorchScript
        model (whose modules cannot be hooked to measure their outputs), ``most``."""
        if self.device.type != "cpu" or not self.is_shadow:
            return most
        largest = max((math.prod(info.shape) for info in self.layers(size)), default=0)
        per_image = largest * torch.empty((), dtype=self.dtype).element_size()
        return max(1, min(most, block // max(per_image, 1)))

    def heap_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The batch ``x`` (N×C×H×W) in forwards of :meth:`batch_in_heap` images within ``STREAM_BLOCK``: how a
        pass over a dataset (scan, embeddings, filter health) or LIME runs a loaded batch through the model."""
        return x.split(self.batch_in_heap(tuple(x.shape[-2:]), len(x), STREAM_BLOCK))

    def images_per_forward(self, batch_size: int | None, size: tuple[int, int]) -> int:
        """The caller's ``batch_size``, or by default 64 images per forward, fewer on the CPU where activations
        are large (:meth:`batch_in_heap`)."""
        return batch_size or self.batch_in_heap(size, DEFAULT_BATCH)

    def check_layer_name(self, name: str, argument: str = "target layer") -> None:
        """A ValueError listing the layers when ``name`` is not a module of the model (no probe forward)."""
        names = [n for n in named_modules(self.net) if n]
        if name not in names:
            find_layer([LayerInfo(n, "", (), None, 0, None) for n in names], name, argument=argument)

    def layer(self, name: str | nn.Module | None, size: tuple[int, int], *, spatial: bool = True,
              argument: str = "layer") -> LayerInfo:
        """Resolve a layer (a name, a module of the model, or None = the last spatial layer), or raise a
        ValueError listing the valid ones."""
        if not self.is_shadow:
            raise TypeError(f"{argument}: layers of a TorchScript model cannot be hooked; "
                            "this method needs an eager nn.Module.")
        if isinstance(name, nn.Module):
            found = module_name(self.model, name)
            if found is None:
                raise ValueError(f"{argument}: the {type(name).__name__} given is not a module of this model; "
                                 "pass one of its modules (model.layer4) or a layer name.")
            name = found
        return find_layer(self.layers(size), name, spatial=spatial, argument=argument)

    def module(self, name: str) -> nn.Module:
        return named_modules(self.net)[name]


class WeightsMoved(Exception):
    """The shared weights changed under a look (another thread is training): the call is redone on a snapshot."""


_RETRYING = threading.local()
F = TypeVar("F", bound=Callable[..., Any])


def redone_when_weights_move(fn: F) -> F:
    """Run ``fn`` again (on a snapshot of the weights) when a training thread changed them while it ran.

    Every public method is wrapped, so a call made while another thread trains never raises autograd's
    in-place error and never mixes two sets of weights; when no one trains it runs once.
    """
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        depth = getattr(_RETRYING, "depth", 0)
        _RETRYING.depth = depth + 1
        try:
            for _ in range(3):
                try:
                    return fn(*args, **kwargs)
                except WeightsMoved:
                    continue
            return fn(*args, **kwargs)
        finally:
            _RETRYING.depth = depth
    return wrapper  # type: ignore[return-value]


@contextmanager
def look(model: nn.Module) -> Iterator[Session]:
    """Open a :class:`Session` on ``model``: the shadow when possible, else the guarded model."""
    model = unwrap(model)
    with torch.inference_mode(False):  # methods need autograd even when called under torch.inference_mode()
        try:
            job = view(model)
        except ShadowError:
            raise
        except TypeError:
            if copyable(model):
                raise
            with guarded(model) as net:
                yield Session(model, net, is_shadow=False)
            return
        retry = getattr(_RETRYING, "depth", 0) > 0
        try:
            yield Session(model, job.net, is_shadow=True, shared=job.shared)
        except Exception as error:
            if retry and job.weights_moved():
                raise WeightsMoved("the weights changed during the call") from error
            raise
        if retry and job.weights_moved():
            raise WeightsMoved("the weights changed during the call")


@redone_when_weights_move
def layers(model: nn.Module, input_size: int | tuple[int, int] | None = None) -> list[LayerInfo]:
    """Every module that runs in a forward: name, kind, output shape, channels, receptive field.

    Found by one probe forward on the model's shadow at ``input_size`` (default:
    the configured size, else 224×224). Wrappers (DataParallel, DDP,
    torch.compile) are unwrapped; the model itself is not touched. A forward
    that fails at that size is a ValueError (the table would stop where it failed).
    """
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    if input_size is not None and (len(input_size) != 2 or min(input_size) <= 0):
        raise ValueError(f"input_size must be a positive int or (H, W), got {input_size!r}.")
    with look(model) as session:
        if not session.is_shadow:
            raise TypeError("layers: a TorchScript model's modules cannot be hooked; pass the eager nn.Module.")
        size = tuple(input_size or session.spec.input_size or (224, 224))
        table = list(session.layers(size))
        failure = session.probe_failure(size)
        if failure is not None:
            after = f"after {table[-1].name!r}" if table else "before its first layer"
            raise ValueError(f"input_size: the model's forward fails at {size} {after} ({failure}); give an "
                             "input_size it takes.")
        return table
