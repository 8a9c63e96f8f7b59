"""Issue 27, item 4, in the files the runs already wrote: every run's metrics file carries its spec.

    python scripts/spec_outputs.py [--check]

``kdlab train`` now writes, beside a run's measured numbers, the run it measures (key ``spec``:
:func:`kdlab.pipeline.spec.record`). This adds that key to each training run's metrics file written before: the
default study's teacher and students, every named study's teachers and students, and every named study's pilot
runs, each spec built by the same code ``kdlab train`` uses, from the params as they are. Run it in the
repository's root (or a tiny study's) while the params are those the runs were trained with (``dvc status``: no
params changed); nothing else in a file changes, and a file that already carries a spec is left alone, unless it
differs from the params' spec: then it is named and the script exits 1. ``--check`` changes nothing and exits 1
if a file lacks its spec too. Files are read and written as plain JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def specs():
    """Every training run's spec, of the default study, the named studies and their pilots."""
    from kdlab.analysis.results import runs
    from kdlab.analysis.studies import found
    from kdlab.infra.schema import read_yaml
    from kdlab.pipeline import params, pilot

    p = params.load(Path("params.yaml"))
    out = [spec for *_, spec in runs(p, named=True)]
    for path in found():
        (section,) = (read_yaml(path) or {}).values()
        if "pilot" in section:
            study = pilot.load(path)
            for name, r in study.pilot.recipes.items():
                out += pilot.recipe_runs(study, name, r, {})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file lacks its spec")
    args = ap.parse_args()
    from kdlab.infra import io
    from kdlab.pipeline.spec import record

    added = absent = differ = lacking = 0
    for spec in specs():
        path = Path(spec.files[1])
        if not path.exists():
            absent += 1
            continue
        metrics = json.loads(path.read_text())
        want = json.loads(json.dumps(record(spec)))  # as JSON reads it back (tuples as lists)
        if "spec" in metrics:
            if metrics["spec"] != want:
                differ += 1
                print(f"{path}: carries another spec than the params give", file=sys.stderr)
            continue
        lacking += 1
        if not args.check:
            io.save_json({**metrics, "spec": want}, path)
            added += 1
    print(f"spec added to {added} metrics files; {lacking - added} lack it, {differ} differ from the params, "
          f"{absent} runs not run")
    return 1 if differ or (args.check and lacking) else 0


if __name__ == "__main__":
    sys.exit(main())
