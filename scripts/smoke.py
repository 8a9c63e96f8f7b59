"""First contact in about a minute: the whole DAG on tiny synthetic data, with the full report (make smoke).

    python scripts/smoke.py [--dir smoke]

Builds ``smoke/study``: a git + DVC repo holding this checkout's src/, dvc.yaml and plot templates, with
params.yaml = the shipped one plus :data:`TINY` (500 synthetic 10x10 images, 3 classes, a teacher of one epoch,
students of two, two seeds; every stage kind), starts the warm server (the launcher is opt-in: ``KDLAB_WARM=1``
for this throwaway study's ``dvc repro`` only), runs ``dvc repro`` and the offline plots page, and commits the
results, so that DVC's compare commands work there at once (``dvc exp run -S loss.alpha=0.7``, then ``dvc
metrics diff`` and ``dvc plots diff HEAD``). Nothing in this checkout changes. The numbers mean nothing (tiny data,
two seeds; the report says so in its first line); the point is to see every output once.

Compile only where it pays: ``train.compile: auto`` compiles the training step on CPUs with bf16 units, which
pays for a run of thousands of steps (students' steps 1.3x faster on the AMX CPU) but not for these runs of a few
steps: on an AMD EPYC with AVX512-BF16, compilation was 30.3 of the tiny teacher's 30.4 s of training and 99% of
every tiny student's (smoke took 274 s with an empty compile cache). :data:`TINY` sets ``train.compile: false``,
so the smoke study runs eager on every CPU kind.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
#: the tiny study (as the end-to-end test's): every stage kind once; scripts/study_times.py times this one
TINY = {
    "data": {"name": "synthetic", "val_size": 80,
             "synthetic": {"n_train": 400, "n_test": 100, "image_size": 10, "channels": 1, "classes": 3}},
    "views": {"pad": 1, "flip": True},
    "teacher": {"arch": "resnet8", "width": 0.5, "epochs": 1, "lr": 0.1},
    "student": {"arch": "resnet8", "width": 0.25, "epochs": 2, "lr": 0.1},   # two: the curves are lines
    "train": {"batch_size": 64, "eval_batch_size": 64, "threads": 1, "compile": False},
    "cache": {"views": 3, "batch_size": 64},
    "study": {"seeds": [0, 1]},   # two seeds: each comparison gets an interval and a verdict
}


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(base.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=REPO / "smoke",
                    help="where to build it (default ./smoke; its study/ is removed first)")
    a = ap.parse_args()
    root = a.dir.resolve() / "study"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(REPO / "web/templates", root / "web/templates")
    for f in ("dvc.yaml", "pyproject.toml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / f, root / f)
    shipped = yaml.safe_load((REPO / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(merge(shipped, TINY), sort_keys=False))
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PYTHONPATH=str(root / "src"), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               GIT_AUTHOR_NAME="kdlab", GIT_AUTHOR_EMAIL="kdlab@localhost", GIT_COMMITTER_NAME="kdlab",
               GIT_COMMITTER_EMAIL="kdlab@localhost", KDLAB_WARM="1")  # warm start (opt-in): a throwaway study
    for k in ("MLFLOW_TRACKING_URI", "DVC_ROOT"):
        env.pop(k, None)
    start = time.perf_counter()
    for cmd in (["git", "init", "-q", "-b", "main"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "smoke study"], [sys.executable, "-m", "kdlab.warm", "start"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    if subprocess.run(["dvc", "repro"], cwd=root, env=env).returncode:
        return 1
    node_modules = REPO / "web/node_modules"
    if node_modules.exists():
        os.symlink(node_modules, root / "web/node_modules")
        subprocess.run([sys.executable, str(REPO / "scripts/plots_html.py")], cwd=root, env=env, check=True)
    # the results committed, as a study's are: the compare commands need a revision that holds them
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "smoke study: dvc repro"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    print(f"\nsmoke study done in {time.perf_counter() - start:.0f} s and committed, in {root}:\n"
          f"  {root / 'reports/report.md'} (and its pictures), {root / 'metrics'}\n"
          + (f"  {root / 'reports/plots/index.html'} (dvc plots, offline)\n" if node_modules.exists() else "")
          + f"  MLflow: cd {root} && kdlab ui\n"
          f"  an experiment: cd {root} && dvc exp run -S loss.alpha=0.7 && dvc metrics diff && dvc plots diff HEAD")
    return 0


if __name__ == "__main__":
    sys.exit(main())
