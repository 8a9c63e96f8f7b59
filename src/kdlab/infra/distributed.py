"""Data-parallel training under torchrun (``train.nproc`` > 1).

The training command (``kdlab train``, every study's) starts itself under ``torchrun --standalone
--nproc_per_node=train.nproc`` (:func:`launch`); NCCL on CUDA (one GPU per process, ``LOCAL_RANK``), gloo on
the CPU. Every rank holds the whole split and the cached logits and derives the same permutation and view ids
from the shared seed; it takes its slice of every global batch (``TrainBatches(rank=, world=)``), so
``train.batch_size`` stays the global batch. The model is wrapped in PyTorch's DistributedDataParallel, and
its BatchNorm layers compute their statistics over the global batch (:class:`SyncBatchNorm`: torch's has no
CPU kernel), so N processes train the model one process would, within float tolerance. Validation is
sharded and its counts all-reduced. Rank 0 alone writes checkpoints, models, metrics and MLflow runs.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch import nn


def launch(nproc: int, argv: list[str]) -> None:
    """Replace this process by ``torchrun`` running ``kdlab <argv>`` in ``nproc`` processes (unless we are
    one of them already). Returns only when there is nothing to do."""
    if nproc <= 1 or "LOCAL_RANK" in os.environ:
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "kdlab", *argv]
    print(f"kdlab: train.nproc={nproc}: running under torchrun --standalone --nproc_per_node={nproc} "
          f"({sys.executable} -m torch.distributed.run)", file=sys.stderr, flush=True)
    os.execv(sys.executable, cmd)


def init(dev: torch.device) -> torch.device:
    """Join torchrun's process group (when WORLD_SIZE > 1); ``dev`` (``train.device`` resolved), or this rank's
    own GPU on CUDA."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return dev
    cuda = dev.type == "cuda"
    if cuda:  # one GPU per process
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", device_id=dev if cuda else None)
    return dev


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum over ranks (a no-op alone); not differentiable, for metrics."""
    if world() > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


def finish() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class SyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics cover the global batch. Each rank's count, per-channel mean and
    centred sum of squares are all-gathered (differentiably: the backward sends every rank the gradient of
    its own statistics) and combined by Chan's formula, which is as accurate as one process's two-pass
    variance (sums of squares minus the squared mean are not: they lose the variance of channels whose mean
    is large). Works on any process group (gloo included) and inside torch.compile (functional
    collectives). Eval mode is plain BatchNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world() == 1:
            return super().forward(x)
        from torch.distributed import _functional_collectives as fc

        dims = [0, *range(2, x.dim())]
        xf = x.float()
        c = xf.shape[1]
        shape = (1, c) + (1,) * (x.dim() - 2)
        count = xf.new_full((1,), xf.numel() // c)
        mean_r = xf.mean(dims)
        m2_r = ((xf - mean_r.view(shape)) ** 2).sum(dims)
        stats = fc.all_gather_single_autograd(torch.cat([count, mean_r, m2_r])[None], 0, dist.group.WORLD)
        counts, means, m2s = stats[:, :1], stats[:, 1:c + 1], stats[:, c + 1:]
        n = counts.sum()
        mean = (counts * means).sum(0) / n
        var = (m2s.sum(0) + (counts * (means - mean) ** 2).sum(0)) / n  # biased, as BatchNorm normalises with
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1), alpha=m)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_batchnorm(*modules: nn.Module) -> None:
    """Turn the trainable BatchNorm2d layers in ``modules`` into :class:`SyncBatchNorm` in place (the same
    objects, parameters, buffers and state_dict keys, so torch.fx extractors built on the model keep tapping
    them); frozen ones (a teacher's) are left alone."""
    for module in modules:
        for m in module.modules():
            if type(m) is nn.BatchNorm2d and any(p.requires_grad for p in m.parameters()):
                m.__class__ = SyncBatchNorm


class Step(nn.Module):
    """``method(model, batch)`` as one module, so DistributedDataParallel sees the model's and the method's
    own parameters (e.g. FitNet's regressors) and is called once per step."""

    def __init__(self, model: nn.Module, method: nn.Module):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, batch):
        return self.method(self.model, batch)


def data_parallel(model: nn.Module, method: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel over the model and the method. BatchNorm statistics are synchronised by the
    layers themselves, so DDP need not broadcast buffers."""
    import warnings

    from torch.nn.parallel import DistributedDataParallel

    # a 1x1 convolution's weight gradient comes with other strides on its size-1 dimensions than the weight:
    # DDP copies it (a few hundred numbers) and warns at every step
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DistributedDataParallel(Step(model, method), device_ids=[device.index] if device.type == "cuda" else None,
                                   broadcast_buffers=False, gradient_as_bucket_view=True)
