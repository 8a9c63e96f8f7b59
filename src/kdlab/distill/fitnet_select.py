"""FitNet hints on chosen teacher channels only (question 3's selective distillation): at each tapped layer the
student's features, mapped by a learned 1x1 conv + BatchNorm regressor, are matched by MSE to ``k`` (a fraction)
of the teacher's channels: the ``top`` ones by importance, the ``bottom`` ones, or ``random`` ones (drawn from
torch's generator, so each seed draws its own set). Importance is the teacher's mean |activation| per channel at
that layer (the ``activation`` criterion of question 3's pruning, Minitron's) on the example batch ``attach``
gets: the question-2/3 study passes ``q23.calibration_images`` training images. ``fitnet`` is every channel."""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from kdlab.distill import register
from kdlab.distill._features import FeatureMethod, FeatureOptions, same_size

SELECT = ("top", "bottom", "random")


@dataclass(frozen=True)
class SelectOptions(FeatureOptions):
    layers: list[str] = field(default_factory=lambda: ["layer3"])
    k: float = 0.25
    select: str = "top"


def channel_importance(ft: torch.Tensor) -> torch.Tensor:
    """Mean |activation| of each channel of a (N, C, H, W) feature map."""
    return ft.float().abs().mean(dim=(0, 2, 3))


def choose(importance: torch.Tensor, k: float, select: str) -> torch.Tensor:
    """Indices (ascending) of ``round(k * C)`` channels (at least one)."""
    c = len(importance)
    n = max(1, round(k * c))
    if select == "random":
        idx = torch.randperm(c)[:n]
    else:
        idx = importance.argsort(descending=select == "top", stable=True)[:n]
    return idx.sort().values


@register("fitnet_select")
class FitNetSelect(FeatureMethod):
    term = "hint"
    Options = SelectOptions

    def check(self, opts) -> None:
        super().check(opts)
        if not 0 < opts.k <= 1:
            raise self.fail("k", f"a fraction of the teacher's channels in (0, 1], got {opts.k}")
        if opts.select not in SELECT:
            raise self.fail("select", f"{opts.select!r}; allowed: {', '.join(SELECT)}")

    def build(self, fs, ft):
        for i, t in enumerate(ft):
            self.register_buffer(f"channels{i}", choose(channel_importance(t), self.opts.k, self.opts.select).to(t.device))
        self.regressors = nn.ModuleList(
            nn.Sequential(nn.Conv2d(s.shape[1], len(self.kept(i)), 1, bias=False), nn.BatchNorm2d(len(self.kept(i))))
            for i, s in enumerate(fs)
        ).to(device=fs[0].device)

    def kept(self, i: int) -> torch.Tensor:
        return getattr(self, f"channels{i}")

    def feature_loss(self, fs, ft):
        losses = []
        for i, (reg, s, t) in enumerate(zip(self.regressors, fs, ft)):
            s, t = same_size(reg(s), t.index_select(1, self.kept(i)))
            losses.append(F.mse_loss(s.float(), t.float()))
        return torch.stack(losses).mean()
