"""cnnlens never changes the model it looks at: DESIGN.md section 2, for every method on nine architectures.

Each model is put in train mode with existing ``.grad`` tensors, a frozen
parameter and a user hook, as if attached halfway through training. After
every call (success, exception, KeyboardInterrupt, cancellation) parameters and
buffers must be bitwise equal and flags, grads and hooks the same; the user's
hook must never have fired; results must equal those of the model in eval mode.
"""

from __future__ import annotations

import pytest
import torch

import cnnlens as cl
from cnnlens.core.objectives import Custom

from .conftest import ARCHITECTURES, assert_unchanged, random_model, snapshot

X = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1))

CALLS = {
    "saliency": lambda m, t, **k: cl.saliency(m, X, t),
    "smoothgrad": lambda m, t, **k: cl.smoothgrad(m, X, t, samples=2, seed=0, **k),
    "integrated_gradients": lambda m, t, **k: cl.integrated_gradients(m, X, t, steps=3, **k),
    "input_x_gradient": lambda m, t, **k: cl.input_x_gradient(m, X, t),
    "guided_backprop": lambda m, t, **k: cl.guided_backprop(m, X, t),
    "deconvnet": lambda m, t, **k: cl.deconvnet(m, X, t),
    "cam": lambda m, t, **k: cl.cam(m, X, t),
    "gradcam": lambda m, t, **k: cl.gradcam(m, X, t),
    "occlusion": lambda m, t, **k: cl.occlusion(m, X, t, mask_size=32, stride=32, **k),
    "lime": lambda m, t, **k: cl.lime(m, X, t, samples=6, segmentation="grid", segments=4, seed=0, **k),
}
LONG = {"smoothgrad", "integrated_gradients", "occlusion", "lime"}


class MidTraining:
    """Put a shared model in a mid-training state for one test, and take it back out afterwards."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.fired = 0

    def __enter__(self):
        m = self.model
        m.train()
        gen = torch.Generator().manual_seed(0)
        for p in m.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        first = next(m.parameters())
        first.requires_grad_(False)
        conv = next(mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d))
        self.handle = conv.register_forward_hook(self._count)
        return self

    def _count(self, *_):
        self.fired += 1

    def __exit__(self, *exc):
        self.handle.remove()
        self.model.eval()
        for p in self.model.parameters():
            p.grad = None
            p.requires_grad_(True)
        return False


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("method", list(CALLS))
def test_model_untouched_and_eval_semantics(arch: str, method: str):
    model = random_model(arch)
    eval_result = None
    try:
        eval_result = CALLS[method](model, None)
    except ValueError as error:
        assert method == "cam" and "gradcam" in str(error)
    with MidTraining(model) as state:
        before = snapshot(model)
        rng = torch.get_rng_state()
        try:
            result = CALLS[method](model, None)
        except ValueError as error:
            assert method == "cam" and "gradcam" in str(error), error
            result = None
        assert_unchanged(model, before)
        assert state.fired == 0, "the user's hook fired: cnnlens ran the user's modules"
        assert torch.equal(rng, torch.get_rng_state()), "the global RNG was touched"
    assert (result is None) == (eval_result is None)
    if result is not None:
        assert result.map.shape == (64, 64)
        assert torch.isfinite(result.map).all()
        # train-mode model, eval-mode semantics: dropout off, BatchNorm on running statistics
        torch.testing.assert_close(result.map, eval_result.map, rtol=1e-4, atol=1e-5)


def _raising(exc: type[BaseException]):
    def boom(acts, logits):
        raise exc("raised halfway")
    return Custom(boom, description="raises")


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_model_untouched_when_a_method_raises_halfway(arch: str, exc: type[BaseException]):
    """The target (or, for class-only methods, the progress callback) raises after the forward pass began."""
    model = random_model(arch)

    def stop(done, total):
        raise exc("raised halfway")

    with MidTraining(model):
        before = snapshot(model)
        for method, call in CALLS.items():
            if method == "cam":
                with pytest.raises(ValueError):  # the class index is checked after the forward
                    call(model, 10**6)
            elif method == "lime":
                with pytest.raises(exc):
                    call(model, 0, progress=stop)
            else:
                with pytest.raises(exc):
                    call(model, _raising(exc))
            assert_unchanged(model, before)
            _assert_no_hooks_left(model)


@pytest.mark.parametrize("method", sorted(LONG))
def test_cancellation_stops_work_and_leaves_model_untouched(method: str):
    model = random_model("resnet18")
    token = cl.CancelToken()
    seen = []

    def progress(done, total):
        seen.append(done)
        token.cancel()

    with MidTraining(model):
        before = snapshot(model)
        kwargs = {"progress": progress, "cancel": token}
        if method == "occlusion":
            kwargs["batch_size"] = 1
        if method in ("integrated_gradients", "smoothgrad", "lime"):
            kwargs["batch_size"] = 1
        with pytest.raises(cl.Cancelled):
            if method == "occlusion":
                cl.occlusion(model, X, mask_size=16, stride=16, **kwargs)
            else:
                CALLS[method](model, None, **kwargs)
        assert_unchanged(model, before)
    assert len(seen) == 1, "work went on after cancellation"


def _assert_no_hooks_left(model: torch.nn.Module) -> None:
    from cnnlens.core.shadow import shadow

    for module in shadow(model).modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert torch.is_grad_enabled()
