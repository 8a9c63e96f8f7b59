"""Tensor-resident batches: the whole split lives on the device as uint8; each epoch draws a
permutation and one view id per image from a generator seeded by (seed, epoch), renders the views in
batches (:func:`kdlab.core.views.render`) and normalises. No DataLoader workers, no PIL.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from kdlab.core import views


@dataclass
class Batch:
    images: torch.Tensor                   # float, normalised, (B, C, H, W)
    labels: torch.Tensor                   # int64 (B,)
    view_ids: Optional[torch.Tensor] = None        # int64 (B,); None for the identity view
    teacher_logits: Optional[torch.Tensor] = None  # float (B, classes), the cached logits of these views
    index: Optional[torch.Tensor] = None   # positions in the split


class Normalize:
    def __init__(self, mean, std, device, channels_last: bool = False):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images_uint8: torch.Tensor) -> torch.Tensor:
        x = (images_uint8.float() / 255 - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class TrainBatches:
    """Random views of the training split. ``view_table`` (N, K) lists the view ids each image may take;
    ``teacher_logits`` (N, K, classes), when given, are the teacher's logits for those views. With
    ``world`` > 1 (data-parallel ranks), every rank draws the same global batches of ``batch_size`` and
    yields its own contiguous slice of each (rank ``rank`` of ``world``)."""

    def __init__(self, images, labels, normalize: Normalize, batch_size: int, pad: int, view_table: torch.Tensor,
                 seed: int, teacher_logits: Optional[torch.Tensor] = None, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise ValueError(f"train.batch_size ({batch_size}) must divide by the number of processes "
                             f"(train.nproc: {world}): every rank takes an equal slice of each batch")
        if 0 < len(labels) % batch_size < world:
            raise ValueError(f"the last batch of an epoch ({len(labels)} images % train.batch_size {batch_size} = "
                             f"{len(labels) % batch_size}) is smaller than train.nproc ({world}): a rank would get "
                             f"no images; change train.batch_size")
        device = normalize.mean.device
        self.images, self.labels = images.to(device), labels.to(device)
        self.view_table = view_table.to(device).long()
        self.teacher_logits = None if teacher_logits is None else teacher_logits.to(device)
        if self.teacher_logits is not None and self.teacher_logits.shape[:2] != self.view_table.shape:
            raise ValueError(f"teacher logits {tuple(self.teacher_logits.shape)} do not match the view table "
                             f"{tuple(self.view_table.shape)}")
        self.normalize, self.batch_size, self.pad, self.seed = normalize, batch_size, pad, seed
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    @property
    def local_batch_size(self) -> int:
        """The images of a full batch that this rank trains on."""
        return self.batch_size // self.world

    def global_batch(self, step: int) -> int:
        """How many images the ``step``-th (1-based) batch of an epoch has over all ranks."""
        return min(self.batch_size, len(self.labels) - (step - 1) * self.batch_size)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        n, k = self.view_table.shape
        g = epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=g).to(self.labels.device)
        slot = torch.randint(0, k, (n,), generator=g).to(self.labels.device)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            if self.world > 1:
                idx = idx.tensor_split(self.world)[self.rank]
            s = slot[idx]
            view_ids = self.view_table[idx, s]
            tl = None if self.teacher_logits is None else self.teacher_logits[idx, s].float()
            images = self.normalize(views.render(self.images[idx], view_ids, self.pad))
            yield Batch(images, self.labels[idx], view_ids, tl, idx)


def eval_batches(images, labels, normalize: Normalize, batch_size: int) -> Iterator[Batch]:
    """The identity view of every image, in order."""
    device = normalize.mean.device
    for start in range(0, len(labels), batch_size):
        x = images[start:start + batch_size].to(device)
        y = labels[start:start + batch_size].to(device)
        yield Batch(normalize(x), y)
