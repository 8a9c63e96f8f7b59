"""Where a study's time goes (issue: speed): start-up, compile, training, evaluation, DVC.

    python scripts/study_times.py metrics [--study default|q1|q23]   # each committed study, from its run metrics
    python scripts/study_times.py tiny [--dir DIR]   # a tiny study through `dvc repro`: direct, then warm

``metrics`` reads every run's ``wall_seconds`` / ``train_seconds`` / ``compile_seconds`` under metrics/ (written
by the training stages on the machine that ran the study) and prints, per stage kind, the runs, their
compile time, training time (compile excluded), and the rest of the run (validation each epoch is inside
training; the rest is the test evaluation, saving and MLflow logging). The process start-up before a run
starts its clock, and DVC's time between stages, are not in those files: ``tiny`` measures them.

``tiny`` builds make smoke's tiny synthetic study (scripts/smoke.py) in a temp git + DVC repo, twice, and runs
``dvc repro`` in each: once with ``KDLAB_WARM=0`` (every stage a fresh process) and once warm (the server
started first, as ``make repro`` does). A ``sitecustomize`` on PYTHONPATH records each ``kdlab`` process's
wall time from its first import to its ``atexit``, so: the rest of ``dvc repro``'s wall is DVC itself plus
each interpreter's start and exit (a process that imported torch and mlflow takes seconds to tear down;
a warm child ends with ``os._exit``); start-up per stage = the direct stage time - the warm one (the tiny
runs train for well under a second). Run it on an idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml
from smoke import TINY, merge  # the tiny study of make smoke (this directory is on sys.path)

REPO = Path(__file__).resolve().parent.parent
PROBE = '''import atexit, json, os, sys, time
_t0 = time.time()
def _record():
    with open(os.environ["STUDY_TIMES_LOG"], "a") as f:
        f.write(json.dumps({"stage": os.environ.get("DVC_STAGE", ""), "argv": sys.argv, "start": _t0,
                            "wall": time.time() - _t0}) + "\\n")
if os.environ.get("STUDY_TIMES_LOG"):
    atexit.register(_record)
'''


def kind(path: Path) -> str:
    """metrics/teacher.json -> teacher, metrics/students/kd-0.json -> students/kd."""
    rel = path.relative_to(REPO / "metrics")
    if len(rel.parts) == 1:
        return rel.stem
    return f"{rel.parts[0]}/{rel.stem.rsplit('-', 1)[0]}"


#: the named studies' metrics folders (metrics/q1, metrics/q23); every other file under metrics/ is the default study's
NAMED = ("q1", "q23")


def from_metrics(study: str) -> None:
    """One table of ``study``'s training runs (``default``, or a named study's folder under metrics/)."""
    rows = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    for f in sorted((REPO / "metrics").rglob("*.json")):
        top = f.relative_to(REPO / "metrics").parts[0]
        if (top if top in NAMED else "default") != study:
            continue
        try:
            m = json.loads(f.read_text())
        except ValueError:
            continue
        if not isinstance(m, dict) or "wall_seconds" not in m:
            continue
        r = rows[kind(f)]
        compile_s = m.get("compile_seconds") or 0.0
        r[0] += 1
        r[1] += compile_s
        r[2] += m["train_seconds"] - compile_s
        r[3] += m["wall_seconds"] - m["train_seconds"]
    total = [sum(r[i] for r in rows.values()) for i in range(4)]
    print("| stage kind | runs | compile (min) | training (min) | test, save, log (min) | per run (s) |")
    print("|---|---|---|---|---|---|")
    for k, (n, c, t, e) in sorted(rows.items(), key=lambda kv: -sum(kv[1][1:])):
        print(f"| {k} | {n} | {c / 60:.1f} | {t / 60:.1f} | {e / 60:.1f} | {(c + t + e) / n:.0f} |")
    n = total[0]
    print(f"| all ({study} study) | {n} | {total[1] / 60:.1f} | {total[2] / 60:.1f} | {total[3] / 60:.1f} | "
          f"{sum(total[1:]) / n:.0f} |")


def _study(root: Path) -> dict:
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for f in ("dvc.yaml", "pyproject.toml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / f, root / f)
    shipped = yaml.safe_load((REPO / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(merge(shipped, TINY), sort_keys=False))
    probe = root.parent / "probe"
    probe.mkdir(exist_ok=True)
    (probe / "sitecustomize.py").write_text(PROBE)
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t", PYTHONPATH=f"{root / 'src'}{os.pathsep}{probe}",
               STUDY_TIMES_LOG=str(root.parent / "times.jsonl"), OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for k in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "KDLAB_IMPORTS_LOG"):
        env.pop(k, None)
    for cmd in (["git", "init", "-q", "-b", "main"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "tiny study"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    return env


def tiny(base: Path) -> None:
    results = {}
    for mode in ("direct", "warm"):
        root = base / mode / "study"
        root.mkdir(parents=True)
        env = _study(root)
        env["KDLAB_WARM"] = "0" if mode == "direct" else "1"
        t0 = time.perf_counter()
        if mode == "warm":  # as make repro does: the server first
            subprocess.run([sys.executable, "-m", "kdlab.warm", "start"], cwd=root, env=env, check=True,
                           capture_output=True)
        t1 = time.perf_counter()
        out = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True)
        t2 = time.perf_counter()
        if out.returncode:
            sys.exit(f"dvc repro ({mode}) failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        log = [json.loads(line) for line in Path(env["STUDY_TIMES_LOG"]).read_text().splitlines()]
        stages = [r for r in log if r["stage"] and "kdlab.warm" not in " ".join(r["argv"])]
        results[mode] = {"server_start": t1 - t0, "repro": t2 - t1, "stages": len(stages),
                         "stage_wall": sum(r["wall"] for r in stages)}
        # then an experiment on the students' loss, on the committed study
        for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "results"]):
            subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
        t3 = time.perf_counter()
        out = subprocess.run(["dvc", "exp", "run", "-S", "loss.alpha=0.7"], cwd=root, env=env, capture_output=True,
                             text=True)
        if out.returncode:
            sys.exit(f"dvc exp run ({mode}) failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        results[mode]["alpha"] = time.perf_counter() - t3
        results[mode]["alpha_stages"] = sorted(set(re.findall(r"Running stage '([^']+)'", out.stdout + out.stderr)))
    d, w = results["direct"], results["warm"]
    n = d["stages"]
    print(f"tiny study, {n} stages, `dvc repro` on {os.cpu_count()} cores, one torch thread per stage")
    print("| | direct (KDLAB_WARM=0) | warm |")
    print("|---|---|---|")
    print(f"| server start before dvc repro (s) | - | {w['server_start']:.1f} |")
    print(f"| dvc repro wall (s) | {d['repro']:.1f} | {w['repro']:.1f} |")
    print(f"| the stages' processes (s) | {d['stage_wall']:.1f} | {w['stage_wall']:.1f} |")
    print(f"| the rest: DVC, interpreter start and exit (s) | {d['repro'] - d['stage_wall']:.1f} | "
          f"{w['repro'] - w['stage_wall']:.1f} |")
    print(f"| per stage: process (s) | {d['stage_wall'] / n:.2f} | {w['stage_wall'] / w['stages']:.2f} |")
    print(f"| per stage: the rest (s) | {(d['repro'] - d['stage_wall']) / n:.2f} | "
          f"{(w['repro'] - w['stage_wall']) / w['stages']:.2f} |")
    print(f"| `dvc exp run -S loss.alpha=0.7` afterwards (s) | {d['alpha']:.1f} | {w['alpha']:.1f} |")
    print(f"total: {d['repro']:.0f} s direct, {w['server_start'] + w['repro']:.0f} s warm "
          f"({d['repro'] / (w['server_start'] + w['repro']):.1f}x); start-up saved per stage: "
          f"{(d['stage_wall'] - w['stage_wall']) / n:.1f} s")
    print(f"the alpha experiment re-ran {len(w['alpha_stages'])} of {n} stages: {', '.join(w['alpha_stages'])}")
    assert d["alpha_stages"] == w["alpha_stages"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("metrics", "tiny"))
    ap.add_argument("--study", choices=("default", *NAMED), action="append",
                    help="metrics: the study to tabulate (repeatable; default: each, one table apiece)")
    ap.add_argument("--dir", type=Path, help="tiny: where to build the studies (default: a temp dir, removed)")
    a = ap.parse_args()
    if a.what == "metrics":
        for i, study in enumerate(a.study or ("default", *NAMED)):
            print(("\n" if i else "") + f"{study} study:\n")
            from_metrics(study)
    elif a.dir:
        tiny(a.dir)
    else:
        with tempfile.TemporaryDirectory() as d:
            tiny(Path(d))


if __name__ == "__main__":
    main()
