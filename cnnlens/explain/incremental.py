"""Incremental inference for occlusion (Krypton: Nakandala, Kumar & Papakonstantinou, SIGMOD 2019).

An occluded image differs from the clean one only under the mask, so most of every occluded forward
recomputes activations the mask never touched. Here the clean image runs once and keeps every layer's output;
then, for a batch of P mask positions at once, each layer recomputes only the rectangle of its output that
the mask can change (its *projective field*), reading the unchanged values around it from the clean
activations:

- a convolution or pooling layer (``nn.Conv2d``, ``nn.MaxPool2d``, ``nn.AvgPool2d`` and their functional
  forms) gathers, per position, the input rectangle its output rectangle reads (the clean input with the
  layer's padding value around the map, the changed rectangle pasted in) and runs once on the P stacked
  contexts without padding;
- an element-wise layer (BatchNorm in eval mode, activations, dropout in eval mode, arithmetic with a
  constant) maps the rectangle as it is; where two branches meet (``+``, ``*``, ``torch.cat`` over
  channels) both are read over the union of their rectangles;
- anything else (global pooling, flatten, linear, squeeze-and-excitation, attention…) switches to full
  computation for the rest of the network: the P full activations are assembled once (clean map with the
  rectangle pasted in) and the remaining graph runs as usual on them;
- so does a layer whose rectangle has grown to its whole map (deep layers, whose projective fields cover the
  image): the rectangles are the full activations, and gathering contexts around them would only copy them.

The graph is the model's ``torch.fx`` trace (of the shadow, so the user's model is never traced or run).
Rectangles are clipped to each map and given one size per layer for the whole batch (the largest of the
positions'), shifted inside the map where needed: a larger rectangle only recomputes values that equal the
clean ones, so the result stays exact. A model that cannot be traced, or whose incremental output does not
match the plain forward on the first positions (data-dependent control flow that the trace froze), is run in
full instead, automatically.

``tau`` < 1 is Krypton's projective-field thresholding: each layer's rectangle is capped at ``tau`` × the
map's side (centred on the positions' field), so values just outside it are taken from the clean image: an
approximation whose quality the caller measures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .incremental_graph import OUT_OF_PLACE, cut_nodes, is_binary, is_pointwise, window_geometry

_ROW_PRODUCTS = {F.linear, F.conv2d}  # functions whose kernel depends on the rows (see _in_parts)
_OPERATION = 2e4  # what a handful of small tensor operations costs, in written elements
_MAC_PER_ELEMENT = 16.0  # multiply-adds costing about as much as writing one element (2 CPU cores, float32)



@dataclass
class Region:
    """A layer's output for P positions: the clean map except inside one rectangle per position.

    ``data`` holds the rectangles (P×C×h×w); ``y``/``x`` their top-left corners in the map (P each);
    ``clean`` the clean output (1×C×H×W).
    """

    data: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor
    clean: torch.Tensor

    @property
    def size(self) -> tuple[int, int]:
        return self.data.shape[-2], self.data.shape[-1]


@dataclass
class Full:
    """A layer's output computed in full for the P positions: after a layer with global context, or once the
    rectangles cover the whole map (what a mask changes has spread over all of it: reading contexts around
    whole maps would only copy them)."""

    data: Any


def _span(lo: torch.Tensor, hi: torch.Tensor, length: int, cap: int | None) -> tuple[torch.Tensor, int]:
    """One rectangle side for every position: the smallest common length covering [lo, hi] (clipped to the
    map), shifted inside the map; with ``cap``, at most that long, centred on the positions' spans."""
    lo, hi = lo.clamp(0, length - 1), hi.clamp(0, length - 1)
    size = int((hi - lo + 1).clamp(min=1).max())
    if cap is not None and size > cap:
        centre = (lo + hi) // 2
        lo, size = centre - cap // 2, cap
    start = lo.clamp(min=0).clamp(max=length - size)
    return start, size


class Incremental:
    """Runs a traced network on P occluded copies of one image, recomputing only what the mask changes.

    ``clean(x)`` runs the clean image once; ``run(y, x, crops, unit)`` then gives the network's output (and
    the per-position total of ``unit`` in the watched layer) for a batch of mask positions.
    """

    def __init__(self, net: nn.Module, graph: fx.Graph, watch: fx.Node | None, tau: float | None = None,
                 rows: int | None = None):
        self.net, self.graph, self.watch, self.tau = net, graph, watch, tau
        self.rows = rows  # positions per call of a full linear layer or convolution (see _in_parts)
        self.nodes = list(graph.nodes)
        self.modules = dict(net.named_modules())
        self.clean_values: dict[fx.Node, Any] = {}
        self._padded: dict[tuple, torch.Tensor] = {}
        self.work = [0.0, 0.0]  # the last batch's work: incremental, and the same batch in full (see _count)
        self.cuts = cut_nodes(self.nodes, self.modules)
        self.slopes: dict[fx.Node, torch.Tensor] = {}  # cut -> the objective's gradient at the clean image
        self.linear: dict[fx.Node, torch.Tensor] = {}  # the last batch: cut -> first-order change per position
        self.work_at: dict[fx.Node, float] = {}  # the last batch: cut (with a slope) -> work done up to it
        self._sized: set[fx.Node] = set()
        self._run_tau = tau  # the cap of the run in progress

    # --- the clean run -------------------------------------------------------------------------------

    def clean(self, x: torch.Tensor) -> None:
        """Run the clean image ``x`` (1×C×H×W) and keep every node's output (copied: later in-place
        operations must not change what later reads take as clean). The maps kept are those of the image
        run in a batch of the plain forward's size (``rows``, else two): a convolution's oneDNN kernel, and
        so its order of summation, can change with the batch (on one thread a 1×1 convolution 256→64 on 20×20
        maps sums differently in a batch of 2 than of 64), and the occluded positions, read around their
        rectangles from these maps, must agree with the plain forward of a batch of them."""
        self.clean_values = self._values_of(x)
        self._padded = {}
        self.clean_values.update(self._values_of(x.repeat(self.rows or 2, 1, 1, 1), self.clean_values))

    def _values_of(self, x: torch.Tensor, single: dict[fx.Node, Any] | None = None) -> dict[fx.Node, Any]:
        """Every node's output for the input ``x``, each as it was made (copied: a later in-place operation
        changes the tensor the graph passes on, not the copy). With ``single`` (the values of one of ``x``'s
        images run alone), ``x`` is that image repeated: only the first image's slice of each batch-shaped
        output is kept, and outputs are dropped once no later node reads them (the memory of a plain forward)."""
        last_read = {source: i for i, node in enumerate(self.nodes) for source in node.all_input_nodes}
        env: dict[fx.Node, Any] = {}
        kept: dict[fx.Node, Any] = {}
        for i, node in enumerate(self.nodes):
            if node.op == "output":
                return kept
            value = x if node.op == "placeholder" else self._call(
                node, fx.node.map_arg(node.args, lambda n: env[n]), fx.node.map_arg(node.kwargs, lambda n: env[n]))
            env[node] = value
            copy = isinstance(value, torch.Tensor) and node.op != "get_attr"  # weights are never changed
            if single is None:
                kept[node] = value.clone() if copy else value
            else:
                alone = single.get(node)
                if copy and isinstance(alone, torch.Tensor) and alone.dim() > 0 and \
                        value.shape == (len(x) * alone.shape[0], *alone.shape[1:]):
                    kept[node] = value[:len(alone)].clone()
                for source in node.all_input_nodes:
                    if last_read[source] == i:
                        del env[source]
        raise RuntimeError("the traced graph has no output")

    def _call(self, node: fx.Node, args: Any, kwargs: Any) -> Any:
        if node.op == "get_attr":
            value = self.net
            for part in node.target.split("."):
                value = getattr(value, part)
            return value
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return node.target(*args, **kwargs)

    def slope(self, objective: Callable[[Any], torch.Tensor]) -> None:
        """The gradient of ``objective`` (the network's output → a scalar) with respect to every cut's
        output at the clean image, for :meth:`run`'s first-order estimates: the graph is rerun from the first
        cut with autograd (one forward and backward of the rest of the network for one image). A cut whose
        output a later in-place operation changes, or that the objective does not reach, is dropped."""
        self.slopes = {}
        if not self.cuts:
            return
        first = self.nodes.index(self.cuts[0])
        env: dict[fx.Node, Any] = {}
        held: dict[fx.Node, tuple[torch.Tensor, int]] = {}
        with torch.enable_grad():
            for position, node in enumerate(self.nodes):
                if node.op == "output":
                    out = objective(fx.node.map_arg(node.args[0], lambda n: env[n]))
                    break
                if position < first or node.op in ("placeholder", "get_attr"):
                    env[node] = self.clean_values[node]
                    continue
                if node is self.cuts[0]:
                    value = self.clean_values[node].detach().requires_grad_(True)
                else:
                    value = self._call(node, fx.node.map_arg(node.args, lambda n: env[n]),
                                       fx.node.map_arg(node.kwargs, lambda n: env[n]))
                if node in self.cuts and isinstance(value, torch.Tensor) and value.dim() == 4:
                    value = value.clone()  # not a leaf: in-place operations downstream stay possible
                    held[node] = (value, value._version)
                env[node] = value
            else:
                return
            kept = [n for n, (value, version) in held.items() if value._version == version]
            if not kept or not out.requires_grad:
                return
            grads = torch.autograd.grad(out, [held[n][0] for n in kept], allow_unused=True)
        for node, grad in zip(kept, grads):
            if grad is not None:
                self.slopes[node] = grad.detach()

    # --- the occluded batch --------------------------------------------------------------------------

    def run(self, y: torch.Tensor, x: torch.Tensor, crops: torch.Tensor, unit: int | None,
            stop: fx.Node | None = None, estimate_at: Collection[fx.Node] = (), tau: float | None = None
            ) -> tuple[Any, torch.Tensor | None]:
        """The network's output for P occluded images: the clean image with ``crops`` (P×C×m×m, already in
        the network's input space) at rows ``y`` and columns ``x`` (P each); and the watched layer's total
        of channel ``unit`` per position (float64), when a unit is asked for (and reached before ``stop``).

        At every cut of ``estimate_at`` with a slope (:meth:`slope`) that is still a rectangle there,
        ``self.linear[cut]`` holds the first-order change of the objective per position: the gradient times the
        change of the cut's output. With ``stop`` (a cut), the run ends there and the output is None: the
        first-order estimates cost only the layers up to the cut. ``tau`` caps this run's rectangles instead of
        the engine's own ``tau``."""
        self._run_tau = self.tau if tau is None else tau
        env: dict[fx.Node, Any] = {}
        total = None
        self.work = [0.0, 0.0]
        self.linear, self.work_at = {}, {}
        self._sized = set()  # nodes holding a shape of this batch, or computed from one
        for node in self.nodes:
            if node.op == "placeholder":
                value: Any = Region(crops, y, x, self.clean_values[node])
            elif node.op == "output":
                out = fx.node.map_arg(node.args[0], lambda n: _materialized(env[n], self.work))
                return out, total
            else:
                value = self._step(node, env)
                self._count(node, value, len(y))
            env[node] = value
            if node is self.watch and unit is not None:
                total = _unit_total(value, unit, len(y))
            if node in self.slopes and isinstance(value, Region):
                self.work_at[node] = self.work[0]
                if node in estimate_at:
                    self.linear[node] = _first_order(value, self.slopes[node])
            if node is stop:
                return None, total
        raise RuntimeError("the traced graph has no output")

    def _count(self, node: fx.Node, value: Any, count: int) -> None:
        """Add the node's work to ``self.work`` = [this batch incrementally, the same batch in full]: output
        elements, weighted by multiply-adds per element for convolutions (a multiply-add costs about
        1/_MAC_PER_ELEMENT of writing an element); gathers and pastes are counted where they happen."""
        clean = self.clean_values.get(node)
        if not isinstance(value, (Region, Full)) or not isinstance(clean, torch.Tensor):
            return
        module = self.modules.get(node.target) if node.op == "call_module" else None
        weight = 1.0
        if isinstance(module, nn.Conv2d):
            weight += module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1] \
                / _MAC_PER_ELEMENT
        full = count * clean.numel()
        done = value.data.numel() if isinstance(value, Region) else full
        self.work[0] += weight * done
        self.work[1] += weight * full

    def _step(self, node: fx.Node, env: dict[fx.Node, Any]) -> Any:
        inputs = [n for n in node.all_input_nodes if isinstance(env[n], (Region, Full))]
        shape = _shape_query(node, env)
        if shape is not None:
            self._sized.add(node)
            return shape
        if not inputs:
            if node in self.clean_values and not any(n in self._sized for n in node.all_input_nodes):
                return self.clean_values[node]
            if node.all_input_nodes:  # computed from a shape of this batch (its size P, not the clean run's 1)
                self._sized.add(node)
            return self._call(node, fx.node.map_arg(node.args, lambda n: env[n]),
                              fx.node.map_arg(node.kwargs, lambda n: env[n]))
        module = self.modules.get(node.target) if node.op == "call_module" else None
        if all(isinstance(env[n], Region) for n in inputs):
            done = self._local(node, module, env, inputs)
            if done is not None:  # a rectangle the size of the map is the map: the layers after it run in full
                return Full(done.data) if done.size == tuple(done.clean.shape[-2:]) else done
        args = fx.node.map_arg(node.args, lambda n: _materialized(env[n], self.work))
        kwargs = fx.node.map_arg(node.kwargs, lambda n: _materialized(env[n], self.work))
        return Full(self._in_parts(node, module, args, kwargs))

    def _in_parts(self, node: fx.Node, module: nn.Module | None, args: Any, kwargs: Any) -> Any:
        """The node on its full input, a linear layer or convolution in parts of exactly ``self.rows``
        positions (the last padded, see :func:`padded_parts`): the plain forwards it must agree with run in
        parts of that size, and a matrix product's kernel (so its order of summation) depends on the number of
        rows (one or two rows sum differently from four)."""
        first = args[0] if args else None
        if self.rows is None or not isinstance(first, torch.Tensor) or len(first) == self.rows or not (
                isinstance(module, (nn.Linear, nn.Conv2d)) or (node.op == "call_function"
                                                               and node.target in _ROW_PRODUCTS)):
            return self._call(node, args, kwargs)
        return torch.cat([self._call(node, (part, *args[1:]), kwargs)[:count]
                          for part, count in padded_parts(first, self.rows)])

    def _local(self, node: fx.Node, module: nn.Module | None, env: dict, inputs: list[fx.Node]) -> Region | None:
        """The node computed on rectangles, or None when it needs the full maps."""
        geometry = window_geometry(node, module) if len(inputs) == 1 and len(node.args) == 1 and not node.kwargs \
            else None
        if geometry is not None:
            return self._window(node, env[inputs[0]], *geometry)
        if len(inputs) == 1 and is_pointwise(node, module) and node.args and node.args[0] is inputs[0]:
            region: Region = env[inputs[0]]
            data = region.data.clone() if len(inputs[0].users) > 1 else region.data
            args = (data, *fx.node.map_arg(node.args[1:], lambda n: env[n]))
            kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
            return Region(self._call(node, args, kwargs), region.y, region.x, self.clean_values[node])
        if is_binary(node) and len(node.args) == 2 and not node.kwargs:
            return self._binary(node, env)
        if node.op == "call_function" and node.target is torch.cat:
            return self._cat(node, env)
        return None

    def _window(self, node: fx.Node, region: Region, kind: str, g: dict) -> Region:
        clean_out = self.clean_values[node]
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = g["kernel"], g["stride"], g["padding"], g["dilation"]
        h, w = region.size
        sides = []
        for lo, size, k, s, p, d, length in ((region.y, h, kh, sh, ph, dh, clean_out.shape[-2]),
                                              (region.x, w, kw, sw, pw, dw, clean_out.shape[-1])):
            first = torch.div(lo + p - (k - 1) * d + s - 1, s, rounding_mode="floor")
            last = torch.div(lo + size - 1 + p, s, rounding_mode="floor")
            sides.append(_span(first, last, length, self._cap(length)))
        (oy, oh), (ox, ow) = sides
        if kind == "conv" and (kh, kw) == (1, 1) and (ph, pw) == (0, 0) and g["module"].groups == 1:
            context = _read(region, oy * sh, ox * sw, (oh - 1) * sh + 1, (ow - 1) * sw + 1, 0.0, self._padded,
                            self.work)[:, :, ::sh, ::sw]
            approximate = self._run_tau is not None and self._run_tau < 1  # no plain forward to agree with
            per_call = None if approximate else self.rows or len(context)
            return Region(_pointwise_conv(context, g["module"], tuple(clean_out.shape[-2:]), per_call,
                                          tuple(region.clean.shape[-2:])), oy, ox, clean_out)
        context = _read(region, oy * sh - ph, ox * sw - pw, (oh - 1) * sh + (kh - 1) * dh + 1,
                        (ow - 1) * sw + (kw - 1) * dw + 1, -math.inf if kind == "max" else 0.0, self._padded,
                        self.work)
        if kind == "conv":
            m = g["module"]
            out = F.conv2d(context, m.weight, m.bias, m.stride, 0, m.dilation, m.groups)
        elif kind == "max":
            out = F.max_pool2d(context, g["kernel"], g["stride"], 0, g["dilation"])
        else:
            out = F.avg_pool2d(context, g["kernel"], g["stride"], 0)
        return Region(out, oy, ox, clean_out)

    def _binary(self, node: fx.Node, env: dict) -> Region | None:
        a, b = (env[v] if isinstance(v, fx.Node) else v for v in node.args)
        regions = [v for v in (a, b) if isinstance(v, Region)]
        for other in (a, b):
            if isinstance(other, torch.Tensor) and other.dim() >= 2 and tuple(other.shape[-2:]) != (1, 1):
                return None  # a constant that varies over the map would have to be cropped too
        y, x, h, w = self._union(regions)
        args = [_read(v, y, x, h, w, None, self._padded, self.work) if isinstance(v, Region) else v
                for v in (a, b)]
        if node.op == "call_method":
            value = getattr(args[0], node.target.rstrip("_"))(args[1])
        else:
            value = OUT_OF_PLACE.get(node.target, node.target)(*args)
        return Region(value, y, x, self.clean_values[node])

    def _cat(self, node: fx.Node, env: dict) -> Region | None:
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if not isinstance(tensors, (list, tuple)) or dim not in (1, -3) or set(node.kwargs) - {"dim"}:
            return None
        values = [env[t] if isinstance(t, fx.Node) else t for t in tensors]
        if not all(isinstance(v, Region) for v in values):
            return None
        y, x, h, w = self._union(values)
        parts = [_read(v, y, x, h, w, None, self._padded, self.work) for v in values]
        return Region(torch.cat(parts, 1), y, x, self.clean_values[node])

    def _union(self, regions: list[Region]) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        height, width = regions[0].clean.shape[-2:]
        ys = _span(torch.stack([r.y for r in regions]).min(0).values,
                   torch.stack([r.y + r.size[0] - 1 for r in regions]).max(0).values, height, self._cap(height))
        xs = _span(torch.stack([r.x for r in regions]).min(0).values,
                   torch.stack([r.x + r.size[1] - 1 for r in regions]).max(0).values, width, self._cap(width))
        return ys[0], xs[0], ys[1], xs[1]

    def _cap(self, length: int) -> int | None:
        tau = self._run_tau
        return None if tau is None or tau >= 1 else max(1, math.ceil(tau * length))


def _rectangles(source: torch.Tensor, y: torch.Tensor, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """P×C×(h·w): the h×w rectangles of ``source`` (C×H×W) with top-left corners at rows ``y``, columns ``x``
    (P each), in one gather."""
    count, channels = len(y), source.shape[0]
    rows = y[:, None] + torch.arange(h, device=y.device)  # P×h
    cols = x[:, None] + torch.arange(w, device=x.device)
    index = (rows[:, :, None] * source.shape[-1] + cols[:, None, :]).view(count, 1, h * w)
    return torch.gather(source.reshape(1, channels, -1).expand(count, -1, -1), 2, index.expand(-1, channels, -1))


def _first_order(region: Region, grad: torch.Tensor) -> torch.Tensor:
    """Per position (float64), the gradient (1×C×H×W) times the change of the map over the region's rectangle
    (outside it the map is the clean one)."""
    h, w = region.size
    change = region.data.reshape(len(region.y), region.clean.shape[1], -1) \
        - _rectangles(region.clean[0], region.y, region.x, h, w)
    return torch.einsum("pcn,pcn->p", change, _rectangles(grad[0], region.y, region.x, h, w)).double()


def _shape_query(node: fx.Node, env: dict) -> Any:
    """``x.size(...)``, ``x.dim()`` or ``x.shape`` of a Region, answered from its clean map (batch P), so a
    shape query does not force full maps; None for any other node."""
    if not node.args or not isinstance(node.args[0], fx.Node) or not isinstance(env[node.args[0]], Region):
        return None
    region: Region = env[node.args[0]]
    shape = torch.Size((len(region.y), *region.clean.shape[1:]))
    if node.op == "call_method" and node.target == "size" and not node.kwargs:
        return shape if len(node.args) == 1 else shape[node.args[1]]
    if node.op == "call_method" and node.target == "dim":
        return len(shape)
    if node.op == "call_function" and node.target is getattr and node.args[1:] == ("shape",):
        return shape
    return None


def _read(value: Region, y: torch.Tensor, x: torch.Tensor, h: int, w: int, pad: float | None,
          cache: dict, work: list[float] | None = None) -> torch.Tensor:
    """P×C×h×w: the rectangles at rows ``y``, columns ``x`` of ``value``'s map (clean values with its own
    rectangles pasted in; ``pad`` around the map, where a window reaches beyond it)."""
    if value.size == (h, w) and torch.equal(value.y, y) and torch.equal(value.x, x):
        return value.data
    clean = value.clean[0]
    height, width = clean.shape[-2:]
    top, left = max(0, -int(y.min())), max(0, -int(x.min()))
    bottom, right = max(0, int(y.max()) + h - height), max(0, int(x.max()) + w - width)
    key = (id(value.clean), top, bottom, left, right, pad)
    source = cache.get(key)
    if source is None:  # the clean map with the padding value around it
        source = F.pad(clean, (left, right, top, bottom), value=pad or 0.0) if (top or bottom or left or right) \
            else clean
        cache[key] = source
    count, channels = len(y), clean.shape[0]
    if work is not None:  # a gather and a paste, and the dozen small operations around them
        work[0] += 2.0 * count * channels * h * w + _OPERATION
    out = _rectangles(source, y + top, x + left, h, w)  # P×C×(h·w), contiguous: the plain forward's layout
    # paste the value's own rectangles: their positions inside the requested ones, where they fall inside
    rh, rw = value.size
    in_rows = (value.y - y)[:, None] + torch.arange(rh, device=y.device)  # P×rh
    in_cols = (value.x - x)[:, None] + torch.arange(rw, device=x.device)
    inside = ((in_rows >= 0) & (in_rows < h))[:, :, None] & ((in_cols >= 0) & (in_cols < w))[:, None, :]
    targets = (in_rows.clamp(0, h - 1)[:, :, None] * w + in_cols.clamp(0, w - 1)[:, None, :]).view(count, 1, -1)
    if bool(inside.all()):
        out.scatter_(2, targets.expand(-1, channels, -1), value.data.reshape(count, channels, -1))
    else:  # only the parts inside: flat indices into the output, one per (part, channel)
        p, j = inside.view(count, -1).nonzero(as_tuple=True)
        where = (p * channels * h * w + targets.view(count, -1)[p, j])[:, None] \
            + torch.arange(channels, device=y.device) * (h * w)
        values = value.data.reshape(count, channels, -1).transpose(1, 2)[p, j]  # parts × C
        out.view(-1).index_put_((where.flatten(),), values.flatten())
    # the plain forward's layout, so each convolution sums in the same order as there (a channels-last
    # convolution sums differently, off by float32 rounding)
    return out.view(count, channels, h, w)


def padded_parts(rows: torch.Tensor, size: int) -> Any:
    """(part, count) for ``rows`` in parts of exactly ``size`` rows: the last part, when short, is padded with
    copies of its last row (``count`` says how many of the part's results are real). A convolution's oneDNN
    kernel, and so its order of summation, can change with the batch size, so every plain forward and every
    engine call that must agree with one runs on batches of one size, the clean run included."""
    for part in rows.split(size):
        count = len(part)
        if count < size:
            part = torch.cat([part, part[-1:].expand(size - count, *part.shape[1:])])
        yield part, count


def _pointwise_conv(x: torch.Tensor, conv: nn.Conv2d, shape: tuple[int, int], per_call: int | None,
                    source: tuple[int, int]) -> torch.Tensor:
    """A 1×1 convolution of ``x`` (P×C×h×w, its input at the pixels its stride reads) computed on pixels
    packed into batches of ``per_call`` maps of the layer's own output ``shape`` (zeros after the last pixel):
    oneDNN picks its kernel, and so its order of summation, by the call's shape (a 1×1 convolution 256→64 on
    14×14 maps sums differently in batches of fewer than 16 on one thread; a strided one on its ``source``
    maps differently from an unstrided one on the output's), so the pixels go where the plain forward's call
    reads them, in inputs of its very shape (parts of ``per_call`` positions, ``source`` maps, its stride), and
    come out bitwise as there. ``per_call`` None (an approximate run): as few output-sized maps as hold the
    pixels (at least two), one unstrided call."""
    count, channels, h, w = x.shape
    if (h, w) == shape and conv.stride == (1, 1):  # whole maps already
        return F.conv2d(x, conv.weight, conv.bias)
    pixels = count * h * w
    per_map = shape[0] * shape[1]
    stride = conv.stride
    if per_call is None:
        per_call, stride = max(2, -(-pixels // per_map)), (1, 1)
    calls = -(-pixels // (per_call * per_map))
    packed = x.new_zeros(channels, calls * per_call * per_map)  # channel-major: each channel's pixels in a row
    packed[:, :pixels].view(channels, count, h, w).copy_(x.transpose(0, 1))
    maps = packed.view(channels, calls * per_call, *shape).transpose(0, 1)
    if stride != (1, 1):  # each pixel where the strided convolution reads it, in maps of the input's size
        spread = maps.new_zeros(calls * per_call, channels, *source)
        spread[:, :, ::stride[0], ::stride[1]] = maps
        maps = spread
    out = torch.cat([F.conv2d(part.contiguous(), conv.weight, conv.bias, stride) for part in maps.split(per_call)])
    out = out.transpose(0, 1).reshape(out.shape[1], -1)[:, :pixels]
    return out.reshape(-1, count, h, w).transpose(0, 1).contiguous()


def _materialized(value: Any, work: list[float] | None = None) -> Any:
    """A Region as its P full maps; other values as they are."""
    if isinstance(value, Full):
        return value.data
    if not isinstance(value, Region):
        return value
    height, width = value.clean.shape[-2:]
    zeros = torch.zeros_like(value.y)
    return _read(value, zeros, zeros, height, width, None, {}, work)


def _unit_total(value: Any, unit: int, count: int) -> torch.Tensor:
    """Per position, the sum of channel ``unit`` over the map, in float64 (the clean total, corrected by the
    rectangle where the position changed it)."""
    if isinstance(value, Full):
        return value.data[:, unit].flatten(1).double().sum(1)
    if isinstance(value, Region):
        clean = value.clean[0, unit:unit + 1].double()
        inside = _rectangles(clean, value.y, value.x, *value.size).flatten(1).sum(1)
        return clean.sum() - inside + value.data[:, unit].double().flatten(1).sum(1)
    return value[0, unit].double().sum().expand(count)
