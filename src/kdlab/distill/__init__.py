"""Layer 3, the distillation methods (losses), one file each, named like the file and found with :func:`build`.
Imports only kdlab.core and kdlab.infra.

A method (:class:`kdlab.distill._base.Method`, an ``nn.Module`` so that trainable parts such as FitNet's
regressors are optimised and checkpointed with the student) is called with the student and a
:class:`kdlab.core.loader.Batch` and returns ``(student_logits, {"ce": ..., "kd": ...})``: each term already
weighted, so the training loop sums them and logs each one on its own. A method's own params live under
``methods.<name>`` in params.yaml and are declared in its file (``Options``). Adding a method means adding a
file here and its params. Method files are imported on first use, so listing the names needs no torch.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kdlab.distill._base import Method

METHODS: dict[str, type["Method"]] = {}


def names() -> list[str]:
    """Every method's name: the file names in this package (``_base`` is not a method)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def register(name: str):
    def deco(cls):
        cls.name = name
        METHODS[name] = cls
        return cls
    return deco


def method_class(name: str) -> type["Method"]:
    if name not in names():
        raise KeyError(f"unknown distillation method {name!r}; allowed: {', '.join(names())}")
    importlib.import_module(f"{__name__}.{name}")
    if name not in METHODS:
        raise KeyError(f"{__name__}.{name} registers no method named {name!r} (a method is named like its file)")
    return METHODS[name]


def build(name: str, params, **overrides) -> "Method":
    """The method ``name``, given what it reads of ``params`` (a :class:`kdlab.pipeline.params.Params`): the ``loss``
    section, ``train.label_smoothing`` and its own ``methods.<name>`` options (``overrides`` replace some)."""
    cls = method_class(name)
    return cls(params.loss, params.methods.get(cls.name, {}), params.train.label_smoothing, **overrides)
