"""Re-record dvc.lock for a change that must not alter results, without the outputs on disk.

    python scripts/relock.py [dvc.yaml studies/q1/dvc.yaml ...]

For a change to code or to a stage's declared deps that is proven not to alter any output (first
``scripts/tiny_outputs.py`` before and after, on every study's tiny version): every stage of the named pipelines
(default: all three) has its code deps (``src/``) and params hashed from the working tree and written to its
dvc.lock; its data deps and outputs keep the hashes the lock records (they need not be on disk: a clone without
the models re-records the same); a stage the lock does not hold yet is left for its first run. Params are read from the params files as they are, so a changed value shows up
in the lock's diff.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PIPELINES = ("dvc.yaml", "studies/q1/dvc.yaml", "studies/q23/dvc.yaml")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pipelines", nargs="*", default=list(PIPELINES), help="dvc.yaml files (default: all three)")
    args = ap.parse_args()
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    repo = Repo(str(REPO))
    n = 0
    with repo.lock:
        for pipeline in args.pipelines:
            lock = REPO / Path(pipeline).with_name("dvc.lock")
            locked = set((yaml.safe_load(lock.read_text()) or {}).get("stages", {})) if lock.exists() else set()
            # a stage that never ran has nothing to re-record: it gets its lock entry when it runs
            stages = [s for s in repo.stage.collect(pipeline) if s.name in locked]
            for stage in stages:
                for dep in stage.deps:
                    if isinstance(dep, ParamsDependency) or dep.def_path.startswith("src/"):
                        dep.save()
            if stages:  # one write of the lock file for all of them (DVC 3.67's Lockfile; stage.dump() per
                # stage re-reads and re-writes the whole lock each time: 6.7 min instead of 14 s here)
                stages[0].dvcfile._lockfile.dump_stages(stages)
            n += len(stages)
    print(f"re-recorded {n} stages of {', '.join(args.pipelines)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
