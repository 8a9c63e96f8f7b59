"""Model registry: CIFAR-style ResNets (:mod:`kdlab.core.resnets`, width multiplier) and torchvision ResNets with
a CIFAR stem (3x3 conv, stride 1, no max-pool). The input channel count follows the data."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # torch is imported by the builders, so params validation stays fast
    from torch import nn


@dataclass(frozen=True)
class ArchSpec:
    build: Callable[..., "nn.Module"]
    has_width: bool


ARCHS: dict[str, ArchSpec] = {}


def _cifar_resnet(depth: int):
    def build(in_channels, num_classes, width=1.0):
        from kdlab.core.resnets import CifarResNet

        return CifarResNet(depth, in_channels, num_classes, width)
    return build


def _torchvision_resnet(name: str):
    def build(in_channels, num_classes, width=1.0):
        import torchvision
        from torch import nn

        model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
        model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
        return model
    return build


for _depth in (8, 14, 20, 32, 44, 56):
    ARCHS[f"resnet{_depth}"] = ArchSpec(_cifar_resnet(_depth), has_width=True)
for _name in ("resnet18", "resnet34", "resnet50"):
    ARCHS[_name] = ArchSpec(_torchvision_resnet(_name), has_width=False)


def build(arch: str, in_channels: int, num_classes: int, width: float = 1.0) -> "nn.Module":
    if arch not in ARCHS:
        raise KeyError(f"unknown arch {arch!r}; allowed: {', '.join(sorted(ARCHS))}")
    return ARCHS[arch].build(in_channels, num_classes, width)


def count_params(model: "nn.Module") -> int:
    return sum(p.numel() for p in model.parameters())
