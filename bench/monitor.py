"""Training monitor: the time ``monitor.step()`` adds to a training loop, as ratios measured in one run.

    .venv/bin/python bench/monitor.py     # prints a markdown table (also saved to bench/monitor.md)

The default architecture (ShapesNet, 64 px) trains with SGD + momentum at batch 64 in train mode. One
training step (forward, backward, optimizer step) is the unit. For 4 and 8 units (spread over the four
stages) and probe sets of 64 and 256 images, the loop alternates a training step and ``monitor.step()``
(every=1, so every call records); the median time of the ``step()`` calls is reported in ms and as a ratio
to the median training step of the same loop (each case runs 3 rounds and the round with the fastest
training steps counts: the machine is shared), with the timeline view attached or not. Because the weights
move between calls, each record runs on a snapshot of the weights (the engine's rule when someone trains),
which is part of the cost. The raw floor is what any monitor pays: a no-grad forward over the probe set
and one forward + backward of as many images as units, on a plain model. With ``every=n`` the added time
per training step is the ratio ÷ n.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import cnnlens as cl

STEPS = 8  # timed training steps per round (after 2 warm-up steps)
ROUNDS = 3  # rounds per case; the least disturbed one counts (the machine is shared: spikes are noise)
UNITS = {4: ["stage1:3", "stage2:5", "stage3:12", "stage4:7"],
         8: ["stage1:3", "stage1:9", "stage2:5", "stage2:20", "stage3:12", "stage3:40", "stage4:7", "stage4:90"]}


def case(train: cl.zoo.ShapesDataset, probe: torch.Tensor, units: list[str] | None, view: bool
         ) -> tuple[float, float]:
    """(median training step, median monitor.step()) in ms for one monitored run (units None: no monitor)."""
    torch.manual_seed(0)
    model = cl.zoo.ShapesNet()
    cl.configure(model, input_size=64, classes=cl.zoo.CLASSES)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    monitor = cl.monitor(model, units, probe) if units else None
    shown = monitor.view() if monitor is not None and view else None
    model.train()
    train_ms, monitor_ms = [], []
    for i in range(STEPS + 2):
        idx = torch.randint(len(train), (64,))
        start = time.perf_counter()
        loss = F.cross_entropy(model(train.images[idx]), train.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        middle = time.perf_counter()
        if monitor is not None:
            monitor.step()
        end = time.perf_counter()
        if i >= 2:
            train_ms.append((middle - start) * 1000)
            monitor_ms.append((end - middle) * 1000)
    if shown is not None:
        shown.close()
    return statistics.median(train_ms), statistics.median(monitor_ms)


def floor_ms(probe: torch.Tensor, n_units: int) -> float:
    """The least any monitor pays: a no-grad forward over the probe set (batches of 64) and one forward +
    input-gradient backward of ``n_units`` images, on a plain eval-mode model (fastest of 5)."""
    model = cl.zoo.ShapesNet().eval()
    times = []
    for _ in range(6):
        start = time.perf_counter()
        with torch.no_grad():
            for s in range(0, len(probe), 64):
                model(probe[s:s + 64])
        x = probe[:n_units].clone().requires_grad_(True)
        torch.autograd.grad(model(x).sum(), x)
        times.append((time.perf_counter() - start) * 1000)
    return min(times[1:])


def main() -> None:
    torch.set_num_threads(2)
    train = cl.zoo.ShapesDataset(512, seed=7)
    _, held_out = cl.zoo.shapes(256)
    base = min(case(train, held_out.images[:64], None, False)[0] for _ in range(ROUNDS))
    lines = [f"torch {torch.__version__}, 2 threads, CPU; ShapesNet at 64 px, SGD + momentum, batch 64, train mode; "
             f"medians of {STEPS} calls in the least disturbed of {ROUNDS} rounds.", "",
             f"one training step (forward + backward + optimizer step): **{base:.1f} ms**", "",
             "| units | probe images | view | training step (ms) | monitor.step() (ms) | ÷ training step "
             "| raw floor (ms) | ÷ floor |", "|---:|---:|:---:|---:|---:|---:|---:|---:|"]
    for n_units in (4, 8):
        for n_probe in (64, 256):
            for view in (False, True):
                probe = held_out.images[:n_probe]
                rounds = [case(train, probe, UNITS[n_units], view) for _ in range(ROUNDS)]
                train_ms, step_ms = min(rounds)  # the least disturbed round: both times from the same loop
                floor = floor_ms(probe, n_units)
                lines.append(f"| {n_units} | {n_probe} | {'yes' if view else 'no'} | {train_ms:.1f} | "
                             f"{step_ms:.1f} | {step_ms / train_ms:.2f} | {floor:.1f} | {step_ms / floor:.2f} |")
                print(lines[-1], flush=True)
    lines += ["", "Recording every n-th call (`every=n`) divides the added time per training step by n."]
    text = "\n".join(lines) + "\n"
    (Path(__file__).parent / "monitor.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
