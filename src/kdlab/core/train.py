"""One training step and one training loop, for the teacher, every student, the pruning fine-tuner and the
benchmarks.

:func:`step`: forward under autocast, the method's weighted terms summed, backward, optimizer and schedule.
:func:`fit`: SGD (momentum, nesterov, weight decay), one-cycle or cosine schedule stepped per batch, bf16
autocast and channels_last on CUDA, validation every epoch. The state with the best *validation* accuracy
is kept; the test split is never looked at here.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from tqdm import tqdm

from kdlab.core.loader import Normalize, TrainBatches, eval_batches
from kdlab.infra import distributed, io, runtime


@dataclass
class FitResult:
    best_state: dict
    best_epoch: int
    best_val_acc: float
    last_val_acc: float
    last_state: dict
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    compiled: bool = False
    #: the first step of this process (with torch.compile: mostly compilation); None when nothing ran
    first_step_seconds: float | None = None


def make_optimizer(params, lr: float, tp) -> torch.optim.Optimizer:
    # fused: one kernel for the whole update (on the CPU too) instead of a loop over small tensors
    return torch.optim.SGD(params, lr=lr, momentum=tp.momentum, nesterov=tp.nesterov and tp.momentum > 0,
                           weight_decay=tp.weight_decay, fused=True)


def make_schedule(opt, total_steps: int, tp) -> torch.optim.lr_scheduler.LambdaLR:
    warm = max(1, int(tp.warmup * total_steps)) if tp.warmup > 0 else 0

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total_steps - warm)
        if tp.schedule == "onecycle":
            return max(0.0, 1.0 - t)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def autocast(device: torch.device, precision: str = "auto"):
    """bf16 autocast when ``precision`` (``train.precision``, resolved by :func:`kdlab.infra.runtime.precision`) says so."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=runtime.precision(precision, device) == "bf16")


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, normalize: Normalize,
            batch_size: int, precision: str = "auto") -> torch.Tensor:
    """Logits (float32, on the CPU) for the identity view of every image."""
    model.eval()
    device = normalize.mean.device
    out = []
    for b in eval_batches(images, labels, normalize, batch_size):
        with autocast(device, precision):
            out.append(model(b.images).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == labels.cpu()).float().mean().item()


def val_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, normalize: Normalize,
                 batch_size: int, precision: str = "auto") -> float:
    """Accuracy on the identity views; under torchrun each rank predicts its shard and the counts are summed."""
    world = distributed.world()
    if world == 1:
        return accuracy(predict(model, images, labels, normalize, batch_size, precision), labels)
    r = distributed.rank()
    images, labels = images.tensor_split(world)[r], labels.tensor_split(world)[r]
    logits = predict(model, images, labels, normalize, batch_size, precision)
    counts = torch.tensor([(logits.argmax(dim=1) == labels.cpu()).sum().item(), len(labels)], dtype=torch.float64)
    correct, total = distributed.all_reduce_sum(counts.to(normalize.mean.device)).tolist()
    return correct / total


class NonFiniteLoss(FloatingPointError):
    pass


class WeightAverage:
    """An exponential moving average of a model's whole state (weights and batch-norm statistics; counters are
    copied), updated after every step by ``decay`` (0.99: about the last 100 steps). ``model``: the average."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False)
        pairs = list(zip(self.model.state_dict().values(), model.state_dict().values()))
        self._floats = ([a for a, _ in pairs if a.is_floating_point()], [b for a, b in pairs if a.is_floating_point()])
        self._counts = [(a, b) for a, b in pairs if not a.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self._floats[0], self._floats[1], 1 - self.decay)
        for a, b in self._counts:
            a.copy_(b)


def _save_checkpoint(path: Path, fingerprint: str, epoch: int, model, method, opt, sched, best, history,
                     elapsed, average: WeightAverage | None = None) -> None:
    io.save_torch({**({"average": average.model.state_dict()} if average else {}),
        "fingerprint": fingerprint, "epoch": epoch, "model": model.state_dict(), "method": method.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(), "best": best, "history": history, "elapsed": elapsed,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }, path)


def _resume(path: Path | None, fingerprint: str, model, method, opt, sched, desc: str,
            average: WeightAverage | None = None):
    """(next epoch, best, history, elapsed) from a checkpoint of this very run, else a fresh start."""
    fresh = (1, (-1.0, 0, None), [], 0.0)
    if path is None or not path.exists():
        return fresh
    ckpt = io.load_torch(path, f"rm {path}  # then rerun the stage to start over")
    if ckpt.get("fingerprint") != fingerprint:
        tqdm.write(f"{desc}: {path} belongs to other params, data or code; starting over")
        return fresh
    model.load_state_dict(ckpt["model"])
    method.load_state_dict(ckpt["method"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    if average is not None:
        average.model.load_state_dict(ckpt["average"])
    torch.set_rng_state(ckpt["torch_rng"])
    if ckpt["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
    tqdm.write(f"{desc}: resuming after epoch {ckpt['epoch']} from {path}")
    return ckpt["epoch"] + 1, ckpt["best"], ckpt["history"], ckpt["elapsed"]


def standard_strides(images: torch.Tensor) -> torch.Tensor:
    """``images`` with row-major strides. A 1-channel batch from :func:`kdlab.core.views.render` has the strides
    of channels_last too (B, 1, H, W with strides HW, 1, W, 1), and oneDNN's fp32 convolution backward in
    torch 2.14.1 corrupts the heap on such batches of some sizes (25, 27, 29 seen: a segfault or SIGFPE).
    bf16 is unaffected, so only fp32 steps get the copy, and bf16 results stay as they were."""
    if images.dim() != 4 or images.stride(1) != 1 or images.shape[1] != 1:
        return images
    return images.clone(memory_format=torch.contiguous_format)


def safe_strides(batch, device: torch.device, precision: str):
    """``batch`` with :func:`standard_strides` images where the step runs fp32 on the CPU (``precision``
    resolved); :func:`step` passes every batch through here."""
    if device.type == "cpu" and precision == "fp32":
        batch.images = standard_strides(batch.images)
    return batch


def step(forward: Callable, batch, opt: torch.optim.Optimizer, sched=None, *, device: torch.device,
         precision: str, scale: float = 1.0, check: Optional[Callable[[torch.Tensor, dict], None]] = None) -> dict:
    """One training step, the only one: every training loop (:func:`fit`, the bench, the pruning fine-tuner,
    scripts/gpu_bench.py) calls it. ``forward(batch) -> (logits, terms)`` (a method bound to its student,
    possibly compiled) runs under autocast for ``precision`` ("bf16" or "fp32", resolved); the summed terms,
    times ``scale`` (an uneven last batch under DDP), are back-propagated and the optimizer (and the schedule)
    stepped. ``check(loss, terms)`` runs before the backward pass (to stop on a non-finite loss). Returns the
    terms (tensors: no host sync)."""
    batch = safe_strides(batch, device, precision)
    with autocast(device, precision):
        _, terms = forward(batch)
    loss = sum(terms.values())
    if scale != 1.0:
        loss = loss * scale
    if check is not None:
        check(loss, terms)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if sched is not None:
        sched.step()
    return terms


def _all_finite(finite: torch.Tensor, world: int) -> bool:
    """Whether every rank's losses were finite (so that all ranks stop together)."""
    if world == 1:
        return bool(finite)
    return distributed.all_reduce_sum((~finite).float()).item() == 0


def fit(model: nn.Module, method: nn.Module, batches: TrainBatches,
        val: tuple[torch.Tensor, torch.Tensor], epochs: int, lr: float, tp, desc: str,
        on_epoch: Optional[Callable[[dict], None]] = None, checkpoint: Path | None = None,
        fingerprint: str = "", on_steps: Optional[Callable[[int, list[float]], None]] = None,
        on_epoch_start: Optional[Callable[[int], None]] = None) -> FitResult:
    """Train ``model`` with ``method`` (a :mod:`kdlab.distill` method: ``method(model, batch) -> (logits,
    terms)``; its own parameters, e.g. FitNet's regressors, are trained too) and return the best-on-val state.

    With ``checkpoint``, the full training state is written there (atomically) after every epoch, and a
    checkpoint with the same ``fingerprint`` found at the start is resumed: an interrupted run ends with
    exactly the metrics of an uninterrupted one. ``on_epoch`` also sees the rows of resumed epochs.
    ``on_steps(epoch, losses)``: each step's training loss of an epoch trained here, after that epoch (read
    back once per epoch, so the step loop never waits for the device). ``on_epoch_start(epoch)``: before each
    epoch trained here (the first one after a resume included), when the model holds the previous epoch's end.
    """
    device = batches.normalize.mean.device
    opt = make_optimizer([*model.parameters(), *method.parameters()], lr, tp)
    sched = make_schedule(opt, epochs * len(batches), tp)
    # train.ema > 0: the average of the weights is what is validated, kept and returned, the model what trains
    average = WeightAverage(model, tp.ema) if tp.ema else None
    evaluated = average.model if average else model
    first, best, history, elapsed = _resume(checkpoint, fingerprint, model, method, opt, sched, desc, average)
    if on_epoch:
        for row in history:
            on_epoch(row)
    # a non-finite loss is caught at once on the CPU; on CUDA every 50 steps, to avoid a sync per step
    check_every = 1 if device.type == "cpu" else 50
    # the step's forward (student, teacher features, loss) runs as one compiled graph; the model itself
    # (same parameters) is evaluated and saved. Static shapes, and the epoch's short last batch runs eagerly:
    # a graph of its own would cost a second compilation for one step per epoch
    precision = runtime.precision(tp.precision, device)
    compiled = runtime.compile_enabled(tp.compile, device, precision)
    world, main = distributed.world(), distributed.is_main()
    if world > 1:  # DistributedDataParallel over (model, method): gradients all-reduced in backward
        distributed.sync_batchnorm(model, method)
        step_module = distributed.data_parallel(model, method, device)
        compiled_step = torch.compile(step_module, dynamic=False) if compiled else step_module
        full_step, short_step = compiled_step, step_module
    else:
        compiled_forward = torch.compile(method, dynamic=False) if compiled else method

        def full_step(b):
            return compiled_forward(model, b)

        def short_step(b):
            return method(model, b)
    first_step_seconds = None
    start = time.perf_counter() - elapsed
    for epoch in range(first, epochs + 1):
        model.train()
        method.train()
        method.begin_epoch(epoch)
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        sums: dict[str, torch.Tensor] = {}
        step_losses: list[torch.Tensor] = []
        seen = 0
        finite = torch.ones((), dtype=torch.bool, device=device)
        bar = tqdm(batches.epoch(epoch), total=len(batches), desc=f"{desc} epoch {epoch}/{epochs}",
                   leave=False, dynamic_ncols=True, mininterval=1.0, disable=not main)
        step_start = time.perf_counter()
        for i, batch in enumerate(bar, start=1):
            n = len(batch.labels)
            method.begin_step(epoch - 1 + i / len(batches))
            # an uneven last batch under DDP: each rank's mean weighs by its share, so the all-reduced gradient
            # is the global batch's mean
            scale = n * world / batches.global_batch(i) if world > 1 else 1.0

            def check(loss, terms, i=i):
                nonlocal finite
                finite &= torch.isfinite(loss.detach())
                if (i % check_every == 0 or i == len(batches)) and not _all_finite(finite, world):
                    values = {k: float(v) for k, v in terms.items()}
                    raise NonFiniteLoss(f"{desc}: non-finite loss at epoch {epoch}, step {i} (of {len(batches)}): "
                                        f"{values}; lower the learning rate ({lr}) or check the inputs")

            terms = step(full_step if n == batches.local_batch_size else short_step, batch, opt, sched,
                         device=device, precision=precision, scale=scale, check=check)
            if average is not None:
                average.update()
            if first_step_seconds is None:  # with torch.compile: the compilation, measured apart
                first_step_seconds = time.perf_counter() - step_start
                if compiled:  # and left out of the bar's rate and ETA (its clock restarts after the step)
                    bar.unpause()
            seen += n
            for k, v in terms.items():  # summed on the device: no host sync inside the step loop
                sums[k] = sums.get(k, 0) + v.detach().float() * n
            if on_steps is not None:
                step_losses.append(sum(v.detach().float() for v in terms.values()))
        if world > 1:  # the epoch's mean terms over every rank's samples
            keys = sorted(sums)
            total = distributed.all_reduce_sum(torch.stack([*(sums[k] for k in keys),
                                                            torch.tensor(float(seen), device=device)]))
            sums, seen = dict(zip(keys, total[:-1])), total[-1].item()
        terms_mean = {k: (v / seen).item() for k, v in sums.items()}
        val_acc = val_accuracy(evaluated, *val, batches.normalize, tp.eval_batch_size, tp.precision)
        row = {"epoch": epoch, "val_acc": val_acc, "loss": sum(terms_mean.values()),
               "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - start,
               **{f"loss/{k}": v for k, v in terms_mean.items()}}
        history.append(row)
        if val_acc > best[0]:
            best = (val_acc, epoch, copy.deepcopy(evaluated.state_dict()))
        if checkpoint is not None and main:
            _save_checkpoint(checkpoint, fingerprint, epoch, model, method, opt, sched, best, history,
                             row["seconds"], average)
        if main:
            tqdm.write(f"{desc} epoch {epoch}/{epochs}: loss {row['loss']:.4f} val_acc {val_acc:.4f} "
                       f"({row['seconds']:.0f}s)")
        if on_epoch:
            on_epoch(row)
        if on_steps is not None and step_losses:
            on_steps(epoch, torch.stack(step_losses).tolist())
    return FitResult(best_state=best[2], best_epoch=best[1], best_val_acc=best[0], last_val_acc=history[-1]["val_acc"],
                     last_state=copy.deepcopy(evaluated.state_dict()), history=history,
                     train_seconds=time.perf_counter() - start, compiled=compiled,
                     first_step_seconds=first_step_seconds)


def kd_finetuner(kd, batches, steps: int, lr: float, tp, device: torch.device, precision: str):
    """``between(model, pruning_step)`` for iterative pruning (:func:`kdlab.core.channels.prune_iteratively`):
    ``steps`` training steps of the KD method ``kd`` on ``batches`` (cached logits) at ``lr``, warm-up and decay
    as in training (``tp``: the train params)."""
    def between(model, pruning_step: int) -> None:
        opt = make_optimizer(model.parameters(), lr, tp)
        sched = make_schedule(opt, steps, tp)
        model.train()
        done, epoch = 0, 1000 * pruning_step  # fresh permutations, apart from training's epochs
        while done < steps:
            for batch in batches.epoch(epoch):
                step(lambda b: kd(model, b), batch, opt, sched, device=device, precision=precision)
                done += 1
                if done == steps:
                    break
            epoch += 1
        model.eval()
    return between
