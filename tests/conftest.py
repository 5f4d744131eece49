"""Shared fixtures: randomly initialised torchvision models (no downloads) and the embedded default."""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision

import cnnlens as cl

ARCHITECTURES = ("resnet18", "vgg11_bn", "alexnet", "densenet121", "mobilenet_v3_small", "efficientnet_b0",
                 "googlenet", "convnext_tiny", "squeezenet1_1")


@functools.cache
def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    model = torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)
    model.eval()
    return model


def random_model(name: str) -> torch.nn.Module:
    """A randomly initialised torchvision classifier (10 classes), built once per test session."""
    return _build(name)


@pytest.fixture(scope="session")
def default():
    """The trained embedded default and its held-out data."""
    return cl.zoo.shapes()


def snapshot(model: torch.nn.Module) -> dict:
    """Everything cnnlens promises not to change about a model."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "param_ids": [id(p) for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": [(dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks))
                  for m in model.modules()],
        "devices": [(p.device, p.dtype) for p in model.parameters()],
    }


def assert_unchanged(model: torch.nn.Module, before: dict) -> None:
    """Bitwise equality of parameters and buffers; same flags, grads, hooks, devices."""
    after = snapshot(model)
    assert before["state"].keys() == after["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), f"{key} changed"
    assert before["param_ids"] == after["param_ids"]
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    for g0, g1 in zip(before["grads"], after["grads"]):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)
    assert before["hooks"] == after["hooks"]
    assert before["devices"] == after["devices"]


def forwards_in_parts(monkeypatch: pytest.MonkeyPatch, part: int | None) -> list[int]:
    """Make the session's heap-sized part ``part`` images (at most the batch asked for; None: leave it) and
    record the size of every forward from then on, in the list returned."""
    from cnnlens.core.session import Session

    if part is not None:
        monkeypatch.setattr(Session, "batch_in_heap", lambda self, size, most, block=None: min(part, most))
    sizes: list[int] = []
    forward = Session.raw_forward
    monkeypatch.setattr(Session, "raw_forward", lambda self, x: sizes.append(len(x)) or forward(self, x))
    return sizes
