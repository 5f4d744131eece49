"""Feature synthesis: cost of one optimization step, as ratios measured in one run.

    .venv/bin/python bench/synthesis.py     # prints a markdown table (also saved to bench/synthesis.md)

For the default model at 64 px and a random resnet18 at 128 px, with batch 1
(one unit) and batch 8 (eight units in one optimization), each contender runs
the same number of steps of the same objective (a channel's mean activation)
with Lucid's settings (Fourier parametrization with decorrelated colour, the
standard transforms, Adam):
- raw: one forward + input-gradient backward of the same batch at the same
  size, run directly on the model (the floor any method pays per step);
- cnnlens: ``cl.visualize(..., preset="lucid")``, total time ÷ steps;
- lucent (``torch-lucent``, if installed): ``render_vis`` with the same
  parametrization, transforms and size (no upsampling to 224), ÷ steps.
Lucent pins kornia ≤ 0.4.1, which does not install with current PyTorch; the
bench maps the two kornia functions it calls to their current names.
Times are medians of rounds in which the contenders run in turn.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
import torchvision

import cnnlens as cl

STEPS = 128
ROUNDS = 3


def _lucent():
    try:
        import kornia
        import kornia.geometry.transform as kt

        for name in ("get_rotation_matrix2d", "warp_affine"):
            if not hasattr(kornia, name):
                setattr(kornia, name, getattr(kt, name))
        from lucent.optvis import objectives, param, render
    except ImportError:
        return None
    return objectives, param, render


def raw_step(model: torch.nn.Module, layer: str, units: list[int], size: int) -> callable:
    module = model.get_submodule(layer)
    store = {}
    module.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))

    def run():
        x = torch.rand(len(units), 3, size, size, requires_grad=True)
        model(x)
        a = store["a"]
        score = a[torch.arange(len(units)), units].mean((1, 2)).sum()
        torch.autograd.grad(score, x)
    return run


def cnnlens_run(model, layer, units, size):
    targets = [f"{layer}:{u}" for u in units]
    return lambda: cl.visualize(model, targets, preset="lucid", steps=STEPS, size=size, seed=0)


def lucent_run(lucent, model, layer, units, size):
    objectives, param, render = lucent
    objective = sum(objectives.channel(layer, u, batch=i) for i, u in enumerate(units))
    return lambda: render.render_vis(model, objective, param_f=lambda: param.image(size, batch=len(units)),
                                     thresholds=(STEPS,), show_image=False, progress=False,
                                     fixed_image_size=size)


def main() -> None:
    torch.set_num_threads(2)
    lucent = _lucent()
    shapes, _ = cl.zoo.shapes()
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).eval()
    cases = [("default", shapes, "stage4", 64), ("resnet18", resnet, "layer4", 128)]
    lines = ["| model | size | batch | raw fwd+bwd (ms) | cnnlens step (ms) | ÷ raw | lucent step (ms) "
             "| cnnlens ÷ lucent |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, model, layer, size in cases:
        for batch in (1, 8):
            units = list(range(3, 3 + batch))
            runs = {"raw": raw_step(torchvision_copy(model), layer, units, size),
                    "cnnlens": cnnlens_run(model, layer, units, size)}
            if lucent is not None:
                runs["lucent"] = lucent_run(lucent, torchvision_copy(model), layer, units, size)
            times = {k: [] for k in runs}
            for fn in runs.values():
                fn()  # warm up
            for _ in range(ROUNDS):
                for key, fn in runs.items():
                    start = time.perf_counter()
                    if key == "raw":
                        for _ in range(STEPS):
                            fn()
                    else:
                        fn()
                    times[key].append((time.perf_counter() - start) / STEPS * 1000)
            med = {k: statistics.median(v) for k, v in times.items()}
            luc = med.get("lucent")
            lines.append(f"| {name} | {size} | {batch} | {med['raw']:.1f} | {med['cnnlens']:.1f} | "
                         f"{med['cnnlens'] / med['raw']:.2f} | " + (f"{luc:.1f} | {med['cnnlens'] / luc:.2f} |"
                                                                   if luc else "– | – |"))
            print(lines[-1], flush=True)
    text = (f"torch {torch.__version__}, 2 threads, CPU; {STEPS} steps, median of {ROUNDS} rounds; "
            "preset lucid (Fourier + decorrelated colour + standard transforms + Adam).\n\n" + "\n".join(lines) + "\n")
    (Path(__file__).parent / "synthesis.md").write_text(text)
    print(text)


def torchvision_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy for the raw passes and lucent (both hook or switch the model they are given)."""
    import copy

    return copy.deepcopy(model).eval()


if __name__ == "__main__":
    main()
