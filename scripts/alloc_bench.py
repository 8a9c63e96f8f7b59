"""Allocator settings vs CPU training speed, interleaved to average out machine noise.

    python scripts/alloc_bench.py --rounds 3 --steps 30

Each measurement is a fresh process training the same model on the same random batches for --steps
SGD steps, counting the minor page faults of the timed steps. Three settings: glibc defaults (KDLAB_MALLOPT=0), kdlab's mallopt thresholds (the default),
and the same thresholds through MALLOC_*_ environment variables. Prints img/s per round, the median
per setting, and a hash of the final weights (equal hashes = bit-identical training).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {
    "glibc default": {"KDLAB_MALLOPT": "0"},
    "kdlab mallopt": {},
    "MALLOC_* env": {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "134217728"},
}


def child(arch: str, width: float, batch: int, steps: int, size: int) -> None:
    import torch

    from kdlab.core import models
    from kdlab.infra import runtime

    runtime.tune_allocator()
    torch.manual_seed(0)
    model = models.build(arch, 1, 10, width)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(batch, 1, size, size, generator=g), torch.randint(0, 10, (batch,), generator=g))
            for _ in range(4)]
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        x, y = data[i % 4]
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    rate = batch * steps / (time.perf_counter() - start)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()[:12]
    print(f"{rate:.1f} {digest} {faults:.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.arch, a.width, a.batch, a.steps, a.size)
    src = str(Path(__file__).resolve().parents[1] / "src")
    rates: dict[str, list[float]] = {k: [] for k in SETTINGS}
    digests: dict[str, set[str]] = {k: set() for k in SETTINGS}
    faults: dict[str, list[float]] = {k: [] for k in SETTINGS}
    for r in range(a.rounds):
        for name, extra in SETTINGS.items():
            env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "KDLAB_MALLOPT"}
            env.update(extra, PYTHONPATH=src)
            out = subprocess.run([sys.executable, __file__, "--child", "--arch", a.arch, "--width", str(a.width),
                                  "--batch", str(a.batch), "--steps", str(a.steps), "--size", str(a.size)],
                                 env=env, capture_output=True, text=True, check=True).stdout.split()
            rates[name].append(float(out[0]))
            digests[name].add(out[1])
            faults[name].append(float(out[2]))
            print(f"round {r + 1} {name:14s} {float(out[0]):8.1f} img/s  {out[2]:>6s} page faults/step  "
                  f"weights {out[1]}", flush=True)
    base = statistics.median(rates["glibc default"])
    print(f"\n{a.arch} width {a.width}, batch {a.batch}, {a.steps} steps, {a.rounds} interleaved rounds")
    print("| setting | median img/s | vs glibc default | minor page faults per step | weights |")
    print("|---|---|---|---|---|")
    for name in SETTINGS:
        med = statistics.median(rates[name])
        print(f"| {name} | {med:.0f} | {med / base:.2f}x | {statistics.median(faults[name]):.0f} "
              f"| {', '.join(sorted(digests[name]))} |")


if __name__ == "__main__":
    main()
