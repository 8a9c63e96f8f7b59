"""Issue 27, item 6 (one word per concept) in the files the runs already wrote: what the code now calls a
*method* was called a *variant*, and every student now carries its *arm* (the cell of its study's design).

    python scripts/rename_outputs.py [--root DIR] [--check]

Rewrites, in place, exactly what the renamed code writes differently; weights, measurements and every other key
are left as they are:

- student model files (``models/students``, ``models/q1/students``, ``models/q23/students``): the tags a run saves
  last. Default study ``{variant}`` -> ``{method, arm}``; question 1 ``{variant, q1_teacher, width, epochs}`` ->
  ``{method, arm, q1_teacher, width, epochs}`` (arm: ``kd.main-e30``); questions 2 and 3 ``{variant, q23_arm,
  q23_group, method, init, epochs[, cut]}`` -> ``{method, arm, q23_arm, init, epochs[, cut]}`` (its ``variant``
  repeated ``q23_arm``; ``arm`` is the group, ``kd.random-e30``).
- question 1's per-run test records (``metrics/q1/tests/<student>.json``): ``variant`` -> ``method``.
- the default study's evaluation: ``metrics/runs.json`` (each run's ``variant``), ``metrics/summary.json``
  (``variants``) and ``plots/accuracy.json`` (each row's ``variant``).

The report stages' outputs are not rewritten: they are re-run (they read only the files above). ``--check``
changes nothing and exits 1 if a file still has an old name. Every file is loaded as tensors and plain data.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

STUDENTS = {"default": "models/students", "q1": "models/q1/students", "q23": "models/q23/students"}


def _arm_q1(tags: dict) -> str:
    """Question 1's arm name of a student's tags (kdlab.analysis.q1_design.arm_name)."""
    head = tags["variant"] if not tags["q1_teacher"] else f"{tags['variant']}.{tags['q1_teacher']}"
    return f"{head}-e{tags['epochs']}"


def new_tags(study: str, tags: dict) -> dict:
    """The tags the renamed code saves for a student of ``study`` whose old tags are ``tags``."""
    if study == "default":
        return {"method": tags["variant"], "arm": tags["variant"]}
    if study == "q1":
        return {"method": tags["variant"], "arm": _arm_q1(tags), "q1_teacher": tags["q1_teacher"],
                "width": tags["width"], "epochs": tags["epochs"]}
    return {"method": tags["method"], "arm": tags["q23_group"], "q23_arm": tags["q23_arm"], "init": tags["init"],
            "epochs": tags["epochs"], **({"cut": tags["cut"]} if "cut" in tags else {})}


#: the old tags of each study's students, in the order the runs saved them (the last keys of the model file)
OLD_TAGS = {"default": ("variant",), "q1": ("variant", "q1_teacher", "width", "epochs"),
            "q23": ("variant", "q23_arm", "q23_group", "method", "init", "epochs", "cut")}


def model_file(path: Path, study: str, check: bool) -> bool:
    """Rename ``path``'s tags; True if it had the old ones."""
    from kdlab.infra import io

    ckpt = io.load_torch(path, "dvc pull")
    if "variant" not in ckpt:
        return False
    if check:
        return True
    old = {k: ckpt[k] for k in OLD_TAGS[study] if k in ckpt}
    rest = {k: v for k, v in ckpt.items() if k not in old}
    io.save_torch({**rest, **new_tags(study, old)}, path)
    return True


def _rename_key(obj: dict, old: str, new: str) -> dict:
    return {(new if k == old else k): v for k, v in obj.items()}


def json_file(path: Path, edit, check: bool) -> bool:
    """Apply ``edit`` to ``path``'s JSON; True if it changed anything."""
    from kdlab.infra import io

    before = json.loads(path.read_text())
    after = edit(before)
    if after == before:
        return False
    if not check:
        io.save_json(after, path)
    return True


def rename(root: Path, check: bool = False) -> dict[str, int]:
    """Rewrite (``check``: count) every file under ``root`` that still has an old name; {kind: files}."""
    counts = {"model files": 0, "q1 test records": 0, "evaluation files": 0}
    for study, folder in STUDENTS.items():
        for path in sorted((root / folder).glob("*.pt")):
            counts["model files"] += model_file(path, study, check)
    for path in sorted((root / "metrics/q1/tests").glob("*.json")):
        counts["q1 test records"] += json_file(path, lambda d: _rename_key(d, "variant", "method"), check)
    edits = {"metrics/runs.json": lambda d: {k: _rename_key(v, "variant", "method") for k, v in d.items()},
             "metrics/summary.json": lambda d: _rename_key(d, "variants", "methods"),
             "plots/accuracy.json": lambda rows: [_rename_key(r, "variant", "method") for r in rows]}
    for name, edit in edits.items():
        if (root / name).exists():
            counts["evaluation files"] += json_file(root / name, edit, check)
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1], help="the repository (or a "
                    "tiny study, scripts/tiny_outputs.py --keep) whose outputs to rewrite (default: this one)")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if any file has an old name")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    counts = rename(args.root, args.check)
    said = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    print(f"{'still to rename' if args.check else 'renamed'}: {said}")
    return 1 if args.check and any(counts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
