"""The side-effect-free view of a user's model.

A *shadow* is a structural copy of the module tree: new module objects whose
parameter dicts point at the user's very tensors (no weight memory is copied,
and updates by a training loop show up live), set to eval mode, with the
user's hooks left out. cnnlens runs and hooks only the shadow, so the user's
modules, flags and hooks are never touched, and BatchNorm in eval mode only
reads its running statistics.

What the copy covers, so that models written the way people write them stay isolated:

- modules reachable through plain attributes — lists, tuples, dicts, sets,
  nested containers, bound methods, ``functools.partial``, closures and
  lambdas, plain objects holding modules — are replaced by their shadows;
  ``torch.compile``, DataParallel and DDP wrappers at any depth are replaced
  by the shadow of the module they wrap (cnnlens looks in eager mode);
- mutable containers (lists, dicts, sets) are the shadow's own copies,
  refreshed from the user's at every look, so a forward that appends to
  ``self.feats`` grows the shadow's list, never the user's;
- buffers are the shadow's own copies, refreshed when the user's change (a
  version counter check), so a forward that updates a buffer in place, even
  in eval mode, changes only the copy;
- every shadow module is called without the process-wide hooks of
  ``torch.nn.modules.module.register_module_forward_hook`` and friends: they
  belong to the user's own forwards (the registries are never touched, so a
  training thread keeps its global hooks);
- a function attribute that reaches one of the model's modules through a
  global variable cannot be redirected: such a model is refused with an error
  that names the attribute.

Attached to a model that another thread is training: while the parameters'
version counters move between looks, each look runs on a private snapshot of
the weights (a copy taken at its start), so it never sees an optimizer step
halfway and never trips autograd's in-place checks; when nobody trains, no
copy is made. A look that ran on the shared weights while they moved is
detected at its end (:func:`weights_moved`) and redone on a snapshot.

Modules that cannot be copied this way (TorchScript) are run through a
*guarded* path instead: the eval flags are set on the model itself and
restored, exactly, on exit.
"""

from __future__ import annotations

import dis
import functools
import operator
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .model import unwrap

_HOOK_SAFELIST_MODULE = "torch.nn.utils"  # weight_norm / spectral_norm compute weights in pre-hooks
_STRUCTURE = frozenset({"_parameters", "_buffers", "_modules", "training", "_is_full_backward_hook",
                        "_compiled_call_impl"})
TRAINING_WINDOW = 30.0  # seconds after the weights last moved during which looks use a snapshot
_LOCK = threading.RLock()


class ShadowError(TypeError):
    """A model pattern that cannot be isolated (the message names the module attribute and the pattern)."""


def _fresh_hooks(value: dict) -> dict:
    """An empty hook dict of the same type, keeping only torch's own weight-reparametrization hooks."""
    kept = type(value)()
    for key, hook in value.items():
        if type(hook).__module__.startswith(_HOOK_SAFELIST_MODULE):
            kept[key] = hook
    return kept


def _shadow_call(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """``module(*args)`` with the module's own forward hooks but not the process-wide ones.

    Installed as each shadow module's ``_compiled_call_impl``, which ``nn.Module.__call__`` prefers to
    its ordinary implementation. Shadow modules carry no backward hooks.
    """
    forward = module._slow_forward if torch._C._is_tracing() else module.forward
    pre, post = module._forward_pre_hooks, module._forward_hooks
    if not (pre or post):
        return forward(*args, **kwargs)
    for key, hook in list(pre.items()):
        if key in module._forward_pre_hooks_with_kwargs:
            changed = hook(module, args, kwargs)
            if changed is not None:
                args, kwargs = changed
        else:
            changed = hook(module, args)
            if changed is not None:
                args = changed if isinstance(changed, tuple) else (changed,)
    result = forward(*args, **kwargs)
    for key, hook in list(post.items()):
        if key in module._forward_hooks_with_kwargs:
            changed = hook(module, args, kwargs, result)
        else:
            changed = hook(module, args, result)
        if changed is not None:
            result = changed
    return result


def _inner(module: nn.Module) -> nn.Module:
    """The module a compile/DataParallel/DDP wrapper runs (the module itself otherwise)."""
    while True:
        if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module) and "_orig_mod" in module._modules:
            module = module._orig_mod
        else:
            return module


_MUTABLE = (list, dict, set)
_LEAVES = (str, bytes, int, float, complex, bool, type(None), torch.Tensor, torch.dtype, torch.device, type,
           types.ModuleType, types.BuiltinFunctionType)


class _Stale(Exception):
    """A module appeared in an attribute after the shadow was built: build a new one."""


class _Builder:
    """Builds one shadow tree; ``tensor(t, is_param)`` says which tensor a shadow module holds."""

    def __init__(self, tensor: Callable[[torch.Tensor, bool], torch.Tensor]):
        self.tensor = tensor
        self.memo: dict[int, nn.Module] = {}  # id(user module) -> its shadow
        self.mirrors: list[_Mirror] = []
        self.frozen = False  # after the first build, a new module in an attribute means a rebuild

    def build(self, model: nn.Module) -> nn.Module:
        root = self.module(model)
        done = 0
        while done < len(self.mirrors):  # attributes may reach modules outside the registered tree
            self.mirrors[done].sync(self, first=True)
            done += 1
        self.frozen = True
        _NAMES[root] = _names(root)
        return root

    def module(self, module: nn.Module) -> nn.Module:
        module = _inner(module)
        _check_forward_globals(type(module))
        clone = self.memo.get(id(module))
        if clone is not None:  # a module used in two places stays one module in the shadow
            return clone
        if self.frozen:
            raise _Stale
        if isinstance(module, torch.jit.ScriptModule):
            raise ShadowError(f"{type(module).__name__} is a TorchScript module and cannot be shadowed.")
        clone = module.__class__.__new__(module.__class__)
        self.memo[id(module)] = clone
        state = {key: _fresh_hooks(value) for key, value in module.__dict__.items()
                 if "hooks" in key and isinstance(value, dict)}
        state["_parameters"] = type(module._parameters)(
            (k, None if p is None else self.tensor(p, True)) for k, p in module._parameters.items())
        state["_buffers"] = type(module._buffers)(
            (k, None if b is None else self.tensor(b, False)) for k, b in module._buffers.items())
        state["training"] = False
        state["_is_full_backward_hook"] = None
        state["_compiled_call_impl"] = functools.partial(_shadow_call, clone)
        clone.__dict__ = state
        state["_modules"] = type(module._modules)(
            (name, None if child is None else self.module(child)) for name, child in module._modules.items())
        self.mirrors.append(_Mirror(module, clone))
        return clone

    # --- plain attributes ---------------------------------------------------------------------------

    def translate(self, value: Any, where: str, seen: dict[int, Any] | None = None, own: bool = True) -> Any:
        """``value`` with every module replaced by its shadow; mutable containers copied when ``own``.

        Inside plain objects (``own`` False) containers are copied only when they hold modules, so an
        attribute such as a logger is shared unless it reaches the model.
        """
        if isinstance(value, _LEAVES):
            return value
        seen = {} if seen is None else seen
        if id(value) in seen:
            return seen[id(value)]
        if isinstance(value, nn.Module):
            return self.module(value)
        seen[id(value)] = value  # a cycle back to this value keeps the original
        translated = self._translate(value, where, seen, own)
        seen[id(value)] = translated
        return translated

    def _translate(self, value: Any, where: str, seen: dict[int, Any], own: bool) -> Any:
        if isinstance(value, (list, tuple, set, frozenset, dict)):
            return self._container(value, where, seen, own)
        if isinstance(value, types.MethodType):
            owner = self.translate(value.__self__, where, seen, own)
            return value if owner is value.__self__ else types.MethodType(value.__func__, owner)
        if isinstance(value, functools.partial):
            parts = [self.translate(v, where, seen, own) for v in (value.func, value.args, value.keywords)]
            if all(a is b for a, b in zip(parts, (value.func, value.args, value.keywords))):
                return value
            return functools.partial(parts[0], *parts[1], **parts[2])
        if isinstance(value, types.FunctionType):
            return self._function(value, where, seen)
        state = getattr(value, "__dict__", None)
        if not isinstance(state, dict) or isinstance(value, type):
            return value
        new_state = {k: self.translate(v, f"{where}.{k}", seen, own=False) for k, v in state.items()}
        if all(new_state[k] is v for k, v in state.items()):
            return value
        try:
            clone = object.__new__(type(value))
            clone.__dict__.update(new_state)
        except TypeError as error:
            raise ShadowError(f"cnnlens cannot isolate {where}: a {type(value).__name__} object holds the model's "
                              f"modules and cannot be copied ({error}).") from None
        return clone

    def _container(self, value: Any, where: str, seen: dict[int, Any], own: bool) -> Any:
        copy = own and isinstance(value, _MUTABLE)
        if isinstance(value, dict):
            items = [(k, self.translate(v, where, seen, own)) for k, v in value.items()]
            if not copy and all(a is b for (_, a), b in zip(items, value.values())):
                return value
            clone = value.copy()  # keeps OrderedDict / defaultdict behaviour
            clone.update(items)
            return clone
        items = [self.translate(v, where, seen, own) for v in value]
        if not copy and all(a is b for a, b in zip(items, value)):
            return value
        if isinstance(value, tuple) and hasattr(value, "_fields"):
            return type(value)(*items)
        return type(value)(items)

    def _function(self, fn: types.FunctionType, where: str, seen: dict[int, Any]) -> Any:
        for name in _global_names(fn.__code__):
            found = fn.__globals__.get(name)
            if isinstance(found, nn.Module) and id(_inner(found)) in self.memo:
                raise ShadowError(f"cnnlens cannot isolate {where}: the function {fn.__qualname__!r} reaches the "
                                  f"model's module through the global variable {name!r}, so looking would run "
                                  "the user's module itself. Store the module as an attribute (self.name = module) "
                                  "or pass it in as an argument.")
        if not fn.__closure__:
            return fn
        contents = []
        for cell in fn.__closure__:
            try:
                contents.append(cell.cell_contents)
            except ValueError:  # an empty cell
                contents.append(_EMPTY)
        translated = [c if c is _EMPTY else self.translate(c, where, seen, own=False) for c in contents]
        if all(a is b for a, b in zip(translated, contents)):
            return fn
        cells = tuple(types.CellType() if t is _EMPTY else types.CellType(t) for t in translated)
        clone = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, cells)
        clone.__kwdefaults__, clone.__dict__ = fn.__kwdefaults__, dict(fn.__dict__)
        return clone


_EMPTY = object()


def _class_modules(cls: type) -> list[tuple[str, nn.Module]]:
    """Modules stored as class attributes (``class Net: shared = nn.Linear(...)``), which every instance reads."""
    found: dict[str, nn.Module] = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__.startswith("torch."):
            continue
        for key, value in vars(klass).items():
            if isinstance(value, nn.Module):
                found[key] = value
    return list(found.items())


def _check_forward_globals(cls: type) -> None:
    """Refuse a module class whose ``forward`` calls a module held in a global variable: the shadow cannot
    redirect that call, so looking would run (and could change) the user's module."""
    if cls in _CHECKED_CLASSES:
        return
    forward = getattr(cls, "forward", None)
    if not isinstance(forward, types.FunctionType) or cls.__module__.startswith("torch."):
        _CHECKED_CLASSES.add(cls)
        return
    for name in _global_names(forward.__code__):
        if isinstance(forward.__globals__.get(name), nn.Module):
            raise ShadowError(f"cnnlens cannot isolate {cls.__name__}.forward: it calls the module in the global "
                              f"variable {name!r}, so looking would run the user's module itself. Store the "
                              "module as an attribute (self.name = module) or pass it in as an argument.")
    _CHECKED_CLASSES.add(cls)


_CHECKED_CLASSES: weakref.WeakSet[type] = weakref.WeakSet()


def _global_names(code: types.CodeType) -> set[str]:
    """The global names ``code`` (and the functions defined in it) reads: the names of its LOAD_GLOBAL (and
    LOAD_NAME) instructions, not ``co_names``, which also lists every attribute name (``self.stem`` would make
    a global ``stem`` look called)."""
    names = {instruction.argval for instruction in dis.get_instructions(code)
             if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


_NAMES: weakref.WeakKeyDictionary[nn.Module, dict[str, nn.Module]] = weakref.WeakKeyDictionary()


def _names(root: nn.Module) -> dict[str, nn.Module]:
    """Every module of a shadow by name: registered ones as ``named_modules`` names them, modules reached
    only through attributes by their attribute path (``stages.0``, ``table.path.1``)."""
    names = dict(root.named_modules(remove_duplicate=True))
    known = {id(m) for m in names.values()}
    queue = list(names.items())
    while queue:
        owner_name, owner = queue.pop(0)
        for key, value in owner.__dict__.items():
            if not _plain(key):
                continue
            for path, module in _modules_in(value, key, depth=4):
                if id(module) in known:
                    continue
                name = f"{owner_name}.{path}" if owner_name else path
                for sub_name, sub in module.named_modules(prefix=name):
                    if id(sub) not in known:
                        known.add(id(sub))
                        names[sub_name] = sub
                        queue.append((sub_name, sub))
    return names


def _modules_in(value: Any, path: str, depth: int) -> Iterator[tuple[str, nn.Module]]:
    if isinstance(value, nn.Module):
        yield path, value
    elif depth <= 0 or isinstance(value, _LEAVES):
        return
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _modules_in(v, f"{path}.{k}", depth - 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for i, v in enumerate(value):
            yield from _modules_in(v, f"{path}.{i}", depth - 1)
    elif isinstance(value, types.MethodType):
        yield from _modules_in(value.__self__, path, depth - 1)
    elif isinstance(value, functools.partial):
        yield from _modules_in(value.func, path, depth - 1)
    elif isinstance(value, types.FunctionType):
        for i, cell in enumerate(value.__closure__ or ()):
            try:
                yield from _modules_in(cell.cell_contents, f"{path}.{i}", depth - 1)
            except ValueError:
                continue
    elif isinstance(getattr(value, "__dict__", None), dict) and not isinstance(value, type):
        for k, v in value.__dict__.items():
            yield from _modules_in(v, f"{path}.{k}", depth - 1)


def named_modules(net: nn.Module) -> dict[str, nn.Module]:
    """A net's modules by name, including those a shadow reaches only through plain attributes."""
    names = _NAMES.get(net)
    return names if names is not None else dict(net.named_modules())


def _plain(key: str) -> bool:
    return key not in _STRUCTURE and "hooks" not in key


class _Mirror:
    """Keeps one shadow module's plain attributes (a temperature, a dropout ``p``, a flag) equal to the user's.

    The structure, parameters, training flags and hooks are the shadow's own; every other attribute follows
    the user's module. Attributes that hold no module and no mutable container are compared at C speed
    (``itemgetter`` + identity), a microsecond or so per module; the others are translated anew at every look.
    Buffers are the shadow's copies, refreshed when the user's tensor or its version counter changes.
    """

    __slots__ = ("original", "clone", "keys", "values", "size", "derived", "buffers")

    def __init__(self, original: nn.Module, clone: nn.Module):
        self.original = weakref.ref(original)  # the cache must not keep the user's model alive
        self.clone = clone
        self.keys: tuple[str, ...] = ()
        self.values = None
        self.size = -1
        self.derived: tuple[str, ...] = ()
        self.buffers = {name: _stamp(original._buffers[name], t) for name, t in clone._buffers.items()
                        if t is not None}

    def _index(self, builder: _Builder, state: dict, mirror: dict) -> None:
        plain, derived = [], []
        for key, value in state.items():
            if not _plain(key):
                continue
            where = f"{type(self.clone).__name__}.{key}"
            translated = builder.translate(value, where)
            mirror[key] = translated
            (plain if translated is value else derived).append(key)
        for key in [k for k in mirror if _plain(k) and k not in state]:
            del mirror[key]
        for key, value in _class_modules(type(self.clone)):  # modules held by the class, not the instance
            if key not in state and key not in self.clone._modules:
                mirror[key] = builder.translate(value, f"{type(self.clone).__name__}.{key}")
        self.keys = tuple(plain) if len(plain) != 1 else tuple(plain) * 2  # itemgetter of one key: a bare value
        self.values = operator.itemgetter(*self.keys) if plain else None
        self.derived = tuple(derived)
        self.size = len(state)

    def sync(self, builder: _Builder, first: bool = False) -> None:
        original = self.original()
        if original is None:
            return
        state, mirror = original.__dict__, self.clone.__dict__
        if first or len(state) != self.size:
            self._index(builder, state, mirror)
        else:
            try:
                if self.values is not None:
                    ours = self.values(state)
                    if any(map(operator.is_not, ours, self.values(mirror))):
                        mirror.update(zip(self.keys, ours))
                for key in self.derived:
                    mirror[key] = builder.translate(state[key], f"{type(self.clone).__name__}.{key}")
            except KeyError:  # an attribute was added or removed: index them all again
                self._index(builder, state, mirror)
        if self.buffers:
            self._refresh_buffers(original)

    def _refresh_buffers(self, original: nn.Module) -> None:
        ours = self.clone._buffers
        for name, stamp in self.buffers.items():
            theirs, copy = original._buffers.get(name), ours.get(name)
            if theirs is None or copy is None:
                continue
            if stamp != (id(theirs), theirs._version, copy._version):
                fresh = theirs.detach().clone()
                ours[name] = fresh
                self.buffers[name] = _stamp(theirs, fresh)


def _stamp(theirs: torch.Tensor, ours: torch.Tensor) -> tuple[int, int, int]:
    return id(theirs), theirs._version, ours._version


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


class _Entry:
    """The cached shadow of one user model and what is known about its weights."""

    def __init__(self, key: tuple, builder: _Builder, net: nn.Module, params: list[torch.Tensor]):
        self.key = key
        self.builder = builder
        self.net = net
        self.params = params  # the user's parameters (the shadow shares them anyway)
        self.versions = _versions(params)
        self.moved_at = -float("inf")


def _versions(params: list[torch.Tensor]) -> tuple[int, ...]:
    return tuple(p._version for p in params)


def weight_versions(model: nn.Module) -> tuple[int, ...]:
    """The version counters of ``model``'s parameters: they change when an optimizer steps (in place)."""
    return _versions(list(model.parameters()))


_CACHE: weakref.WeakKeyDictionary[nn.Module, _Entry] = weakref.WeakKeyDictionary()


def copyable(model: nn.Module) -> bool:
    """False for module trees the shadow cannot copy (TorchScript)."""
    return not any(isinstance(m, torch.jit.ScriptModule) for m in model.modules())


def _entry(model: nn.Module) -> _Entry:
    key, scripted = _walk(model)
    if scripted:
        raise TypeError(f"{type(model).__name__} is a TorchScript module and cannot be shadowed; "
                        "use cnnlens.core.shadow.guarded(model).")
    entry = _CACHE.get(model)
    if entry is not None and entry.key == key:
        try:
            for mirror in entry.builder.mirrors:
                mirror.sync(entry.builder)
            return entry
        except _Stale:
            pass
    builder = _Builder(lambda t, is_param: t if is_param else t.detach().clone())
    net = builder.build(model)
    params = [p for m in builder.mirrors if (o := m.original()) is not None for p in o._parameters.values()
              if p is not None]
    entry = _CACHE[model] = _Entry(key, builder, net, params)
    return entry


def module_name(model: nn.Module, module: nn.Module) -> str | None:
    """The layer name of ``module`` (one of the user's modules, or a shadow's) in ``model``'s shadow."""
    model = unwrap(model)
    with _LOCK:
        entry = _entry(model)
    target = entry.builder.memo.get(id(_inner(module)), module)
    return next((name for name, m in named_modules(entry.net).items() if m is target), None)


def shadow(model: nn.Module) -> nn.Module:
    """The eval-mode, hook-free shadow of ``model`` (cached while its structure is unchanged).

    The cache check walks the module tree once (tens of microseconds for a
    ResNet), so a look costs little beyond the model's own passes.
    """
    model = unwrap(model)
    with _LOCK:
        return _entry(model).net


class View:
    """The net one job runs on: the shared shadow, or a private snapshot of the weights while they move."""

    def __init__(self, net: nn.Module, entry: _Entry, snapshot: bool, versions: tuple[int, ...]):
        self.net = net
        self.shared = entry.net  # the cached shadow: layer tables and other caches are kept with it
        self.snapshot = snapshot
        self._entry = entry
        self._versions = versions

    def weights_moved(self) -> bool:
        """Whether the shared weights changed while this job ran on them (never for a snapshot)."""
        if self.snapshot:
            return False
        versions = _versions(self._entry.params)
        if versions == self._versions:
            return False
        with _LOCK:
            self._entry.moved_at = time.monotonic()
        return True


def view(model: nn.Module) -> View:
    """Open the shadow for one job: a snapshot of the weights when they moved recently (someone is training)."""
    model = unwrap(model)
    with _LOCK:
        entry = _entry(model)
        versions = _versions(entry.params)
        now = time.monotonic()
        if versions != entry.versions:
            entry.versions = versions
            entry.moved_at = now
        if now - entry.moved_at > TRAINING_WINDOW:
            return View(entry.net, entry, False, versions)
    return View(_snapshot(model, entry), entry, True, versions)


def _snapshot(model: nn.Module, entry: _Entry, attempts: int = 5) -> nn.Module:
    """A shadow tree over private copies of the weights, taken between two in-place updates when possible.

    The copy is taken again (a few times at most) when a version counter moved while it was being taken.
    """
    tensors = entry.params + [b for m in entry.builder.mirrors if (o := m.original()) is not None
                              for b in o._buffers.values() if b is not None]

    def copy(t: torch.Tensor, is_param: bool) -> torch.Tensor:
        fresh = t.detach().clone()
        return nn.Parameter(fresh, requires_grad=t.requires_grad) if is_param else fresh

    for _ in range(attempts):
        before = _versions(tensors)
        net = _Builder(copy).build(model)
        if _versions(tensors) == before:
            break
    return net


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


def private_copy(model: nn.Module) -> nn.Module:
    """A shadow tree over private copies of every parameter and buffer, for work that must change weights
    (the randomization check): nothing written to it reaches the user's tensors."""
    model = unwrap(model)
    with _LOCK:
        entry = _entry(model)
    return _snapshot(model, entry)
