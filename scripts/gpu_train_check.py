"""The one training path (kdlab.pipeline.train) on a CUDA machine: every init, snapshots, a named study's subset.

    PYTHONPATH=src python3 scripts/gpu_train_check.py --out OUT.json     # on the GPU machine, about 3 minutes
    PYTHONPATH=src python3 scripts/gpu_train_check.py --smoke --out x.json  # tiny synthetic data on the CPU

Runs in a scratch folder (``--work``, default a temporary one) on the prepared Fashion-MNIST tensors of this
checkout (data/prepared, carried to the GPU machine), with the shipped params.yaml and studies/q23/params.yaml
cut to a few epochs, eager (not compiled). It trains, each through :func:`kdlab.pipeline.train.train` from its
:class:`kdlab.pipeline.spec.RunSpec`: the default study's teacher, its cache, students raw, kd, kd_online (fresh
views, the teacher run online); question 2/3's teacher with snapshots on its subset, its cache, a carved
student, the pruned teachers and a pruned student and its shape from scratch. The GPU machine has no MLflow: the tracking calls go to a stand-in that
records nothing (the files train() writes are the real ones). Prints and writes each run's accuracy, best epoch,
seconds and the files it wrote.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class _Untracked:
    """Takes what :func:`kdlab.infra.tracking.run` would log and records nothing."""

    def __getattr__(self, name):
        return lambda *a, **k: None


@contextlib.contextmanager
def _no_tracking(*args, **kwargs):
    yield _Untracked()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    ap.add_argument("--smoke", action="store_true", help="synthetic data, 1 epoch each: checks the script on a CPU")
    args = ap.parse_args()
    import torch
    import yaml

    from kdlab.infra import tracking
    from kdlab.analysis import q23_design as q23
    from kdlab.pipeline import cache, params, stages, workspace
    from kdlab.pipeline.train import train

    tracking.run = _no_tracking  # no MLflow on the GPU machine (every module logs through this one)
    work = args.work or Path(tempfile.mkdtemp(prefix="kdlab-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    epochs = 1 if args.smoke else 3
    over = {"teacher": {"epochs": epochs + 1}, "student": {"epochs": epochs},
            "study": {"seeds": [0]},
            # eager: ten runs would spend minutes compiling (the compiled step's check is scripts/gpu_bench.py)
            "train": {"compile": False}}
    if args.smoke:
        over["data"] = {"name": "synthetic", "val_size": 100}
        over["train"] = {"batch_size": 32, "compile": False}
    shipped = yaml.safe_load((REPO / "params.yaml").read_text())
    for k, v in over.items():
        shipped[k] = {**shipped[k], **v}
    Path("params.yaml").write_text(yaml.safe_dump(shipped))
    p = params.load("params.yaml")
    if args.smoke:
        from kdlab.core.data import prepare
        prepare(p.data, workspace.PREPARED)
    else:
        shutil.copytree(REPO / "data/prepared", workspace.PREPARED)
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    rows = {}

    def run(label, spec_fn):
        start = time.perf_counter()
        m = train(p, spec_fn())
        rows[label] = {"test_acc": m["test_acc"], "val_acc": m["val_acc"], "best_epoch": m["best_epoch"],
                       "seconds": time.perf_counter() - start}
        print(f"{label}: test {m['test_acc']:.4f} (val {m['val_acc']:.4f}, epoch {m['best_epoch']}) in "
              f"{rows[label]['seconds']:.1f} s", flush=True)

    runs = stages.runs(p)
    run("teacher", runs["teacher"])
    cache.run_cache(p)
    for v in ("raw", "kd", "kd_online"):
        run(f"students/{v}-0", lambda v=v: stages.student_spec(p, v, 0))
    raw_q = yaml.safe_load((REPO / "studies/q23/params.yaml").read_text())["q23"]
    raw_q.update(epochs=epochs + 1, seeds=[0], families={},
                 teachers={k: {**t, "epochs": epochs + 1, "snapshots": [1]} for k, t in raw_q["teachers"].items()})
    if args.smoke:
        raw_q.update(train_images=200, val_images=100, calibration_images=32, cka_images=32)
        # 2 KD steps between pruning steps (100 would give the matched shape 154 epochs of 2 steps)
        raw_q["prune"] = {**raw_q["prune"], "finetune_steps": 2}
    # the compute-matched budgets of these epochs: the teacher's (and the pruning's KD steps) plus the student's
    per_epoch = math.ceil(raw_q["train_images"] / raw_q["recipe"]["batch_size"])
    pr = raw_q["prune"]
    raw_q["matched"] = {"carved": 2 * (epochs + 1), "pruned": 2 * (epochs + 1) + math.ceil(
        (pr["steps"] - 1) * pr["finetune_steps"] / per_epoch)}
    Path("studies/q23").mkdir(parents=True)
    Path(q23.STUDY).write_text(yaml.safe_dump({"q23": raw_q}))
    q = q23.load()
    q_runs = q23.runs(p, q)
    run(f"q23 teachers/{q.teacher}", q_runs[f"teachers/{q.teacher}"])
    q23.cache(p, q)
    name = q23.student_name(q23.Group("kd", "carved", q.epochs), 0)
    run(f"q23 students/{name}", q_runs[f"students/{name}"])
    q23.prune(p, q)  # the pruned teachers; then one pruned student and its shape from scratch
    for init in ("pruned", "shape"):
        g = next(g for g in q23.groups(q) if g.init == init)
        name = q23.student_name(g, g.seeds[0])
        run(f"q23 students/{name}", q_runs[f"students/{name}"])
    teacher_snaps = sorted(x.name for x in (q23.LAYOUT.teachers / q.teacher).iterdir())
    out = {"device": dev, "torch": torch.__version__, "epochs": {"teacher": epochs + 1, "student": epochs},
           "precision": workspace.context(p, 0).precision, "runs": rows, "q23_teacher_files": teacher_snaps}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
