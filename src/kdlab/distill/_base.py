"""The base class of every distillation method (see the package docstring)."""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from kdlab.infra.schema import ParamsError, build


@dataclasses.dataclass(frozen=True)
class NoOptions:
    pass


class Method(nn.Module):
    name = "?"
    #: the dataclass of this method's ``methods.<name>`` params
    Options = NoOptions
    #: reads the cached teacher logits (data/teacher_logits)
    uses_teacher_logits = False
    #: runs the teacher (models/teacher.pt) at every step, e.g. for its features
    uses_teacher_model = False
    #: "cache": the views the cache covers (so every method sees the same pixels); "all": any view
    views = "cache"

    def __init__(self, loss, options: dict | None = None, label_smoothing: float = 0.0, **overrides):
        """``loss``: the ``loss`` params section (alpha, temperature); ``options``: this method's
        ``methods.<name>`` mapping from params.yaml (``overrides`` replace some of its keys)."""
        super().__init__()
        self.opts = build(self.Options, {**(options or {}), **overrides}, f"methods.{self.name}")
        self.check(self.opts)
        self.loss = loss
        self.label_smoothing = label_smoothing
        self.epoch = 1
        self._teacher: list[nn.Module] = []  # a list, so the teacher is neither trained nor saved with us

    def check(self, opts) -> None:
        """Range checks on the options; raise :class:`ParamsError` naming ``methods.<name>.<key>``."""

    def fail(self, key: str, message: str) -> ParamsError:
        return ParamsError(f"methods.{self.name}.{key}", message)

    @property
    def teacher(self) -> nn.Module:
        if not self._teacher:
            raise RuntimeError(f"method {self.name} runs the teacher but none was attached")
        return self._teacher[0]

    def attach(self, student: nn.Module, teacher: nn.Module | None, example: torch.Tensor,
               labels: torch.Tensor | None = None) -> None:
        """Called once before training, with a batch of (normalised) images and their labels, to build
        shape-dependent parts (and whatever a method measures on the teacher first)."""
        if teacher is not None:
            teacher.eval().requires_grad_(False)
            self._teacher = [teacher]

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def begin_step(self, progress: float) -> None:
        """Called before every training step with the epochs trained so far, the step included (``epoch - 1 +
        step / steps_per_epoch``: 1/steps at the first step): for a method whose weights ramp in per step."""

    def ce(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return nn.functional.cross_entropy(logits, labels, label_smoothing=self.label_smoothing, reduction=reduction)

    def forward(self, student: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError
