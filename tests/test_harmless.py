"""Looking stays harmless on models written the way people write them (issue 6, part 1).

Each pattern below is a small model in train mode with a user hook on every
module; every method runs on it, and afterwards the model must be bitwise the
same (BatchNorm statistics, plain attributes, containers), no user hook may
have fired, and the result must equal the eval-mode result.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import cnnlens as cl
from cnnlens.core.shadow import ShadowError

from .conftest import assert_unchanged, snapshot
from .test_invariants import CALLS

X = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(3))


def block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


class Head(nn.Module):
    def __init__(self, c: int = 8, k: int = 5):
        super().__init__()
        self.fc = nn.Linear(c, k)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(h.mean((2, 3)))


class PlainList(nn.Module):
    """Blocks kept in a plain list (registered too), a forward that appends to a list attribute."""

    def __init__(self):
        super().__init__()
        self.b1, self.b2 = block(3, 8), block(8, 8)
        self.blocks = [self.b1, self.b2]
        self.head = Head()
        self.feats: list = []

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        self.feats.append(x)
        return self.head(x)


class Unregistered(nn.Module):
    """Blocks only reachable through a list (not registered submodules at all)."""

    def __init__(self):
        super().__init__()
        self.stages = [block(3, 8), block(8, 8)]
        self.head = Head()

    def forward(self, x):
        for s in self.stages:
            x = s(x)
        return self.head(x)


class Nested(nn.Module):
    """Modules in a dict of tuples of lists, a bound method and a partial."""

    def __init__(self):
        super().__init__()
        self.a, self.b = block(3, 8), block(8, 8)
        self.table = {"path": ([self.a], (self.b,))}
        self.stem = self.a.forward
        self.then = functools.partial(self.b.__call__)
        self.head = Head()

    def forward(self, x):
        (first,), (second,) = self.table["path"]
        return self.head(self.then(self.stem(x)) + second(first(x)) * 0)


class Lambda(nn.Module):
    """A module called through a lambda (closure over self) and a helper object holding a module."""

    class Helper:
        def __init__(self, module):
            self.module = module

    def __init__(self):
        super().__init__()
        self.conv = block(3, 8)
        self.act = lambda h: self.conv(h)
        self.helper = Lambda.Helper(block(8, 8))
        self.head = Head()

    def forward(self, x):
        return self.head(self.helper.module(self.act(x)))


class Shared(nn.Module):
    """One block used by two parents."""

    def __init__(self):
        super().__init__()
        shared = block(8, 8)
        self.left = nn.Sequential(block(3, 8), shared)
        self.right = nn.Sequential(shared)
        self.head = Head()

    def forward(self, x):
        return self.head(self.right(self.left(x)))


class Compiled(nn.Module):
    """A submodule wrapped by torch.compile and one by DataParallel below the top level."""

    def __init__(self):
        super().__init__()
        self.features = torch.compile(nn.Sequential(block(3, 8), block(8, 8)))
        self.more = nn.DataParallel(block(8, 8))
        self.head = Head()

    def forward(self, x):
        return self.head(self.more(self.features(x)))


class Reparametrized(nn.Module):
    """Weight norm, spectral norm (both styles) and a custom parametrization, in train mode."""

    class Symmetric(nn.Module):
        def forward(self, w):
            return (w + w.flip(-1).flip(-2)) / 2

    def __init__(self):
        super().__init__()
        self.c1 = parametrizations.weight_norm(nn.Conv2d(3, 8, 3, padding=1))
        self.c2 = parametrizations.spectral_norm(nn.Conv2d(8, 8, 3, padding=1))
        self.c3 = nn.utils.spectral_norm(nn.Conv2d(8, 8, 3, padding=1))
        self.c4 = nn.utils.weight_norm(nn.Conv2d(8, 8, 3, padding=1))
        self.c5 = nn.Conv2d(8, 8, 3, padding=1)
        parametrize.register_parametrization(self.c5, "weight", Reparametrized.Symmetric())
        self.bn = nn.BatchNorm2d(8)
        self.head = Head()

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = F.relu(self.c3(F.relu(self.c2(x))))
        return self.head(F.relu(self.bn(self.c5(F.relu(self.c4(x))))))


class BufferInEval(nn.Module):
    """A forward that updates a buffer (and a counter attribute) in place whatever the mode."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(block(3, 8), block(8, 8))
        self.register_buffer("seen", torch.zeros(8))
        self.calls = 0
        self.head = Head()

    def forward(self, x):
        h = self.body(x)
        self.seen.add_(h.detach().mean((0, 2, 3)))
        self.calls += 1
        return self.head(h)


PATTERNS = [PlainList, Unregistered, Nested, Lambda, Shared, Compiled, Reparametrized, BufferInEval]


def _user_state(model: nn.Module) -> dict:
    """Plain attributes and containers the forward may touch, plus BatchNorm stats of unregistered modules."""
    state = {"feats": len(getattr(model, "feats", [])), "calls": getattr(model, "calls", None)}
    for i, stage in enumerate(getattr(model, "stages", [])):
        state[f"stage{i}"] = {k: v.clone() for k, v in stage.state_dict().items()}
    helper = getattr(model, "helper", None)
    if helper is not None:
        state["helper"] = {k: v.clone() for k, v in helper.module.state_dict().items()}
    return state


def _same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, dict):
            if not all(torch.equal(x[k], y[k]) for k in x):
                return False
        elif x != y:
            return False
    return True


def _all_modules(model: nn.Module) -> list[nn.Module]:
    found = list(model.modules())
    for stage in getattr(model, "stages", []):
        found += list(stage.modules())
    helper = getattr(model, "helper", None)
    if helper is not None:
        found += list(helper.module.modules())
    return found


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.__name__)
def test_every_method_leaves_the_pattern_untouched(pattern):
    torch.manual_seed(0)
    model = pattern().eval()
    eval_maps = {name: call(model, 1).map for name, call in CALLS.items() if name != "cam"}
    model.train()
    fired = []
    handles = [m.register_forward_hook(lambda *a: fired.append(1)) for m in _all_modules(model)]
    handles += [m.register_forward_pre_hook(lambda *a: fired.append(1)) for m in _all_modules(model)]
    before, user = snapshot(model), _user_state(model)
    try:
        for name, call in CALLS.items():
            try:
                result = call(model, 1)
            except ValueError as error:  # CAM on a head it cannot verify
                assert name == "cam", error
                continue
            if name != "cam":
                torch.testing.assert_close(result.map, eval_maps[name], rtol=1e-4, atol=1e-6)
            assert_unchanged(model, before)
            assert _same(user, _user_state(model)), f"{name} changed the user's attributes or containers"
            assert not fired, f"{name} ran the user's modules (their hooks fired)"
    finally:
        for handle in handles:
            handle.remove()


def test_a_forward_that_mutates_state_changes_only_the_shadow():
    model = BufferInEval().eval()
    cl.saliency(model, X, 0)
    cl.occlusion(model, X, 0, mask_size=32, stride=32)
    assert torch.equal(model.seen, torch.zeros(8)) and model.calls == 0
    model(X[None])  # the user's own forward does update it, and the next look sees the new value
    assert model.calls == 1 and model.seen.abs().sum() > 0


def test_module_reached_through_a_global_variable_is_refused_with_a_clear_error():
    class Global(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = block(3, 8)
            self.head = Head()
            self.run = lambda h: GLOBAL_BODY(h)  # noqa: F821 - a global defined below

        def forward(self, x):
            return self.head(self.run(x))

    model = Global()
    globals()["GLOBAL_BODY"] = model.body
    try:
        before = snapshot(model)
        with pytest.raises(ShadowError, match=r"Global\.run.*GLOBAL_BODY"):
            cl.saliency(model, X, 0)
        assert_unchanged(model, before)
    finally:
        del globals()["GLOBAL_BODY"]


def test_an_attribute_named_like_a_global_module_is_not_a_global_call():
    """``self.stem`` in forward while a notebook holds the model in a global ``stem``: the attribute's name is
    not a call of the global (it was refused: the check read every name the code mentions, attributes too)."""

    class Stem(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = block(3, 8)
            self.head = Head()

        def forward(self, x):
            return self.head(self.stem(x))

    model = Stem()
    globals()["stem"] = model
    try:
        before = snapshot(model)
        assert cl.saliency(model, X, 0).map.shape == X.shape[-2:]
        assert_unchanged(model, before)
    finally:
        del globals()["stem"]


def test_global_module_hooks_never_fire_for_cnnlens_and_keep_working_for_the_user():
    """Process-wide hooks belong to the user's own forwards; cnnlens neither triggers nor removes them."""
    from torch.nn.modules import module as torch_module

    model = PlainList().eval()
    fired = []
    handles = [
        torch_module.register_module_forward_pre_hook(lambda *a: fired.append("pre")),
        torch_module.register_module_forward_hook(lambda *a: fired.append("post")),
        torch_module.register_module_full_backward_hook(lambda *a: fired.append("backward")),
    ]
    try:
        registries = [dict(torch_module._global_forward_pre_hooks), dict(torch_module._global_forward_hooks),
                      dict(torch_module._global_backward_hooks)]
        for name, call in CALLS.items():
            if name != "cam":
                call(model, 1)
        assert fired == [], "a global hook fired for cnnlens' own forwards"
        assert registries == [dict(torch_module._global_forward_pre_hooks), dict(torch_module._global_forward_hooks),
                              dict(torch_module._global_backward_hooks)]
        model(X[None]).sum().backward()  # the user's own forward still sees them
        assert {"pre", "post", "backward"} <= set(fired)
    finally:
        for handle in handles:
            handle.remove()


def test_a_list_the_user_changes_between_looks_is_followed():
    model = Unregistered().eval()
    first = cl.saliency(model, X, 0).map
    model.stages.append(block(8, 8))  # a new module in a plain list: the next look builds a new shadow
    fired = []
    model.stages[-1].register_forward_hook(lambda *a: fired.append(1))
    second = cl.saliency(model, X, 0).map
    assert not fired
    assert not torch.equal(first, second)
    for stage in model.stages:  # unregistered modules do not follow model.eval(); cnnlens looks in eval mode
        stage.eval()
    with torch.no_grad():
        expected = torch.autograd.functional.jacobian(lambda x: model(x[None])[0, 0], X).abs().amax(0)
    torch.testing.assert_close(second, expected, rtol=1e-4, atol=1e-6)


def _train(model: nn.Module, steps: int, looking=None) -> tuple[dict, list[BaseException]]:
    """Momentum SGD on fixed random data; ``looking()`` runs cnnlens in another thread meanwhile."""
    import threading

    errors: list[BaseException] = []
    done = threading.Event()

    def watcher():
        while not done.is_set():
            try:
                looking()
            except BaseException as error:  # noqa: BLE001 - every error is a failure of the test
                errors.append(error)

    gen = torch.Generator().manual_seed(0)
    data = torch.rand(steps, 8, 3, 32, 32, generator=gen)
    labels = torch.randint(0, 5, (steps, 8), generator=gen)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    thread = threading.Thread(target=watcher, daemon=True) if looking else None
    model.train()
    if thread:
        thread.start()
    try:
        for x, y in zip(data, labels):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    finally:
        done.set()
        if thread:
            thread.join(60)
    return {k: v.clone() for k, v in model.state_dict().items()}, errors


def test_looking_while_another_thread_trains_never_fails_and_never_changes_the_training():
    from cnnlens.widgets import AttributionView

    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    calls = [0]
    views: list = []

    def looking():
        calls[0] += 1
        cl.saliency(model, x, 1)
        cl.gradcam(model, x, 1)
        cl.smoothgrad(model, x[0], 2, samples=4, seed=0)
        cl.occlusion(model, x[0], 0, mask_size=16, stride=8)
        cl.integrated_gradients(model, x[0], "b2.0:3", steps=4)
        if not views:
            views.append(AttributionView(model, x))
        view = views[0]
        view.method.value = ("gradcam", "saliency", "integrated_gradients")[calls[0] % 3]
        view.index.value = calls[0] % 2
        assert view.wait(60) and view.runner.last_error is None, view.runner.last_error

    torch.manual_seed(0)
    model = PlainList()
    alone, _ = _train(model, 220)
    torch.manual_seed(0)
    model = PlainList()
    watched, errors = _train(model, 220, looking)
    for view in views:
        view.close()
    assert errors == [], f"{len(errors)} errors while training, first: {errors[:1]}"
    assert calls[0] >= 5
    assert alone.keys() == watched.keys()
    for key in alone:
        assert torch.equal(alone[key], watched[key]), f"{key} differs from the run without cnnlens"


def test_two_threads_looking_while_a_plain_attribute_changes_see_one_value_or_the_other():
    """The shadow's attribute mirror is refreshed under a lock: concurrent looks never see a half-made shadow."""
    import threading

    class Tempered(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(block(3, 8), block(8, 8))
            self.head = Head()
            self.temperature = 1.0
            self.extra = [1]

        def forward(self, x):
            return self.head(self.body(x)) / self.temperature * len(self.extra)

    model = Tempered().eval()
    expected = {}
    for t in (1.0, 4.0):
        model.temperature = t
        expected[t] = cl.saliency(model, X, 0).map
    errors, results = [], []

    def look():
        try:
            for _ in range(30):
                results.append(cl.saliency(model, X, 0).map)
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=look) for _ in range(2)]
    for thread in threads:
        thread.start()
    for i in range(200):
        model.temperature = (1.0, 4.0)[i % 2]
        model.extra = [1]  # a new list object each time: translated anew at every look
    for thread in threads:
        thread.join()
    assert not errors, errors[:1]
    assert all(any(torch.equal(r, e) for e in expected.values()) for r in results)


def test_a_module_held_by_the_class_is_shadowed_and_one_called_from_a_global_is_refused():
    class ClassLevel(nn.Module):
        shared = block(8, 8)

        def __init__(self):
            super().__init__()
            self.stem = block(3, 8)
            self.head = Head()

        def forward(self, x):
            return self.head(self.shared(self.stem(x)))

    model = ClassLevel().train()
    ClassLevel.shared.train()
    fired = []
    handle = ClassLevel.shared[0].register_forward_hook(lambda *a: fired.append(1))
    stats = ClassLevel.shared[1].running_mean.clone()
    try:
        cl.saliency(model, X, 0)
        assert not fired and torch.equal(stats, ClassLevel.shared[1].running_mean)
    finally:
        handle.remove()

    class CallsGlobal(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = Head()

        def forward(self, x):
            return self.head(GLOBAL_STEM(x))  # noqa: F821 - a global defined below

    globals()["GLOBAL_STEM"] = block(3, 8)
    try:
        with pytest.raises(ShadowError, match=r"CallsGlobal\.forward.*GLOBAL_STEM"):
            cl.saliency(CallsGlobal(), X, 0)
    finally:
        del globals()["GLOBAL_STEM"]


class ShiftsItsInput(nn.Module):
    """Normalizes its input in place, as ported models often do (``x.sub_(mean)`` in the forward)."""

    def __init__(self, in_place: bool):
        super().__init__()
        self.in_place = in_place
        self.body = nn.Sequential(block(3, 8), block(8, 8))
        self.head = Head()

    def forward(self, x):
        x = x.sub_(0.5) if self.in_place else x - 0.5
        return self.head(self.body(x))


def test_a_forward_that_changes_its_input_in_place_gives_every_method_the_same_result():
    """Gradient methods raised autograd's in-place error on their leaf; occlusion went on with shifted images
    (its map was off by 6e-3); now the network always receives a tensor of its own."""
    torch.manual_seed(0)
    in_place, plain = ShiftsItsInput(True).eval(), ShiftsItsInput(False).eval()
    plain.load_state_dict(in_place.state_dict())
    x = X.clone()
    for name, call in CALLS.items():
        try:
            expected = call(plain, 1).map
        except ValueError as error:  # CAM on a head it cannot verify
            assert name == "cam", error
            continue
        torch.testing.assert_close(call(in_place, 1).map, expected, rtol=0, atol=0, msg=name)
    occluded = cl.occlusion(in_place, x, 1, mask_size=16, stride=8, incremental=True)
    assert torch.equal(occluded.map, cl.occlusion(plain, x, 1, mask_size=16, stride=8, incremental=False).map)
    assert torch.equal(x, X)  # the caller's image too
