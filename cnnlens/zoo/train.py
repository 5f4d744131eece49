"""Reproducible training of the embedded default (``cnnlens train-default``).

About 8 minutes on 2 CPU cores. The recipe: a fixed synthetic training set,
horizontal flips and occluder "cutouts" (gray, black or mean-coloured
squares). A cutout that hides the labelled shape while a distractor stays
visible relabels the image as the distractor: the model learns to name the
most prominent *visible* shape, which is what Zeiler & Fergus' occlusion
label map probes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from .shapes_data import ShapesDataset
from .shapes_model import ShapesNet

WEIGHTS = Path(__file__).parent / "weights" / "shapes_net.pt"
TRAIN_SEED = 1
HELD_OUT_SEED = 0


def _cutout(images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor,
            distractor_masks: torch.Tensor, objects: torch.Tensor, gen: torch.Generator):
    """Occlude random squares in place; relabel where only the distractor remains visible."""
    n, _, h, w = images.shape
    labels = labels.clone()
    for i in range(n):
        has_distractor = bool(distractor_masks[i].any())
        draw = torch.rand(3, generator=gen)
        if has_distractor and draw[0] < 0.15:  # hide the labelled shape itself
            cy, cx, r = objects[i].tolist()
            size = int(2 * r * (1.1 + 0.3 * float(draw[1]))) + 1
            y0, x0 = int(cy - size / 2), int(cx - size / 2)
        elif draw[0] < 0.6:
            size = int(torch.randint(8, 29, (1,), generator=gen))
            y0 = int(torch.randint(-size // 2, h - size // 2, (1,), generator=gen))
            x0 = int(torch.randint(-size // 2, w - size // 2, (1,), generator=gen))
        else:
            continue
        y0c, x0c, y1c, x1c = max(y0, 0), max(x0, 0), min(y0 + size, h), min(x0 + size, w)
        if y1c <= y0c or x1c <= x0c:
            continue
        box = torch.zeros(h, w, dtype=torch.bool)
        box[y0c:y1c, x0c:x1c] = True
        covered_main = (masks[i] & box).sum() / masks[i].sum().clamp(min=1)
        covered_distractor = (distractor_masks[i] & box).sum() / distractor_masks[i].sum().clamp(min=1)
        if covered_main > 0.5:
            if not (has_distractor and covered_main > 0.9 and covered_distractor < 0.2):
                continue  # the label would be ambiguous: skip this occluder
            labels[i] = -1  # placeholder: the distractor's class, set by the caller
        value = 0.5 if draw[2] < 0.6 else (0.0 if draw[2] < 0.8 else float(images[i].mean()))
        images[i][:, box] = value
    return images, labels


def evaluate(model: torch.nn.Module, data: ShapesDataset, batch: int = 500) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``data``."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(data), batch):
            logits = model(data.images[s:s + batch])
            correct += int((logits.argmax(1) == data.labels[s:s + batch]).sum())
    return correct / len(data)


def train_default(out: Path = WEIGHTS, epochs: int = 12, n_train: int = 20000, batch: int = 128,
                  log: Callable[[str], None] = print, seed: int = 0) -> float:
    """Train ShapesNet from scratch, save its weights to ``out``, return held-out accuracy.

    ``seed`` sets the initialization and the data order (0 gives the shipped weights); another seed gives an
    independently trained copy, e.g. to judge whether synthesized images transfer between models.
    """
    start = time.time()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    log(f"rendering {n_train} training images ...")
    train = ShapesDataset(n_train, seed=TRAIN_SEED)
    held_out = ShapesDataset(1000, seed=HELD_OUT_SEED)
    model = ShapesNet().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=5e-4)
    steps = epochs * (n_train // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=steps, pct_start=0.2)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n_train, generator=gen)
        total = 0.0
        for s in range(0, n_train - batch + 1, batch):
            idx = order[s:s + batch]
            images = train.images[idx].clone()
            masks, dmasks = train.masks[idx].clone(), train.distractor_masks[idx].clone()
            objects = train.objects[idx].clone()
            flip = torch.rand(batch, generator=gen) < 0.5
            images[flip] = images[flip].flip(-1)
            masks[flip], dmasks[flip] = masks[flip].flip(-1), dmasks[flip].flip(-1)
            objects[flip, 1] = 63 - objects[flip, 1]
            images, labels = _cutout(images, train.labels[idx], masks, dmasks, objects, gen)
            labels = torch.where(labels < 0, train.distractors[idx], labels)
            logits = model(images.contiguous(memory_format=torch.channels_last))
            loss = F.cross_entropy(logits, labels, label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        acc = evaluate(model, held_out)
        log(f"epoch {epoch + 1}/{epochs}: loss {total / (n_train // batch):.3f}, "
            f"held-out accuracy {acc:.3%} ({time.time() - start:.0f} s)")
    model = model.to(memory_format=torch.contiguous_format)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save(state, out)
    log(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return acc
