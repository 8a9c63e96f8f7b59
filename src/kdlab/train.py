"""One training loop for the teacher and every student.

SGD (momentum, nesterov, weight decay), one-cycle or cosine schedule stepped per batch, bf16 autocast
and channels_last on CUDA, validation every epoch. The state with the best *validation* accuracy is
kept; the test split is never looked at here.
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

from kdlab import io
from kdlab.runtime import compile_enabled
from kdlab.loader import Normalize, TrainBatches, eval_batches


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
    """bf16 autocast when ``precision`` (``train.precision``, resolved by :func:`kdlab.runtime.precision`) says so."""
    from kdlab.runtime import precision as resolve

    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=resolve(precision, device) == "bf16")


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


class NonFiniteLoss(FloatingPointError):
    pass


def _save_checkpoint(path: Path, fingerprint: str, epoch: int, model, method, opt, sched, best, history,
                     elapsed) -> None:
    io.save_torch({
        "fingerprint": fingerprint, "epoch": epoch, "model": model.state_dict(), "method": method.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(), "best": best, "history": history, "elapsed": elapsed,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }, path)


def _resume(path: Path | None, fingerprint: str, model, method, opt, sched, desc: str):
    """(next epoch, best, history, elapsed) from a checkpoint of this very run, else a fresh start."""
    fresh = (1, (-1.0, 0, None), [], 0.0)
    if path is None or not path.exists():
        return fresh
    ckpt = io.load_torch(path, f"rm {path}  # then rerun the stage to start over")
    if ckpt.get("fingerprint") != fingerprint:
        tqdm.write(f"{desc}: {path} belongs to other params or data; starting over")
        return fresh
    model.load_state_dict(ckpt["model"])
    method.load_state_dict(ckpt["method"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["torch_rng"])
    if ckpt["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
    tqdm.write(f"{desc}: resuming after epoch {ckpt['epoch']} from {path}")
    return ckpt["epoch"] + 1, ckpt["best"], ckpt["history"], ckpt["elapsed"]


def fit(model: nn.Module, method: nn.Module, batches: TrainBatches,
        val: tuple[torch.Tensor, torch.Tensor], epochs: int, lr: float, tp, desc: str,
        on_epoch: Optional[Callable[[dict], None]] = None, checkpoint: Path | None = None,
        fingerprint: str = "") -> FitResult:
    """Train ``model`` with ``method`` (a :mod:`kdlab.distill` method: ``method(model, batch) -> (logits,
    terms)``; its own parameters, e.g. FitNet's regressors, are trained too) and return the best-on-val state.

    With ``checkpoint``, the full training state is written there (atomically) after every epoch, and a
    checkpoint with the same ``fingerprint`` found at the start is resumed: an interrupted run ends with
    exactly the metrics of an uninterrupted one. ``on_epoch`` also sees the rows of resumed epochs.
    """
    device = batches.normalize.mean.device
    opt = make_optimizer([*model.parameters(), *method.parameters()], lr, tp)
    sched = make_schedule(opt, epochs * len(batches), tp)
    first, best, history, elapsed = _resume(checkpoint, fingerprint, model, method, opt, sched, desc)
    if on_epoch:
        for row in history:
            on_epoch(row)
    # a non-finite loss is caught at once on the CPU; on CUDA every 50 steps, to avoid a sync per step
    check_every = 1 if device.type == "cpu" else 50
    # the step's forward (student, teacher features, loss) runs as one compiled graph; the model itself
    # (same parameters) is evaluated and saved. Static shapes, and the epoch's short last batch runs eagerly:
    # a graph of its own would cost a second compilation for one step per epoch
    compiled = compile_enabled(tp.compile, device)
    compiled_forward = torch.compile(method, dynamic=False) if compiled else method
    first_step_seconds = None
    start = time.perf_counter() - elapsed
    for epoch in range(first, epochs + 1):
        model.train()
        method.train()
        method.begin_epoch(epoch)
        sums: dict[str, torch.Tensor] = {}
        seen = 0
        finite = torch.ones((), dtype=torch.bool, device=device)
        bar = tqdm(batches.epoch(epoch), total=len(batches), desc=f"{desc} epoch {epoch}/{epochs}",
                   leave=False, dynamic_ncols=True, mininterval=1.0)
        step_start = time.perf_counter()
        for step, batch in enumerate(bar, start=1):
            step_forward = compiled_forward if len(batch.labels) == batches.batch_size else method
            with autocast(device, tp.precision):
                _, terms = step_forward(model, batch)
            loss = sum(terms.values())
            finite &= torch.isfinite(loss.detach())
            if (step % check_every == 0 or step == len(batches)) and not bool(finite):
                values = {k: float(v) for k, v in terms.items()}
                raise NonFiniteLoss(f"{desc}: non-finite loss at epoch {epoch}, step {step} (of {len(batches)}): "
                                    f"{values}; lower the learning rate ({lr}) or check the inputs")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if first_step_seconds is None:  # with torch.compile: the compilation, measured apart
                first_step_seconds = time.perf_counter() - step_start
            n = len(batch.labels)
            seen += n
            for k, v in terms.items():  # summed on the device: no host sync inside the step loop
                sums[k] = sums.get(k, 0) + v.detach().float() * n
        terms_mean = {k: (v / seen).item() for k, v in sums.items()}
        val_logits = predict(model, *val, batches.normalize, tp.eval_batch_size, tp.precision)
        val_acc = accuracy(val_logits, val[1])
        row = {"epoch": epoch, "val_acc": val_acc, "loss": sum(terms_mean.values()),
               "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - start,
               **{f"loss/{k}": v for k, v in terms_mean.items()}}
        history.append(row)
        if val_acc > best[0]:
            best = (val_acc, epoch, copy.deepcopy(model.state_dict()))
        if checkpoint is not None:
            _save_checkpoint(checkpoint, fingerprint, epoch, model, method, opt, sched, best, history,
                             row["seconds"])
        tqdm.write(f"{desc} epoch {epoch}/{epochs}: loss {row['loss']:.4f} val_acc {val_acc:.4f} "
                   f"({row['seconds']:.0f}s)")
        if on_epoch:
            on_epoch(row)
    return FitResult(best_state=best[2], best_epoch=best[1], best_val_acc=best[0], last_val_acc=history[-1]["val_acc"],
                     last_state=copy.deepcopy(model.state_dict()), history=history,
                     train_seconds=time.perf_counter() - start, compiled=compiled,
                     first_step_seconds=first_step_seconds)
