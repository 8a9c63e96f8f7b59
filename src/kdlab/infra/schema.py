"""Plain data -> frozen dataclasses, with errors that name the key: the machinery under :mod:`kdlab.pipeline.params`
and every method's ``Options``. A leaf: it imports nothing from kdlab (and no torch)."""
from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Literal, Union

import yaml


class ParamsError(ValueError):
    """A bad value in params.yaml (or an override); the message names the key."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"params: {key}: {message}")


# ---------------------------------------------------------------- building

def convert(key: str, tp, value):
    """Check ``value`` against the annotation ``tp``; return the (possibly coerced) value."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ParamsError(key, f"expected a mapping, got {value!r}")
        return build(tp, value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ParamsError(key, f"{value!r} is not allowed; allowed: {', '.join(map(str, typing.get_args(tp)))}")
        return value
    if origin is Union:
        errors = []
        for option in typing.get_args(tp):
            try:
                return convert(key, option, value)
            except ParamsError as e:
                errors.append(str(e).split(": ", 2)[-1])
        raise ParamsError(key, " or ".join(errors))
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(key, f"expected a mapping, got {value!r}")
        _, item_tp = typing.get_args(tp)
        return {k: convert(f"{key}.{k}", item_tp, v) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(key, f"expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [convert(f"{key}[{i}]", item_tp, v) for i, v in enumerate(value)]
    if tp is dict:  # checked in full by whoever owns it (a method's Options)
        if not isinstance(value, dict):
            raise ParamsError(key, f"expected a mapping, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(key, f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ParamsError(key, f"expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp} for {key}")


def build(cls, raw: dict | None, prefix: str = ""):
    """``raw`` (a mapping from params.yaml) checked against the dataclass ``cls``; errors name ``prefix.key``."""
    raw = raw or {}
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for k in raw:
        if k not in names:
            where = f"{prefix}.{k}" if prefix else str(k)
            raise ParamsError(where, f"unknown key; allowed keys here: {', '.join(names)}")
    kwargs = {k: convert(f"{prefix}.{k}" if prefix else k, hints[k], v) for k, v in raw.items()}
    return cls(**kwargs)


def missing_keys(cls, raw: dict, prefix: str = "") -> list[str]:
    """Dotted keys of the dataclass ``cls`` that ``raw`` does not set (a missing section counts once)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if f.name not in raw:
            out.append(key)
        elif dataclasses.is_dataclass(hints[f.name]) and isinstance(raw[f.name], dict):
            out += missing_keys(hints[f.name], raw[f.name], key + ".")
    return out


def read_yaml(path: Path) -> dict | None:
    """A YAML file that must hold a mapping (or nothing)."""
    if not path.exists():
        raise ParamsError(str(path), "not found; run kdlab from the repository root (where params.yaml is), or "
                          "restore it with `git checkout -- params.yaml`")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ParamsError(str(path), f"is not valid YAML: {e}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(str(path), "must be a mapping of sections (data, teacher, student, ...)")
    return raw


# ---------------------------------------------------------------- overrides and flattening

def parse_override(text: str) -> tuple[str, object]:
    """``loss.alpha=0.7`` -> ("loss.alpha", 0.7); the value is read as YAML."""
    if "=" not in text:
        raise ParamsError(text, "an override must look like key=value, e.g. loss.alpha=0.7")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def apply_override(raw: dict, key: str, value) -> None:
    """Set the dotted ``key`` in the nested mapping ``raw``."""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ParamsError(key, f"{part} is not a mapping")
    node[parts[-1]] = value


def flatten(obj, prefix: str = "") -> dict[str, object]:
    """Dataclass tree -> {"loss.alpha": 0.5, ...} for tracking."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        k = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(v):
            out.update(flatten(v, k + "."))
        elif isinstance(v, dict):
            out.update(flatten_dict(v, k + "."))
        else:
            out[k] = v
    return out


def flatten_dict(d: dict, prefix: str = "") -> dict[str, object]:
    """Nested dict -> {"q1.kd_vs_raw.gain": ...}."""
    out = {}
    for k, v in d.items():
        out.update(flatten_dict(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


# ---------------------------------------------------------------- checks a section's check() is made of

def positive(key: str, value, strict: bool = True) -> None:
    if (value <= 0) if strict else (value < 0):
        raise ParamsError(key, f"must be {'>' if strict else '>='} 0, got {value}")


def choice(key: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ParamsError(key, f"unknown name {value!r}; allowed: {', '.join(sorted(allowed))}")


def unit_interval(key: str, value: float, closed: bool = False) -> None:
    """``value`` in [0, 1) (``closed``: [0, 1])."""
    if not (0 <= value <= 1 if closed else 0 <= value < 1):
        raise ParamsError(key, f"must be in [0, 1{']' if closed else ')'}, got {value}")


def no_duplicates(key: str, values: list) -> None:
    if len(set(values)) != len(values):
        raise ParamsError(key, f"has duplicates: {values}")
