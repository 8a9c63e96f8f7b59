"""The named studies, found by their files: ``studies/<name>/params.yaml`` (one section, ``<name>``) and
``studies/<name>/dvc.yaml``, designed by ``kdlab.analysis.<name>_design`` (its params, runs, stages and rows of
the results table). Adding a study is a params file, a ``dvc.yaml`` and its design and report here."""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

from kdlab.infra.schema import ParamsError, read_yaml

ROOT = Path("studies")


def found() -> list[Path]:
    """Every named study's params file under ``studies/``, by name."""
    return sorted(ROOT.glob("*/params.yaml"))


def params_file(study: str | Path) -> Path:
    """A named study's params file from ``--study``: a file as given, or a study's name (``q23``:
    studies/q23/params.yaml)."""
    path = Path(study)
    named = ROOT / path / "params.yaml"
    return named if not path.exists() and path.parent == Path(".") and named.exists() else path


def design(path: str | Path) -> ModuleType:
    """The design module of the named study whose params file is ``path`` (refused in one line unless the file
    holds one section, named after its folder, with a design)."""
    path = Path(path)
    sections = list(read_yaml(path) or {}) if path.exists() else None
    if sections is None:
        raise ParamsError(str(path), "no such file: a named study's params file is studies/<name>/params.yaml")
    known = [p.parent.name for p in found()]
    if len(sections) != 1 or not importlib.util.find_spec(f"kdlab.analysis.{sections[0]}_design"):
        raise ParamsError(str(path), f"a named study's params file holds one section, the study's name (one of "
                          f"{known}); found {sections}")
    return named(sections[0])


def named(name: str) -> ModuleType:
    """The design module of the named study ``name`` (``q1``: :mod:`kdlab.analysis.q1_design`)."""
    return importlib.import_module(f"kdlab.analysis.{name}_design")


def report(path: str | Path) -> ModuleType:
    """The report module of the named study whose params file is ``path``: ``kdlab.analysis.<name>_report``
    (its ``report(p, q)`` is the study's report stage)."""
    return importlib.import_module(f"kdlab.analysis.{design(path).__name__.split('.')[-1].removesuffix('_design')}"
                                   "_report")
