"""Relational KD (Park et al. 2019): the teacher's relations between the images of a batch, not its outputs.
Embeddings are the globally average-pooled output of each tapped layer (default the last, the input of the
classifier); the distance-wise term matches the pairwise distances (each side divided by its mean distance) and
the angle-wise term the cosines of the angles every triplet of embeddings makes, both by Huber (smooth L1) loss,
weighted ``distance`` and ``angle`` (25 and 50, the paper's). The sum, times ``beta``, is added to CE (and to KD
when ``kd``). Embedding widths may differ."""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from kdlab.distill import register
from kdlab.distill._features import FeatureMethod, FeatureOptions


@dataclass(frozen=True)
class RKDOptions(FeatureOptions):
    layers: list[str] = field(default_factory=lambda: ["layer3"])
    distance: float = 25.0
    angle: float = 50.0


def embedding(f: torch.Tensor) -> torch.Tensor:
    return f.float().mean(dim=(2, 3)) if f.dim() == 4 else f.float().flatten(1)


def distance_potential(e: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances divided by their mean over distinct pairs."""
    d = torch.cdist(e, e)
    off = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    return d / d[off].mean().clamp_min(1e-12)


def angle_potential(e: torch.Tensor) -> torch.Tensor:
    """cos of the angle at j between i and k, for every (i, j, k): <(e_i - e_j)/|.|, (e_k - e_j)/|.|>."""
    v = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), dim=2)  # v[j, i] = unit(e_i - e_j)
    return torch.bmm(v, v.transpose(1, 2))


def rkd_loss(es: torch.Tensor, et: torch.Tensor, distance: float, angle: float) -> torch.Tensor:
    return (distance * F.smooth_l1_loss(distance_potential(es), distance_potential(et))
            + angle * F.smooth_l1_loss(angle_potential(es), angle_potential(et)))


@register("rkd")
class RKD(FeatureMethod):
    term = "rkd"
    Options = RKDOptions

    def check(self, opts) -> None:
        super().check(opts)
        for k in ("distance", "angle"):
            if getattr(opts, k) < 0:
                raise self.fail(k, f"must be >= 0, got {getattr(opts, k)}")

    def feature_loss(self, fs, ft):
        losses = [rkd_loss(embedding(s), embedding(t), self.opts.distance, self.opts.angle) for s, t in zip(fs, ft)]
        return torch.stack(losses).mean()
