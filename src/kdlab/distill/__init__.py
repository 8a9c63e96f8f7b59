"""Distillation methods, one file each, named like the file and found with :func:`build`.

A method is called with the student and a :class:`kdlab.loader.Batch` and returns
``(student_logits, {"ce": ..., "kd": ...})``: each term already weighted, so the training loop sums
them and logs each one on its own. Adding a method means adding a file here and its params.
Method files are imported on first use, so listing the names (params validation) needs no torch.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

METHODS: dict[str, type["Method"]] = {}


def names() -> list[str]:
    """Every method's name: the file names in this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__))


def register(name: str):
    def deco(cls):
        cls.name = name
        METHODS[name] = cls
        return cls
    return deco


class Method:
    name = "?"
    #: reads the cached teacher logits (so its DVC stage depends on the cache stage)
    uses_teacher_logits = False

    def __init__(self, params):
        self.params = params
        self.label_smoothing = params.train.label_smoothing

    def ce(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        from torch import nn

        return nn.functional.cross_entropy(logits, labels, label_smoothing=self.label_smoothing, reduction=reduction)

    def __call__(self, student: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


def build(name: str, params) -> Method:
    if name not in names():
        raise KeyError(f"unknown distillation method {name!r}; allowed: {', '.join(names())}")
    importlib.import_module(f"{__name__}.{name}")
    if name not in METHODS:
        raise KeyError(f"{__name__}.{name} registers no method named {name!r} (a method is named like its file)")
    return METHODS[name](params)
