"""``kdlab check``, the pipeline's first stage: all of params.yaml, with the checks that need torch.

Every stage checks its params (:mod:`kdlab.pipeline.params`) before any work; this stage adds every method's options
(not only study.methods': studies/q1 and studies/q23 build others from the same section), each of them set in the
file, the device, and what the teacher and student architectures must have: the layers that taps and carving name.
Architectures are built on the meta device: nothing is allocated.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from kdlab import distill
from kdlab.core.data import CLASSES, SHAPES
from kdlab.core.features import check_paths
from kdlab.core.models import build
from kdlab.infra import io, runtime
from kdlab.infra.schema import ParamsError, read_yaml
from kdlab.pipeline.params import Params
from kdlab.pipeline.workspace import CHECKED


def check_methods(p: Params, raw_methods: dict | None = None, source: str = "params.yaml") -> dict:
    """Every method, built (each checks its options); with ``raw_methods`` (the file's ``methods`` mapping),
    every option of every method must be set there."""
    methods = {name: distill.build(name, p) for name in distill.names()}
    if raw_methods is not None:
        for m in methods.values():
            given = raw_methods.get(m.name) or {}
            unset = [f"methods.{m.name}.{f.name}" for f in dataclasses.fields(m.Options) if f.name not in given]
            if unset:
                raise ParamsError(source, f"does not set {', '.join(unset)}; every key must be set: add them, or "
                                  f"restore the shipped file with `git checkout -- {source}`")
    return methods


def check_models(p: Params, methods: dict) -> None:
    """The layers that taps name exist in both architectures."""
    s = p.data.synthetic
    channels = SHAPES.get(p.data.name, (s.channels,))[0]
    classes = CLASSES.get(p.data.name, s.classes)
    with torch.device("meta"):  # shapes and parameter counts only: nothing is allocated
        teacher = build(p.teacher.arch, channels, classes, p.teacher.width)
        student = build(p.student.arch, channels, classes, p.student.width)
        taps = {f"methods.{m.name}.layers": m.opts.layers
                for m in methods.values() if hasattr(m.opts, "layers")}
        for key, paths in taps.items():
            for role, model in (("teacher", teacher), ("student", student)):
                check_paths(model, paths, key, role)


def check_all(p: Params, path: str | Path = "params.yaml") -> Params:
    """What ``kdlab check`` checks, on top of the params every stage checks; raises :class:`ParamsError`."""
    runtime.device(p.train.device)  # cuda without a GPU
    raw = read_yaml(Path(path)) or {}
    check_models(p, check_methods(p, raw.get("methods") or {}, str(path)))
    return p


def run_check(p: Params, path: str | Path = "params.yaml") -> None:
    """Writes data/checked.json once everything passed: `prepare` depends on it, so `dvc repro` checks first.
    Its content never changes, so a re-run check (a param or a method file changed) re-runs nothing after it."""
    check_all(p, path)
    io.save_json({"params.yaml": "complete and valid (kdlab check)"}, CHECKED)
    print(f"params checked: every key, every method's options, the architectures; wrote {CHECKED}")
