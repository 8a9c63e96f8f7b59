"""Augmentation as a pure function of (image, view id).

A view is a shift of the zero-padded image by (dy, dx) in [-pad, pad]^2, optionally followed by a
horizontal flip. With S = 2 * pad + 1 the views are numbered

    view_id = flip * S * S + (dy + pad) * S + (dx + pad)

so there are S * S (no flip) or 2 * S * S views. The teacher's logits are cached per view id, and the
student draws view ids, so both see exactly the same pixels (shared/DESIGN.md).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where used, so params validation stays fast
    import torch


def num_views(pad: int, flip: bool) -> int:
    side = 2 * pad + 1
    return side * side * (2 if flip else 1)


def identity_view(pad: int) -> int:
    """The view id of the unshifted, unflipped image."""
    return pad * (2 * pad + 1) + pad


def decode(view_ids: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """view ids -> (dy, dx, flip) tensors."""
    side = 2 * pad + 1
    view_ids = view_ids.long()
    flip = view_ids // (side * side)
    rest = view_ids % (side * side)
    return rest // side - pad, rest % side - pad, flip.bool()


def render_one(image: torch.Tensor, view_id: int, pad: int) -> torch.Tensor:
    """Reference implementation for one (C, H, W) image: pad, crop, flip. Used by the tests."""
    import torch
    import torch.nn.functional as F

    dy, dx, flip = (int(t) for t in decode(torch.tensor([view_id]), pad))
    _, h, w = image.shape
    padded = F.pad(image, (pad, pad, pad, pad))
    crop = padded[:, pad + dy: pad + dy + h, pad + dx: pad + dx + w]
    return crop.flip(-1) if flip else crop


def render(images: torch.Tensor, view_ids: torch.Tensor, pad: int) -> torch.Tensor:
    """Batched views: (B, C, H, W) images and (B,) view ids -> (B, C, H, W), same dtype and device.

    One gather does the shift and the flip for the whole batch (no per-image Python).
    """
    import torch
    import torch.nn.functional as F

    if pad == 0 and not bool((view_ids > 0).any()):
        return images
    b, _, h, w = images.shape
    dev = images.device
    dy, dx, flip = decode(view_ids.to(dev), pad)
    padded = F.pad(images, (pad, pad, pad, pad))
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = (dy + pad)[:, None] + ar_h                          # (B, H)
    cols_plain = ar_w.expand(b, w)
    cols = torch.where(flip[:, None], (w - 1) - cols_plain, cols_plain) + (dx + pad)[:, None]  # (B, W)
    idx_b = torch.arange(b, device=dev)[:, None, None]
    out = padded[idx_b, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C): advanced dims first
    return out.permute(0, 3, 1, 2).contiguous()


def view_table(n_images: int, pad: int, flip: bool, views, seed: int) -> torch.Tensor:
    """The view ids each training image may be drawn with: (N, K) int16.

    ``views == "all"``: every view (K = num_views). An integer K: K distinct views per image, drawn
    from a generator seeded by ``seed``. A pure function of its arguments, so a student that does not
    read the teacher's cache (the raw baseline) still draws from the same views as the KD students.
    """
    import torch

    total = num_views(pad, flip)
    if views == "all" or views == total:
        return torch.arange(total, dtype=torch.int16).expand(n_images, total).contiguous()
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(n_images, total, generator=g).argsort(dim=1)
    return order[:, :views].to(torch.int16).contiguous()
