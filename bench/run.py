"""Benchmark: each local explanation's cost as ratios measured in one run.

    .venv/bin/python bench/run.py            # prints a markdown table (also saved to bench/results.md)

For the default model (64×64) and resnet18 (224×224, random weights), on one
image, every method is timed together with:
- the raw passes it needs, run directly on the model: one forward (CAM,
  Grad-CAM), forward + input-gradient backward (gradient methods), or the
  same number of batched forwards / forward-backwards (occlusion, IG,
  SmoothGrad);
- the peer library doing the same work (captum, pytorch-grad-cam, torchcam).

Ratios, not seconds, are the result: "÷ raw" = cnnlens ÷ raw passes, "÷
peer" = cnnlens ÷ peer (below 1 means cnnlens is faster). Times are medians
of rounds in which the contenders run in turn, so machine drift hits all alike.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from captum.attr import GuidedBackprop, InputXGradient, IntegratedGradients, NoiseTunnel, Occlusion, Saliency
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torchcam.methods import CAM

import cnnlens as cl
from cnnlens.explain.occlusion import positions


def interleaved_medians(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median wall time of each function, timed in turn within every round so that drift hits all alike."""
    for fn in fns:
        fn()  # warm-up (and the one-time layer probe)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return [statistics.median(bucket) for bucket in times]


def raw_forward(model, x):
    with torch.no_grad():
        return model(x)


def raw_forward_backward(model, x, target):
    x = x.detach().requires_grad_(True)
    out = model(x)
    return torch.autograd.grad(out[:, target].sum(), x)[0]


def raw_batched(model, inputs: torch.Tensor, batch: int, backward: bool, target: int):
    for start in range(0, len(inputs), batch):
        chunk = inputs[start:start + batch]
        if backward:
            raw_forward_backward(model, chunk, target)
        else:
            raw_forward(model, chunk)


def bench_model(name: str, model: torch.nn.Module, x: torch.Tensor, layer: str, fc: str, mask: int, stride: int,
                steps: int, repeats: int) -> list[tuple]:
    target = 1
    peer = copy.deepcopy(model).eval()
    for module in peer.modules():
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False  # captum's module hooks need out-of-place ReLUs
    size = x.shape[-1]
    n_positions = len(positions(size, mask, stride)) ** 2
    occluded = x.repeat(n_positions, 1, 1, 1)
    path = x.repeat(steps, 1, 1, 1)
    batch = 64
    rows = []

    def row(method, ours, raw, raw_label, peer_fn=None, peer_label="", reps=repeats):
        t_ours, t_raw, *rest = interleaved_medians([ours, raw] + ([peer_fn] if peer_fn else []), reps)
        t_peer = rest[0] if rest else None
        rows.append((name, method, t_ours * 1e3, raw_label, t_ours / t_raw,
                     peer_label, (t_ours / t_peer) if t_peer else None))
        print(f"  {name:9} {method:22} {t_ours * 1e3:8.1f} ms  ×raw {t_ours / t_raw:5.2f}"
              + (f"  ×{peer_label} {t_ours / t_peer:5.2f}" if t_peer else ""), file=sys.stderr)

    fb = lambda: raw_forward_backward(model, x, target)  # noqa: E731
    row("saliency", lambda: cl.saliency(model, x, target), fb, "fwd+bwd",
        lambda: Saliency(peer).attribute(x, target=target), "captum")
    row("input_x_gradient", lambda: cl.input_x_gradient(model, x, target), fb, "fwd+bwd",
        lambda: InputXGradient(peer).attribute(x, target=target), "captum")
    row("guided_backprop", lambda: cl.guided_backprop(model, x, target), fb, "fwd+bwd",
        lambda: GuidedBackprop(peer).attribute(x, target=target), "captum")
    row("deconvnet", lambda: cl.deconvnet(model, x, target), fb, "fwd+bwd")
    row("smoothgrad", lambda: cl.smoothgrad(model, x, target, samples=steps, batch_size=batch, seed=0),
        lambda: raw_batched(model, path, batch, True, target), f"{steps} fwd+bwd",
        lambda: NoiseTunnel(Saliency(peer)).attribute(x, nt_type="smoothgrad", nt_samples=steps,
                                                      nt_samples_batch_size=batch, stdevs=0.15, target=target),
        "captum", reps=max(repeats // 2, 2))
    row("integrated_gradients", lambda: cl.integrated_gradients(model, x, target, steps=steps, batch_size=batch),
        lambda: raw_batched(model, path, batch, True, target), f"{steps} fwd+bwd",
        lambda: IntegratedGradients(peer).attribute(x, target=target, n_steps=steps, internal_batch_size=batch),
        "captum", reps=max(repeats // 2, 2))
    grad_cam = GradCAM(model=peer, target_layers=[peer.get_submodule(layer)])
    row("gradcam", lambda: cl.gradcam(model, x, target, layer=layer), lambda: raw_forward(model, x), "1 fwd",
        lambda: grad_cam(input_tensor=x, targets=[ClassifierOutputTarget(target)]), "pytorch-grad-cam")
    cam_extractor = CAM(peer, target_layer=layer, fc_layer=fc)

    def torchcam_cam():
        out = peer(x)
        return cam_extractor(target, out)

    row("cam", lambda: cl.cam(model, x, target, layer=layer), lambda: raw_forward(model, x), "1 fwd",
        torchcam_cam, "torchcam")
    cam_extractor.remove_hooks()
    probs = lambda inp: torch.softmax(peer(inp), 1)  # noqa: E731
    row("occlusion", lambda: cl.occlusion(model, x, target, mask_size=mask, stride=stride, batch_size=batch),
        lambda: raw_batched(model, occluded, batch, False, target), f"{n_positions} fwd",
        lambda: Occlusion(probs).attribute(x, sliding_window_shapes=(3, mask, mask), strides=(3, stride, stride),
                                           baselines=0.5, target=target, perturbations_per_eval=batch),
        "captum", reps=max(repeats // 2, 2))
    return rows


def main() -> None:
    torch.manual_seed(0)
    default, data = cl.zoo.shapes(16)
    resnet = torchvision.models.resnet18(weights=None).eval()
    rows = bench_model("default", default, data.images[:1], "stage4", "fc", mask=16, stride=4, steps=32,
                       repeats=60)
    rows += bench_model("resnet18", resnet, torch.rand(1, 3, 224, 224), "layer4", "fc", mask=56, stride=28,
                        steps=32, repeats=5)
    lines = [
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device: CPU, one image",
        "",
        "| model | method | cnnlens (ms) | raw passes | ÷ raw | peer | ÷ peer |",
        "|---|---|---:|---|---:|---|---:|",
    ]
    for name, method, ms, raw_label, vs_raw, peer, vs_peer in rows:
        peer_cell = f"{vs_peer:.2f}" if vs_peer is not None else "–"
        lines.append(f"| {name} | {method} | {ms:.1f} | {raw_label} | {vs_raw:.2f} | {peer or '–'} | {peer_cell} |")
    table = "\n".join(lines)
    print(table)
    (Path(__file__).parent / "results.md").write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
