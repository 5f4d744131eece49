"""The scan's one pass over the data: forward hooks reduce each scanned layer's output while it is intact (a
later in-place op may change it) to per-unit maxima, find positions only for the image–unit pairs that can
still enter a list, and merge them into every layer's lists once per forward; the class scores go to the
class lists. See :mod:`cnnlens.dataset.scan` for what it answers."""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch

from ..core.hooks import tensor_output_hooks
from ..core.objectives import class_probabilities
from ..core.progress import Steps
from ..core.session import select_output
from ..core.shadow import named_modules
from .scan_lists import LAST, Best, ClassState, LayerState, copy_layer_state, histogram, new_layer_state, prune


class Lists:
    """Every scanned layer's top and bottom lists as the rows of one :class:`Best`, merged once per batch.

    Rows are [top rows of every layer (U₁ + U₂ + … rows), then their bottom rows (the same order)]; bottom
    rows hold −value. ``threshold`` holds each row's k-th value (as a value: not negated) as float32 on the
    model's device, and ``last_index`` that entry's image index, so the hooks can tell which image–unit pairs
    may enter (beyond the row's k-th, or tied with it at a lower index: a dead unit's zeros on every later
    image cannot) and find positions only for those. One merge per batch instead of one per layer keeps the
    per-layer cost of the scan to a handful of tensor operations.
    """

    def __init__(self, units: dict[str, int], k: int, device: torch.device):
        self.offsets: dict[str, int] = {}
        rows = 0
        for name, n in units.items():
            self.offsets[name] = rows
            rows += n
        self.units, self.rows = units, rows
        self.best = Best.empty(2 * rows, k)
        self.sign = torch.cat([torch.ones(rows), -torch.ones(rows)]).to(device)
        self.threshold = torch.cat([torch.full((rows,), -math.inf), torch.full((rows,), math.inf)]).to(device)
        self.last_index = torch.full((2 * rows,), LAST + 1, dtype=torch.int64, device=device)  # k-th's index

    def expect(self, index: torch.Tensor) -> None:
        """Before a batch (``index``: its image indices, on the device): every row's bound for every image of
        it, all layers at once. A pair can enter a row if it is beyond the row's k-th value, or equal to it with
        a lower image index (which wins a tie); for an image with a higher index than the k-th entry's, "beyond"
        is "at least the next float", so one comparison per list decides (:meth:`entrants`)."""
        toward = self.sign * math.inf  # beyond: up for top rows, down for bottom rows
        after = torch.nextafter(self.threshold, toward)
        self.pair_bounds = torch.where(index[None, :] < self.last_index[:, None], self.threshold[:, None],
                                       after[:, None])

    def entrants(self, name: str, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B×U masks of the pairs of this batch that can enter ``name``'s top and bottom lists."""
        start, n = self.offsets[name], self.units[name]
        bounds = self.pair_bounds
        return values >= bounds[start:start + n].T, values <= bounds[self.rows + start:self.rows + start + n].T

    def add(self, values: dict[str, torch.Tensor], found: dict[str, tuple[torch.Tensor, ...]],
            masks: dict[str, tuple[torch.Tensor, torch.Tensor]], index: torch.Tensor) -> None:
        """Merge one batch: per layer its B×U maxima, the (top, bottom) masks of the pairs its hook found may
        enter, and (image row, unit, position) of those pairs. The others cannot enter, so only these are
        merged, each into the rows it may enter."""
        tops = torch.cat([values[n].T for n in self.units])  # R×B, on the model's device
        where = torch.full(tops.shape, -1, dtype=torch.int64, device=tops.device)
        images, units, positions = (torch.cat(part) for part in zip(*(
            (found[n][0], found[n][1] + self.offsets[n], found[n][2]) for n in self.units)))
        where[units, images] = positions
        top_rows, top_images = torch.cat([masks[n][0].T for n in self.units]).nonzero(as_tuple=True)
        bottom_rows, bottom_images = torch.cat([masks[n][1].T for n in self.units]).nonzero(as_tuple=True)
        rows, images = torch.cat([top_rows, bottom_rows]), torch.cat([top_images, bottom_images])
        signed = torch.cat([tops[top_rows, top_images], -tops[bottom_rows, bottom_images]])
        offset = torch.cat([torch.zeros_like(top_rows), torch.full_like(bottom_rows, self.rows)])
        self.best.merge_in((rows + offset).cpu(), signed.cpu(), index[images.cpu()], where[rows, images].cpu())
        self.threshold = self.best.values[:, -1].float().to(self.sign.device) * self.sign
        last = self.best.index[:, -1]  # an empty slot (index −1) loses every tie: any index may enter
        self.last_index = torch.where(last < 0, LAST + 1, last).to(self.sign.device)

    def layer(self, name: str) -> tuple[Best, Best]:
        start, n = self.offsets[name], self.units[name]
        best = self.best
        return tuple(Best(best.values[part].clone(), best.index[part].clone(), best.extra[part].clone())
                     for part in (slice(start, start + n), slice(self.rows + start, self.rows + start + n)))


def run_scan(s: Any, chunks: Any, layers: Any, k: int, statistics: bool, steps: Steps
             ) -> tuple[int, dict[str, LayerState], ClassState | None, list[str] | None, tuple[int, int] | None]:
    """The pass over ``chunks`` (:func:`cnnlens.core.data.batches`): (images seen, each layer's lists, the class
    lists, the class names, the input size), what :class:`cnnlens.dataset.scan.Scan` is made of."""
    modules = named_modules(s.net)
    names: list[str] | None = None
    hooked: list[str] = []
    aliases: dict[str, str] = {}  # a layer whose output is another's very tensor (a container's last child)
    states: dict[str, LayerState] = {}
    lists: Lists | None = None
    classes: ClassState | None = None
    class_names = None
    seen = 0
    size = None
    forward: dict[str, Any] = {}  # this forward's maxima and positions, which layers ran, their outputs
    skipped: dict[str, int] = {}  # per layer called several times per forward: the calls before its last

    def record(name: str, module: torch.nn.Module, output: torch.Tensor) -> None:
        """Reduce ``output`` while it is intact (a later in-place op may change it). A module called several
        times per forward (torchvision's ResNet blocks call one ReLU twice) is the output of its last call:
        once the first batch has counted the calls, the earlier ones are skipped."""
        forward["ran"].add(name)
        forward["calls"][name] = call = forward["calls"].get(name, 0) + 1
        if call <= skipped.get(name, 0):
            return
        earlier = forward["outputs"].get(id(output))  # (weak reference, version, layer) of an earlier output
        rectified = source = None  # an in-place ReLU's input: relu(max) is its output's maximum, no pass needed
        if earlier is not None and earlier[0]() is output and earlier[1] == output._version:
            forward["alias"][name] = earlier[2]  # the very tensor, unchanged since: a container's last child
        else:  # (a dead tensor's id may be reused: the weak reference tells them apart)
            if (earlier is not None and earlier[0]() is output and earlier[1] == output._version - 1
                    and type(module) is torch.nn.ReLU and earlier[2] in forward["values"]):
                source = earlier[2]
                rectified = forward["values"][source]
            forward["outputs"][id(output)] = (weakref.ref(output), output._version, name)
        flat = output.detach().flatten(2) if output.dim() > 2 else output.detach()[:, :, None]
        batch, units, size = flat.shape
        # a reused module is its last call, whatever the width and grid of its earlier ones (the first batch sees all)
        if name not in states or (lists is None and call > 1):
            grid = tuple(output.shape[-2:]) if output.dim() == 4 else (1, 1)
            states[name] = new_layer_state(grid, units, k, statistics)
        elif states[name].top.values.shape[0] != units:
            raise ValueError(f"layers: {name!r} changed its number of units between batches.")
        blockwise = size % _BLOCK == 0 and size >= 16 * _BLOCK  # large maps: positions found in blocks
        every = None  # first batch, large maps: every pair's position at once (about 2k of every B pairs enter)
        if lists is None and blockwise and rectified is None:
            values, every = _blockwise_max(flat)
        else:
            values = flat.amax(2) if rectified is None else rectified.clamp(min=0)
        if lists is not None:
            tops, bottoms = lists.entrants(name, values)
        elif batch > 2 * k:  # first batch: a pair enters only if among this batch's k best or worst
            ranked = values.sort(0).values  # one sort: about half the time of two kthvalue calls
            tops, bottoms = values >= ranked[batch - k], values <= ranked[k - 1]
        else:  # every pair may enter
            tops = bottoms = torch.ones_like(values, dtype=torch.bool)
        rows, columns = (tops | bottoms).nonzero(as_tuple=True)  # pairs that may enter
        if every is not None:
            positions = every[rows, columns]
        elif source is not None:
            positions = _rectified_positions(flat, values, rows, columns, forward["found"][source], blockwise)
        else:
            positions = _first_maxima(_pairs(flat, rows, columns), blockwise)
        forward["values"][name], forward["found"][name] = values, (rows, columns, positions)
        forward["masks"][name] = (tops, bottoms)
        if statistics:  # added once the forward is done: only a module's last call counts
            forward["statistics"][name] = (flat.float().mean(2).double().sum(0).cpu(), (values > 0).sum(0).cpu(),
                                           histogram(flat))

    def forwards(chunk: Any) -> Any:
        """The chunk's images in the session's heap-sized parts, with their indices and labels."""
        nonlocal size, names, hooked
        x = s.prepare(chunk.images).x
        if names is None:
            size = tuple(x.shape[-2:])
            names = _chosen_layers(s, layers, size)
            hooked = list(names)
        elif tuple(x.shape[-2:]) != size:  # (batches of one image each keep their own sizes)
            raise ValueError(f"data: images of different sizes {size} and {tuple(x.shape[-2:])} need a common "
                             "input_size (the lists' positions are on one grid); set one with "
                             "cnnlens.configure(model, input_size=...).")
        start = 0
        for part in s.heap_parts(x):
            end = start + len(part)
            yield part, torch.tensor(chunk.indices[start:end], dtype=torch.int64), chunk.labels[start:end]
            start = end

    def one_forward(x: torch.Tensor, index: torch.Tensor, labels: list) -> int:
        """One forward of images ``x`` (data indices ``index``): reduced in the hooks, merged; its image count."""
        nonlocal lists, aliases, hooked, classes, class_names
        for _attempt in range(2):
            forward.update(ran=set(), outputs={}, alias={}, values={}, found={}, masks={}, calls={}, statistics={})
            if lists is not None:
                lists.expect(index.to(x.device))
            with torch.no_grad(), tensor_output_hooks({n: modules[n] for n in hooked}, record):
                logits = _class_scores(s, x)
            missing = [n for n in hooked if n not in forward["ran"]]
            if missing:
                raise ValueError(f"layers: {missing[0]!r} did not run in the forward pass (or its output is not a "
                                 "tensor).")
            unreduced = [n for n in hooked if n not in forward["values"] and n not in forward["alias"]]
            if not unreduced:
                break
            for name in unreduced:  # called fewer times than on the first batch: reduce every call, again
                skipped.pop(name)
        if lists is None:  # the first batch fixes the layout; an alias is a copy of its original from now on
            aliases = dict(forward["alias"])
            hooked = [n for n in hooked if n not in aliases]
            skipped.update((n, calls - 1) for n, calls in forward["calls"].items() if calls > 1 and n in hooked)
            lists = Lists({n: states[n].top.values.shape[0] for n in hooked}, k, x.device)
        lists.add(forward["values"], forward["found"], forward["masks"], index)
        for name, (sums, active, counts) in forward["statistics"].items():
            state = states[name]
            state.sums += sums
            state.active += active
            state.histogram += counts
        if isinstance(logits, torch.Tensor) and logits.dim() == 2:
            classes = _add_classes(classes, logits.detach(), index, labels, k)
            class_names = s.spec.classes
        return len(index)

    for chunk in chunks:
        for x, index, labels in forwards(chunk):
            seen += one_forward(x, index, labels)
        steps.advance(1)
    for name in hooked:
        states[name].top, states[name].bottom = lists.layer(name)
    for alias, original in aliases.items():
        states[alias] = copy_layer_state(states[original])
    states = {name: states[name] for name in names or []}
    if classes is not None:
        classes = prune(classes)
    return seen, states, classes, list(class_names) if class_names else None, size


_BLOCK = 64  # positions of large maps: the maximum of each block of 64 values, then one block's argmax


def _pairs(flat: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """The maps of the (image ``rows``, unit ``columns``) pairs of ``flat`` (B×U×N) as P×N: one row gather
    where the maps are contiguous (3–5× faster than indexing two dimensions), else indexing."""
    if not flat.is_contiguous():
        return flat[rows, columns]
    return flat.view(-1, flat.shape[2]).index_select(0, rows * flat.shape[1] + columns)


def _first_maxima(maps: torch.Tensor, blockwise: bool) -> torch.Tensor:
    """The position of each row's first maximum (P×N)."""
    return _blockwise_max(maps[None])[1][0] if blockwise else maps.argmax(1)


def _rectified_positions(flat: torch.Tensor, values: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor,
                         found: tuple[torch.Tensor, ...], blockwise: bool) -> torch.Tensor:
    """First-maximum positions of an in-place ReLU's pairs, mostly without reading its maps: where the maximum
    is positive, the ReLU leaves it and everything equal to it where it was, so the first maximum is where its
    input's was (``found``: the input layer's (row, column, position) this batch); where it is 0 the map is all
    zeros and the first maximum is position 0. Only positive pairs the input layer did not look at are read."""
    known = torch.full_like(values, -1, dtype=torch.int64)
    known[found[0], found[1]] = found[2]
    positions = torch.where(values[rows, columns] > 0, known[rows, columns], 0)
    missing = (positions < 0).nonzero()[:, 0]
    if len(missing):
        positions[missing] = _first_maxima(_pairs(flat, rows[missing], columns[missing]), blockwise)
    return positions


def _blockwise_max(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's maximum and the position of its first occurrence (B×U×N, N a multiple of _BLOCK), as
    ``flat.max(2)`` but about 4× faster: argmax over long rows is slow on the CPU, a vectorized max over blocks
    and an argmax over one block per row are not."""
    batch, units, size = flat.shape
    blocks = flat.view(batch, units, size // _BLOCK, _BLOCK)
    values, block = blocks.amax(3).max(2)  # the first block holding the maximum holds its first occurrence
    inside = blocks.gather(2, block[..., None, None].expand(-1, -1, 1, _BLOCK)).squeeze(2).argmax(2)
    return values, block * _BLOCK + inside


def _class_scores(s: Any, x: torch.Tensor) -> torch.Tensor | None:
    """The model's B×K class scores, or None when its output is something else (a backbone's features)."""
    out = s.raw_forward(x)
    try:
        out = select_output(out, s.spec.output)
    except (TypeError, ValueError):
        return None
    if isinstance(out, torch.Tensor) and out.dim() > 2 and all(n == 1 for n in out.shape[2:]):
        out = out.flatten(1)
    return out if isinstance(out, torch.Tensor) and out.dim() == 2 else None


def _default_layers(session: Any, size: tuple[int, int]) -> list[str]:
    return [info.name for info in session.layers(size) if info.spatial and info.name]


def _chosen_layers(s: Any, layers: Any, size: tuple[int, int]) -> list[str]:
    if layers is None:
        names = _default_layers(s, size)
        if not names:
            raise ValueError("layers: the model has no spatial layer at this input size; name the layers to scan.")
        return names
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, (list, tuple)) or not layers or not all(isinstance(n, str) for n in layers):
        raise TypeError("layers must be None (every spatial layer), a layer name or a list of layer names.")
    for name in layers:
        s.check_layer_name(name, argument="layers")
    order = {info.name: i for i, info in enumerate(s.layers(size))}
    return sorted(dict.fromkeys(layers), key=lambda n: order.get(n, len(order)))


def _add_classes(state: ClassState | None, logits: torch.Tensor, index: torch.Tensor,
                 labels: list[int | None], k: int) -> ClassState:
    probs = class_probabilities(logits.double()).float().double().T.cpu()  # C×B, float32 numbers (see order_key)
    n_classes = probs.shape[0]
    if state is None:
        state = ClassState(Best.empty(n_classes, k), Best.empty(n_classes, k), Best.empty(n_classes, k))
    predictions = probs.argmax(0)
    where = index.expand(n_classes, -1)
    none = torch.full_like(where, -1)
    state.top = state.top.add(probs, where, none)
    state.bottom = state.bottom.add(-probs, where, none)
    label = torch.tensor([-1 if lab is None else lab for lab in labels], dtype=torch.int64)
    classes = torch.arange(n_classes)[:, None]
    wrong = (label[None] >= 0) & (label[None] != classes) & (predictions[None] == classes)
    state.wrong = state.wrong.add(torch.where(wrong, probs, -math.inf), torch.where(wrong, where, -1), none)
    for i, p, lab in zip(index.tolist(), predictions.tolist(), labels):
        state.predictions[i] = p
        if lab is not None:
            state.labels[i] = lab
    return prune(state)
