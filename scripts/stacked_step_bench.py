"""Would training several seeds in one model be faster on this machine? (issue: speed, batched runs)

    python scripts/stacked_step_bench.py [--arch resnet8 --width 0.5 --batch 128 --runs 3 --threads 2]

Times one SGD step of ``--runs`` students on their own batches (CE loss, fp32, eager), three ways, in
interleaved rounds (the median counts; this machine is noisy):

1. ``sequential``: one step per student, one after the other (what separate runs do);
2. ``vmap``: the students' weights stacked (torch.func.stack_module_state) and one vmapped step;
3. ``one_batch``: a single student on the concatenated batches, the upper bound of any stacking scheme
   (the same images through one set of weights).

Prints images/second per way and the ratios to ``sequential``. Nothing here is used by the pipeline.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from kdlab.core import models


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet8")
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3, help="students trained together")
    ap.add_argument("--size", type=int, default=28, help="image side (Fashion-MNIST: 28)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    students = [models.build(a.arch, 1, 10, a.width).train() for _ in range(a.runs)]
    x = torch.randn(a.runs, a.batch, 1, a.size, a.size)
    y = torch.randint(0, 10, (a.runs, a.batch))

    opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in students]

    def sequential():
        for m, opt, xi, yi in zip(students, opts, x, y):
            loss = F.cross_entropy(m(xi), yi)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    params, buffers = stack_module_state(copy.deepcopy(students))
    params = {k: v.detach() for k, v in params.items()}
    skeleton = copy.deepcopy(students[0]).to("meta")

    def loss_of(p, b, xi, yi):
        return F.cross_entropy(functional_call(skeleton, (p, b), (xi,)), yi)

    stacked_grad = vmap(grad_and_value(loss_of))

    def stacked():
        grads, _ = stacked_grad(params, buffers, x, y)
        with torch.no_grad():
            for k, g in grads.items():
                params[k].sub_(0.01 * g)

    one = copy.deepcopy(students[0])
    one_opt = torch.optim.SGD(one.parameters(), lr=0.01, momentum=0.9)
    xb, yb = x.reshape(-1, 1, a.size, a.size), y.reshape(-1)

    def one_batch():
        loss = F.cross_entropy(one(xb), yb)
        one_opt.zero_grad(set_to_none=True)
        loss.backward()
        one_opt.step()

    ways = {"sequential": sequential, "vmap": stacked, "one_batch": one_batch}
    rates: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(a.rounds):
        for name, step in ways.items():
            for _ in range(2):  # warm-up
                step()
            start = time.perf_counter()
            for _ in range(a.steps):
                step()
            rates[name].append(a.steps * a.runs * a.batch / (time.perf_counter() - start))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{a.runs} x {a.arch} x{a.width}, batch {a.batch} each, {a.size}x{a.size}, fp32 eager, {a.threads} threads, "
          f"median of {a.rounds} interleaved rounds of {a.steps} steps")
    for name, r in med.items():
        print(f"{name:>10}: {r:7.0f} images/s  ({r / med['sequential']:.2f}x sequential)")


if __name__ == "__main__":
    main()
