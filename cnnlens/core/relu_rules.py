"""Guided-backprop and DeconvNet backward rules, without swapping any module.

A ``TorchFunctionMode`` sees every rectifier call made during a forward —
``nn.ReLU`` (in place or not), ``F.relu``, ``torch.relu``, ``x.relu_()`` — and
routes it through an autograd Function whose forward is the ordinary ReLU and
whose backward is the rule. Reused modules, functional calls and in-place
ReLUs all work; max-pool switches come from autograd for free.

- guided backprop (Springenberg et al.): pass gradient where both the forward
  input was positive and the incoming gradient is positive;
- DeconvNet (Zeiler & Fergus): rectify the backward signal, ignoring the
  forward input;
- redirected (Lucid, for feature synthesis): the ordinary gradient, except
  that an image whose gradient the ReLU blocks entirely (a unit dead at the
  start of an optimization) gets the gradient that would raise the negative
  inputs, so the optimization can wake it up.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

RULES = ("guided", "deconvnet", "redirected")


def _rule(backward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> tuple[type, type]:
    """The out-of-place and in-place autograd Functions of a ReLU whose forward is the ordinary one and whose
    backward is ``backward(output, grad)`` (the output says where the input was positive)."""

    class OutOfPlace(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            out = x.clamp(min=0)
            ctx.save_for_backward(out)
            return out

        @staticmethod
        def backward(ctx, grad):
            return backward(ctx.saved_tensors[0], grad)

    class InPlace(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.mark_dirty(x)
            x.clamp_(min=0)
            ctx.save_for_backward(x)
            return x

        @staticmethod
        def backward(ctx, grad):
            return backward(ctx.saved_tensors[0], grad)

    return OutOfPlace, InPlace


def _guided(out: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return grad.clamp(min=0) * (out > 0)


def _deconv(out: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return grad.clamp(min=0)


def _redirected(out: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The ReLU's gradient; for an image whose gradient is all zero there (a dead unit), the gradient that
    would raise the inputs below zero instead (Lucid's redirected ReLU)."""
    alive = out > 0
    passed = grad * alive
    blocked = passed.flatten(1).abs().amax(1) == 0
    if not bool(blocked.any()):  # the usual case after the first steps: the plain gradient, no extra pass
        return passed
    redirected = grad.masked_fill(~alive & (grad < 0), 0)
    return torch.where(blocked.view(-1, *([1] * (grad.dim() - 1))), redirected, passed)


_OUT_OF_PLACE = {F.relu, torch.relu, torch.Tensor.relu}
_IN_PLACE = {F.relu_, torch.relu_, torch.Tensor.relu_}
_FUNCTIONS = {"guided": _rule(_guided), "deconvnet": _rule(_deconv), "redirected": _rule(_redirected)}


class ReLURule(TorchFunctionMode):
    """Inside ``with ReLURule("guided"):`` every ReLU call backpropagates with that rule."""

    def __init__(self, rule: str):
        super().__init__()
        if rule not in _FUNCTIONS:
            raise ValueError(f"Unknown ReLU rule {rule!r}. Valid rules: {', '.join(RULES)}.")
        self.rule = rule
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _OUT_OF_PLACE or func in _IN_PLACE:
            x = args[0]
            inplace = func in _IN_PLACE or bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
            if isinstance(x, torch.Tensor) and torch.is_grad_enabled() and x.requires_grad:
                self.calls += 1
                plain, in_place = _FUNCTIONS[self.rule]
                return (in_place if inplace else plain).apply(x)
        return func(*args, **kwargs)
