"""FitNet hints on chosen teacher channels only (question 3's selective distillation): at each tapped layer the
student's features, mapped by a learned 1x1 conv + BatchNorm regressor, are matched by MSE to ``k`` (a fraction)
of the teacher's channels: the ``top`` ones by importance, the ``bottom`` ones, or ``random`` ones (drawn from
torch's generator, so each seed draws its own set). The MSE is the mean over the kept channels, so the hint's
total weight is ``beta`` whatever ``k`` is (``fitnet``: every channel, the same total). Importance, measured on the
example batch ``attach`` gets (the question-2/3 study passes ``q23.calibration_images`` training images):
``loss``, how much the teacher's cross-entropy on those images rises when the channel is zeroed at that layer
(its effect on the teacher's output), or ``activation``, the teacher's mean |activation| of the channel (the
``activation`` criterion of question 3's pruning, Minitron's)."""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from kdlab.distill import register
from kdlab.distill._features import FeatureMethod, FeatureOptions, same_size

SELECT = ("top", "bottom", "random")
IMPORTANCE = ("loss", "activation")


@dataclass(frozen=True)
class SelectOptions(FeatureOptions):
    layers: list[str] = field(default_factory=lambda: ["layer3"])
    k: float = 0.25
    select: str = "top"
    importance: str = "activation"


def channel_importance(ft: torch.Tensor) -> torch.Tensor:
    """Mean |activation| of each channel of a (N, C, H, W) feature map."""
    return ft.float().abs().mean(dim=(0, 2, 3))


@torch.no_grad()
def loss_importance(teacher: nn.Module, path: str, images: torch.Tensor, labels: torch.Tensor,
                    batch_size: int = 500) -> torch.Tensor:
    """The rise of ``teacher``'s mean cross-entropy on (``images``, ``labels``) when each output channel of the
    module at ``path`` is zeroed, one channel at a time (teacher in eval mode)."""
    module = teacher.get_submodule(path)
    mask: list[torch.Tensor | None] = [None]

    def hook(_module, _inputs, out):
        return out if mask[0] is None else out * mask[0].view(1, -1, 1, 1).to(out.dtype)

    def loss() -> float:
        total = 0.0
        for start in range(0, len(images), batch_size):
            logits = teacher(images[start:start + batch_size]).float()
            total += F.cross_entropy(logits, labels[start:start + batch_size], reduction="sum").item()
        return total / len(images)

    handle = module.register_forward_hook(hook)
    try:
        shape: dict = {}

        def count(_module, _inputs, out) -> None:  # returns None: the output stays as it is
            shape.setdefault("channels", out.shape[1])

        probe = module.register_forward_hook(count)
        base = loss()
        probe.remove()
        rises = []
        for c in range(shape["channels"]):
            mask[0] = torch.ones(shape["channels"], device=images.device)
            mask[0][c] = 0.0
            rises.append(loss() - base)
    finally:
        handle.remove()
    return torch.tensor(rises)


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
        if opts.importance not in IMPORTANCE:
            raise self.fail("importance", f"{opts.importance!r}; allowed: {', '.join(IMPORTANCE)}")

    def importance(self, i: int, ft: torch.Tensor) -> torch.Tensor:
        """Each teacher channel's importance at the ``i``-th tapped layer (``ft``: its features on the example)."""
        if self.opts.importance == "activation" or self.opts.select == "random":
            return channel_importance(ft)
        images, labels = self._calibration
        if labels is None:
            raise self.fail("importance", "loss: the teacher's loss needs the example's labels, and none were given")
        return loss_importance(self.teacher, self.opts.layers[i], images, labels)

    def build(self, fs, ft):
        for i, t in enumerate(ft):
            self.register_buffer(f"channels{i}", choose(self.importance(i, t), self.opts.k, self.opts.select).to(t.device))
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
