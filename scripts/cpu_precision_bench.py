"""CPU training-step speed: fp32 vs bf16 autocast, contiguous vs channels_last, eager vs torch.compile,
interleaved rounds.

    python scripts/cpu_precision_bench.py --rounds 3
    python scripts/cpu_precision_bench.py --rounds 2 --compile     # adds the torch.compile'd step

Throughput only (random batches, fixed model init): whether bf16 keeps the accuracy is a separate
question that needs full training runs. bf16 is fast only on CPUs with AMX or AVX512-BF16.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def step_rate(arch: str, width: float, bf16: bool, channels_last: bool, steps: int, batch: int,
              compiled: bool = False) -> float:
    import torch

    from kdlab.core import models

    torch.manual_seed(0)
    model = models.build(arch, 1, 10, width)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    forward = torch.compile(model) if compiled else model
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(forward(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile'd steps (compilation excluded)")
    ap.add_argument("--models", default="resnet20:1.0,resnet8:0.5,resnet8:1.0",
                    help="arch:width[:cl|:contiguous] list; with a format, only that memory format is measured")
    a = ap.parse_args()
    from kdlab.infra import runtime

    runtime.tune_allocator()
    steps = {"resnet20": 20, "resnet8": 60}  # about the same seconds per measurement
    specs = [m.split(":") for m in a.models.split(",")]
    formats = {"cl": (True,), "contiguous": (False,)}
    configs = [(sp[0], float(sp[1]), bf16, cl, comp) for sp in specs for bf16 in (False, True)
               for cl in (formats[sp[2]] if len(sp) > 2 else (False, True))
               for comp in ((False, True) if a.compile else (False,))]
    rates: dict[tuple, list[float]] = {c: [] for c in configs}
    for _ in range(a.rounds):
        for c in configs:
            rates[c].append(step_rate(*c[:4], steps=steps.get(c[0], 30), batch=a.batch, compiled=c[4]))
            print(c, f"{rates[c][-1]:.0f}", flush=True)
    print(f"| model | precision | memory format | step | median img/s ({a.rounds} interleaved rounds) |")
    print("|---|---|---|---|---|")
    for (arch, w, bf16, cl, comp), v in rates.items():
        print(f"| {arch} x{w} | {'bf16 autocast' if bf16 else 'fp32'} | {'channels_last' if cl else 'contiguous'} "
              f"| {'compiled' if comp else 'eager'} | {statistics.median(v):.0f} |")


if __name__ == "__main__":
    main()
