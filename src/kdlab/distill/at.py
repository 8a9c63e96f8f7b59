"""Attention transfer (Zagoruyko & Komodakis 2017): the spatial attention map of a layer, the channel mean
of the squared activations flattened and L2-normalised, matched by squared error; beta/2 x the sum over
the chosen layers of the mean squared difference (their code; beta = 1000 there). Channel counts may differ."""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from kdlab.distill import register
from kdlab.distill._features import FeatureMethod, FeatureOptions, same_size


@dataclass(frozen=True)
class ATOptions(FeatureOptions):
    layers: list[str] = field(default_factory=lambda: ["layer1", "layer2", "layer3"])
    beta: float = 1000.0


def attention_map(f: torch.Tensor) -> torch.Tensor:
    return F.normalize(f.float().pow(2).mean(dim=1).flatten(1), dim=1)


@register("at")
class AttentionTransfer(FeatureMethod):
    term = "at"
    Options = ATOptions

    def feature_loss(self, fs, ft):
        losses = [(attention_map(s) - attention_map(t)).pow(2).mean() for s, t in map(same_size, fs, ft)]
        return torch.stack(losses).sum() / 2
