"""What one dataset scan costs beyond the forward passes it needs, and whether its memory grows with the data.

    .venv/bin/python bench/scan.py          # prints markdown (also saved to bench/scan.md)

Time: ``cl.scan`` with the default layers (every spatial layer), and with ``statistics=True``, as a ratio to
the raw no-grad forward passes of the same model over the same data in the same batches (read the same way),
for the default model on its 500 held-out images and for a randomly initialised resnet18 at 128×128 on random
images. Medians of rounds in which the contenders run in turn, on one thread (the machine is shared; one
thread keeps the ratio free of thread hand-offs). Target: ratio ≤ 1.15.

Memory: each run is a fresh subprocess over a dataset that makes its images on the fly (so the data itself
takes no memory). After the model is loaded and one batch has run, the kernel's peak-RSS mark is reset
(``/proc/self/clear_refs``); the peak RSS (``VmHWM``) after the pass minus the RSS before it is the pass's
memory, for N and 4N images. A scan's should not grow with N (it keeps k × units candidates, no activations).
The subprocesses run with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed activations leave the RSS (without it,
glibc keeps freed heap and the numbers wander by tens of MB from run to run).

Where the time goes: cProfile of the default-model scan, the largest torch operations.
"""

from __future__ import annotations

import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

import cnnlens as cl

BATCH = 64


class Generated(torch.utils.data.Dataset):
    """``n`` random images made on the fly from their index (the data takes no memory)."""

    def __init__(self, n: int, side: int):
        self.n, self.side = n, side

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.rand(3, self.side, self.side, generator=torch.Generator().manual_seed(i))


def resnet18(side: int = 128) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    cl.configure(model, input_size=side)
    return model


def case(name: str, n: int | None = None) -> tuple[torch.nn.Module, object]:
    """(model, data): "default" (the default model; its held-out images, or ``n`` generated ones) or "resnet18"."""
    if name == "default":
        model, data = cl.zoo.shapes()
        return model, (data if n is None else Generated(n, 64))
    return resnet18(), Generated(n or 256, 128)


def raw_passes(model: torch.nn.Module, data: object, part: int = BATCH) -> None:
    """The forwards the scan needs, run directly on the model: same batches, read by a DataLoader, each
    batch's images ``part`` at a time (the scan's parts: :func:`scan_part`)."""
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(data, batch_size=BATCH):
            for images in (batch[0] if isinstance(batch, (list, tuple)) else batch).split(part):
                model(images)


def scan_part(model: torch.nn.Module, side: int) -> int:
    """Images per forward of a scan of batches of 64 at ``side`` px on the CPU (``Session.batch_in_heap``)."""
    from cnnlens.core.session import look

    with look(model) as s:
        return len(s.heap_parts(torch.empty(BATCH, 3, side, side))[0])


def interleaved_medians(fns: list[Callable[[], object]], rounds: int) -> list[float]:
    for fn in fns:  # warm-up
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


# --- memory, one subprocess per run ---------------------------------------------------------------------------------


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory(name: str, n: int, mode: str) -> dict:
    """Run one pass (``mode``: raw, scan, stats) in this process; its peak RSS increase in MB."""
    torch.set_num_threads(1)
    model, data = case(name, n)
    raw_passes(model, torch.utils.data.Subset(data, range(BATCH)))  # allocator and kernels warm
    cl.scan(model, torch.utils.data.Subset(data, range(BATCH)), statistics=mode == "stats")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark to the current RSS
    before = _rss_kb("VmRSS")
    if mode == "raw":
        raw_passes(model, data)
    else:
        cl.scan(model, data, statistics=mode == "stats")
    return {"peak_increase_mb": (_rss_kb("VmHWM") - before) / 1024}


def memory_in_subprocess(name: str, n: int, mode: str) -> float:
    # large blocks are mmapped and returned on free, so RSS follows live memory, not glibc's retained heap
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, __file__, "--memory", name, str(n), mode], capture_output=True, text=True,
                         check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_increase_mb"]


# --- report ---------------------------------------------------------------------------------------------------------


def profile_default() -> list[tuple[str, float, int]]:
    """(operation, seconds, calls) of the largest entries in a profile of the default-model scan."""
    model, data = case("default")
    cl.scan(model, data)
    profiler = cProfile.Profile()
    profiler.enable()
    cl.scan(model, data)
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    rows = [(f"{func[2]} ({Path(func[0]).name}:{func[1]})" if func[0] != "~" else func[2], tt, nc)
            for func, (_cc, nc, tt, _ct, _callers) in stats.items()]
    return sorted(rows, key=lambda r: -r[1])[:8]


def reductions() -> list[tuple[str, float]]:
    """Milliseconds of the per-layer reductions a scan can run, on one 64×16×64×64 activation (a batch of the
    default model's first stage): what the scan runs, what it ran before, and a cheaper histogram."""
    from cnnlens.dataset.scan_lists import histogram as _histogram

    flat = torch.randn(BATCH, 16, 64 * 64, generator=torch.Generator().manual_seed(0))

    def bit_histogram():  # log-scale bins from the float's bits: sign, exponent, 5 mantissa bits (~3% wide)
        bins = (flat.view(torch.int32) >> 18) & 16383
        offsets = torch.arange(16).view(1, 16, 1) * 16384
        return torch.bincount((bins + offsets).flatten(), minlength=16 * 16384)

    candidates = [("values and positions of every pair: `flat.max(2)` (the first scan)", lambda: flat.max(2)),
                  ("values only: `flat.amax(2)` (the scan now; positions only for entrants)",
                   lambda: flat.amax(2)),
                  ("positions only: `flat.argmax(2)`", lambda: flat.argmax(2)),
                  ("statistics histogram: `_histogram(flat)` (the scan now: float32 asinh bins)",
                   lambda: _histogram(flat)),
                  ("proposal: a histogram of the float's bits (no transcendental)", bit_histogram)]
    times = interleaved_medians([fn for _, fn in candidates], 7)
    return [(name, t * 1000) for (name, _), t in zip(candidates, times)]


def main() -> None:
    torch.set_num_threads(1)
    lines = ["# Dataset scan: cost beyond the raw forwards, memory as the data grows", "",
             "Measured by `bench/scan.py` (see its docstring for the method); one thread, batch 64.", "",
             "| model, data | raw forwards (s) | scan ÷ raw | scan with statistics ÷ raw | scan's forwards | "
             "raw forwards in the scan's parts (s) | scan ÷ raw in its parts | layers scanned |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, n, label, rounds in (("default", None, "default model, its 500 images (64×64)", 5),
                                   ("resnet18", 256, "resnet18 (random weights), 256 random images at 128×128", 5),
                                   ("resnet18", 1024, "resnet18 (random weights), 1,024 random images at 128×128",
                                    1)):
        model, data = case(name, n)
        part = scan_part(model, 64 if name == "default" else 128)
        raw, in_parts, scanned, with_stats = interleaved_medians(
            [lambda m=model, d=data: raw_passes(m, d), lambda m=model, d=data, p=part: raw_passes(m, d, p),
             lambda m=model, d=data: cl.scan(m, d),
             lambda m=model, d=data: cl.scan(m, d, statistics=True)], rounds)
        layers = len(cl.scan(model, torch.utils.data.Subset(data, range(2))).layers)
        lines.append(f"| {label} | {raw:.2f} | {scanned / raw:.2f} | {with_stats / raw:.2f} | {part} images | "
                     f"{in_parts:.2f} | {scanned / in_parts:.2f} | {layers} |")
    lines += ["", "Target: scan ÷ raw ≤ 1.15, against the plain loop over batches of 64. On the CPU the scan runs each "
              "batch through the model in parts whose largest activation stays within 8 MiB "
              "(`STREAM_BLOCK`; resnet18 at 128 px: 8 images, the default model 32), as every pass over a dataset "
              "does: glibc returns a freed heap top beyond its trim threshold to the system, and a part whose "
              "live activations pass it is faulted in afresh on every forward (the plain loop at 64 images runs "
              "either way from one process to the next: the default model's raw column is 0.36 or 0.49 s). "
              "The last ratio is the bookkeeping's own cost, against raw "
              "forwards in those same parts. The first batches cost most: a unit's list is still filling, so about "
              "2k of the first B images of every unit enter (and need their positions), k of the next B, and so "
              "on; longer scans approach the steady-state cost.", "",
              "## Peak memory (RSS increase during the pass, MB; fresh process per run, images made on the fly)", "",
              "| model | pass | N | 4N | N images | 4N images |", "|---|---|---:|---:|---:|---:|"]
    for name, n in (("default", 512), ("resnet18", 128)):
        for mode in ("raw", "scan", "stats"):
            small, large = memory_in_subprocess(name, n, mode), memory_in_subprocess(name, 4 * n, mode)
            label = {"raw": "raw forwards", "scan": "scan", "stats": "scan with statistics"}[mode]
            lines.append(f"| {name} | {label} | {n} | {4 * n} | {small:.0f} | {large:.0f} |")
    lines += ["", "## Where the default-model scan's time goes (cProfile, largest self times)", "",
              "| operation | seconds | calls |", "|---|---:|---:|"]
    lines += [f"| `{op}` | {seconds:.3f} | {calls} |" for op, seconds, calls in profile_default()]
    lines += ["", "## The per-layer reductions on one activation (64 images × 16 units × 64×64)", "",
              "| reduction | ms |", "|---|---:|"]
    lines += [f"| {name} | {ms:.2f} |" for name, ms in reductions()]
    text = "\n".join(lines) + "\n"
    print(text)
    (Path(__file__).parent / "scan.md").write_text(text)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--memory":
        print(json.dumps(measure_memory(sys.argv[2], int(sys.argv[3]), sys.argv[4])))
    else:
        main()
