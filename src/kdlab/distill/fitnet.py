"""FitNets (Romero et al. 2015): MSE between the teacher's features and the student's, mapped to the
teacher's width by a learned 1x1 conv + BatchNorm regressor, at each chosen layer (mean over layers)."""
import torch
import torch.nn.functional as F
from torch import nn

from kdlab.distill import register
from kdlab.distill._features import FeatureMethod, same_size


@register("fitnet")
class FitNet(FeatureMethod):
    term = "hint"

    def build(self, fs, ft):
        self.regressors = nn.ModuleList(
            nn.Sequential(nn.Conv2d(s.shape[1], t.shape[1], 1, bias=False), nn.BatchNorm2d(t.shape[1]))
            for s, t in zip(fs, ft)
        ).to(device=fs[0].device)

    def feature_loss(self, fs, ft):
        losses = []
        for reg, s, t in zip(self.regressors, fs, ft):
            s, t = same_size(reg(s), t)
            losses.append(F.mse_loss(s.float(), t.float()))
        return torch.stack(losses).mean()
