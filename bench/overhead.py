"""Where Grad-CAM's fixed per-call cost goes on the default model (not a test).

    .venv/bin/python bench/overhead.py      # prints a table (also saved to bench/overhead.md)

Grad-CAM is rebuilt step by step from the engine's pieces; each step is timed
against a raw no-grad forward of the model in the same rounds (one thread, so
that thread hand-offs do not blur sub-millisecond differences). The added
milliseconds between consecutive steps are the cost of that step.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

import cnnlens as cl
from cnnlens.core.hooks import capture
from cnnlens.core.session import look
from cnnlens.explain._common import explanation, objective_for

STEPS = (
    "open the session (shadow check) + no-grad forward",
    "prepare input, resolve layer and target, capture hook, graph above the layer",
    "check the logits (shape, NaN/Inf)",
    "objective + backward from the logit to the layer",
    "channel weights and the weighted sum",
    "package: upsample to the input, top-5 predictions",
)


def partial_gradcam(model: torch.nn.Module, x: torch.Tensor, layer: str, target: int, level: int) -> None:
    """Grad-CAM up to step ``level`` (0 … len(STEPS) - 1)."""
    with look(model) as s:
        if level == 0:
            with torch.no_grad():
                s.net(x)
            return
        batch = s.prepare(x)
        size = tuple(batch.x.shape[-2:])
        info = s.layer(layer, size, spatial=True)
        objective = objective_for(s, target, size)
        with capture(s.net, objective.layers, stop_below=info.name) as cap:
            logits = s.logits(batch.x) if level >= 2 else s.net(batch.x)
            if level < 3:
                return
            acts = cap[info.name]
            (grad,) = torch.autograd.grad(objective(cap.activations, logits).sum(), acts)
        if level < 4:
            return
        raw = (grad.mean((2, 3), keepdim=True) * acts.detach()).sum(1).clamp(min=0)
        if level >= 5:
            explanation(s, batch, raw, raw, method="gradcam", objective=objective, layer=info.name, params={},
                        logits=logits.detach())


def main(rounds: int = 600) -> None:
    torch.set_num_threads(1)
    model, data = cl.zoo.shapes(16)
    x = data.images[:1]

    def raw() -> None:
        with torch.no_grad():
            model(x)

    contenders = [raw] + [lambda level=level: partial_gradcam(model, x, "stage4", 1, level)
                          for level in range(len(STEPS))]
    contenders.append(lambda: cl.gradcam(model, x, 1, layer="stage4"))
    times: list[list[float]] = [[] for _ in contenders]
    for round_ in range(rounds + 50):
        for fn, bucket in zip(contenders, times):
            start = time.perf_counter()
            fn()
            if round_ >= 50:  # warm-up rounds are not counted
                bucket.append(time.perf_counter() - start)
    medians = [statistics.median(bucket) * 1e3 for bucket in times]
    lines = [f"raw no-grad forward of the default model: {medians[0]:.3f} ms (1 thread)", "",
             "| step | adds (ms) |", "|---|---:|"]
    previous = medians[0]
    for name, ms in zip(STEPS, medians[1:-1]):
        lines.append(f"| {name} | {ms - previous:+.3f} |")
        previous = ms
    lines += [f"| **cl.gradcam in total, beyond the raw forward** | {medians[-1] - medians[0]:+.3f} |", "",
              f"cl.gradcam ÷ raw forward: {medians[-1] / medians[0]:.2f}"]
    table = "\n".join(lines)
    print(table)
    (Path(__file__).parent / "overhead.md").write_text(table + "\n", encoding="utf-8")

if __name__ == "__main__":
    main()
