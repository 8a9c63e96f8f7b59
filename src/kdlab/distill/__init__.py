"""Distillation methods, one file each, found by name in :data:`METHODS`.

A method is called with the student and a :class:`kdlab.loader.Batch` and returns
``(student_logits, {"ce": ..., "kd": ...})``: each term already weighted, so the training loop sums
them and logs each one on its own. Adding a method means adding a file here and its params.
"""
from __future__ import annotations

import importlib
import pkgutil

import torch
from torch import nn

METHODS: dict[str, type["Method"]] = {}


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
        return nn.functional.cross_entropy(logits, labels, label_smoothing=self.label_smoothing, reduction=reduction)

    def __call__(self, student: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


def build(name: str, params) -> Method:
    if name not in METHODS:
        raise KeyError(f"unknown distillation method {name!r}; allowed: {', '.join(sorted(METHODS))}")
    return METHODS[name](params)


for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")
