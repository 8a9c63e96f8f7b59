"""The params the runs were trained with, as DVC recorded them (``dvc.lock``), against the params a report or a
table would describe them with: a command that reads runs is refused, naming each key that differs, unless they
agree. So ``kdlab report -S loss.alpha=0.9`` on a study reproduced at 0.5, or ``kdlab results`` after params.yaml
was edited without ``dvc repro``, stops before it writes a file or an MLflow run.

The record is each stage's ``params`` in the pipeline's lock (the root's ``dvc.lock``, or a named study's
``studies/<name>/dvc.lock``), which DVC writes as each stage finishes, so a report stage inside ``dvc repro`` or
``dvc exp run`` compares against the runs just made. Compared: every stage of the pipeline that comes before the
command (:data:`AFTER` names the commands of the stages it must not be held to: itself and what follows it). A pipeline never
reproduced (no lock) has no record, and nothing is compared.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from kdlab.infra.io import StageError
from kdlab.infra.schema import apply_override, flatten_dict, parse_override, read_yaml

#: per command, the commands of its pipeline's stages that run after it reads its inputs (or are itself)
AFTER = {"evaluate": ("evaluate", "report"), "report": ("report",), "results": ("report",)}
#: where the stages' params files live: the repository root (the named studies' stages run there too, wdir ../..)
ROOT_PARAMS = "params.yaml"


def current(params: str | Path, overrides: list[str], study: tuple[str, str | Path] | None = None) -> dict[str, dict]:
    """{params file: {dotted key: value}}: the command's params (its file with its -S overrides) stand for
    params.yaml, and ``study`` = (the pipeline's study file, the one the command reads) for that file; any other
    file is read as it is now."""
    raw = dict(read_yaml(Path(params)) or {})
    for text in overrides:
        apply_override(raw, *parse_override(text))
    now = {ROOT_PARAMS: flatten_dict(raw)}
    if study is not None:
        now[study[0]] = flatten_dict(read_yaml(Path(study[1])) or {})
    return now


def recorded(lock: Path, skip: tuple = ()) -> dict[str, dict[str, dict]]:
    """{stage: {params file: {dotted key: value}}} of ``lock``'s stages that its dvc.yaml still defines, but
    those whose command is ``kdlab`` one of ``skip``."""
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    pipeline = lock.with_name("dvc.yaml")  # a lock keeps entries of stages since removed: they describe no run now
    defined = set((yaml.safe_load(pipeline.read_text()) or {}).get("stages", {})) if pipeline.exists() else None
    out = {}
    for name, entry in stages.items():
        base = name.split("@")[0]
        words = str(entry.get("cmd") or "").split()
        if words[:1] == ["kdlab"] and words[1:2] and words[1] in skip or (defined is not None and base not in defined):
            continue
        # a stage declares a section (``loss``) or a key (``cache.views``): either way, dotted keys
        out[name] = {path: flatten_dict(keys or {}) for path, keys in (entry.get("params") or {}).items()}
    return out


def differences(now: dict[str, dict], record: dict[str, dict[str, dict]]) -> dict[str, tuple]:
    """{dotted key (a file other than params.yaml prefixes it): (value now, value recorded, [stages])}."""
    out: dict[str, tuple] = {}
    missing = object()
    for stage, files in record.items():
        for path, keys in files.items():
            if path not in now:
                file = Path(path)
                now[path] = flatten_dict(read_yaml(file) or {}) if file.exists() else {}
            for key, value in keys.items():
                here = now[path].get(key, missing)
                if here != value:
                    name = key if path == ROOT_PARAMS else f"{path}:{key}"
                    shown = "not set" if here is missing else here
                    out.setdefault(name, (shown, value, []))[2].append(stage)
    return out


def _named(study: str | Path | None) -> Path | None:
    """The folder of the named study whose params file (or a copy of it elsewhere) is ``study``: studies/<its one
    section>; None for the default study."""
    return Path("studies", *list(read_yaml(Path(study)) or {})[:1]) if study else None


def locks_of(command: str, study: str | Path | None = None) -> list[Path]:
    """The locks whose stages ``command`` (of the named study ``study``) reads the outputs of (paths from the
    repository root)."""
    if _named(study):
        return [_named(study) / "dvc.lock"]
    return [Path("dvc.lock"), *sorted(Path("studies").glob("*/dvc.lock"))] if command == "results" else [Path("dvc.lock")]


def check(command: str, params: str | Path, overrides: list[str], locks: list[Path] | None = None,
          study: str | Path | None = None) -> None:
    """Refuse ``command`` (a :class:`StageError`, one message naming every key) unless the params it reads (and
    ``study``, a named study's file) agree with what each lock in ``locks`` (default :func:`locks_of`) recorded
    for the stages before it."""
    locks = locks_of(command, study) if locks is None else locks
    named = (f"{_named(study).as_posix()}/params.yaml", study) if _named(study) else None
    now = current(params, overrides, named)
    diffs: dict[str, tuple] = {}
    for lock in locks:
        if lock.exists():
            for key, (here, then, stages) in differences(now, recorded(lock, AFTER.get(command, ()))).items():
                diffs.setdefault(key, (here, then, [], lock))[2].extend(stages)
    if not diffs:
        return
    said = []
    for key, (here, then, stages, lock) in list(diffs.items())[:6]:
        more = f" and {len(stages) - 1} more" if len(stages) > 1 else ""
        said.append(f"{key} is {here!r} here but the runs used {then!r} ({lock}: {stages[0]}{more})")
    rest = f"; and {len(diffs) - 6} more keys" if len(diffs) > 6 else ""
    raise StageError(f"the runs were not trained with these params: {'; '.join(said)}{rest}. Run `dvc repro` (or "
                     f"`dvc exp run`) to train with them, or put the params back (`make restore`)")
