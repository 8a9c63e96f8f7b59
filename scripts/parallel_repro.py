"""``dvc repro`` of one pipeline with several stages at a time, on a machine where one stage cannot use every core.

    python scripts/parallel_repro.py studies/q23/dvc.yaml [--jobs 2] [--threads 1] [--dry]   # at the repository root

DVC runs one stage at a time (it holds the repository's lock for the whole ``repro``). On the 2-core CPU a student of
the named studies gains little from its second thread: two students with one thread each train 1.54x as many runs
per hour as one with two (AMD EPYC AVX512-BF16; ``raw.random-e30`` of studies/q23, 68.4 s for the pair against 52.8 s
alone). This runs the pipeline's stages that ``dvc status`` shows changed (and everything downstream of them) in
dependency order, ``--jobs`` at a time, each stage's own ``cmd`` in its ``wdir`` with ``OMP_NUM_THREADS=--threads``
and ``DVC_STAGE`` set as ``dvc repro`` sets it; as each stage ends it is recorded with ``dvc commit`` (one at a time),
which hashes its deps and outputs into dvc.lock exactly as ``dvc repro`` would after running it. A failed stage
stops the scheduling of new ones; the stages already recorded stay recorded, so a rerun starts where this one ended.
Results are those of the stages' commands: the thread count is not a param (bf16 sums may differ in the last bits
from a run with two threads, as between machines).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

def plan(repo_root: Path, pipeline: str) -> tuple[dict, dict]:
    """(stage address -> (cmd, wdir), stage address -> the addresses it depends on) of the stages to run, in the
    order the pipeline's file lists them."""
    from dvc.repo import Repo

    repo = Repo(str(repo_root))
    stages = {s.addressing: s for s in repo.stage.collect(pipeline)}
    graph = repo.index.graph  # an edge (a, b): stage a depends on stage b
    ups = {addr: {u.addressing for u in graph.successors(s) if u.addressing in stages} for addr, s in stages.items()}
    res = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", pipeline], cwd=repo_root,
                         capture_output=True, text=True, check=True)
    changed = set(json.loads(res.stdout or "{}")) & set(stages)
    todo, grew = set(changed), True
    while grew:  # everything downstream of a stage that runs runs too
        more = {a for a, u in ups.items() if u & todo} - todo
        todo |= more
        grew = bool(more)
    cmds = {a: (stages[a].cmd if isinstance(stages[a].cmd, str) else " && ".join(stages[a].cmd), stages[a].wdir)
            for a in stages if a in todo}
    return cmds, {a: ups[a] & todo for a in todo}


def commit(root: Path, addr: str, tries: int = 20) -> int:
    """``dvc commit`` the stage, waiting for the repository's lock while another dvc command (a ``dvc status``, a
    push) holds it."""
    for _ in range(tries):
        res = subprocess.run([sys.executable, "-m", "dvc", "commit", "-f", "-q", addr], cwd=root, capture_output=True,
                             text=True)
        if res.returncode == 0 or "Unable to acquire lock" not in res.stdout + res.stderr:
            if res.returncode:
                print(res.stdout + res.stderr, flush=True)
            return res.returncode
        time.sleep(3)
    return res.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pipeline")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each stage")
    ap.add_argument("--dry", action="store_true", help="print the stages it would run")
    ap.add_argument("--repo", type=Path, default=Path.cwd(), help="the repository (default: here)")
    args = ap.parse_args()
    root = args.repo.resolve()
    cmds, ups = plan(root, args.pipeline)
    print(f"{len(cmds)} stages to run, {args.jobs} at a time", flush=True)
    if args.dry:
        for a in sorted(cmds):
            print(a)
        return 0
    commit_lock = threading.Lock()
    done: set[str] = set()
    failed: list[str] = []

    def run(addr: str) -> tuple[str, int, float]:
        cmd, wdir = cmds[addr]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), DVC_STAGE=addr.split(":")[-1])
        start = time.perf_counter()
        log = root / ".dvc" / "tmp" / "parallel_repro" / f"{addr.replace('/', '_').replace(':', '_')}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as out:
            rc = subprocess.run(cmd, shell=True, cwd=wdir, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
        seconds = time.perf_counter() - start
        if rc == 0:
            with commit_lock:
                rc = commit(root, addr)
        return addr, rc, seconds

    order = list(cmds)  # the file's order: a stage group's runs before the next group's
    running = {}
    began = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        while True:
            if not failed:
                for addr in order:
                    if len(running) >= args.jobs:
                        break
                    if addr not in done and addr not in running.values() and ups[addr] <= done:
                        running[pool.submit(run, addr)] = addr
            if not running:
                break
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for f in finished:
                addr, rc, seconds = f.result()
                del running[f]
                if rc == 0:
                    done.add(addr)
                    print(f"[{len(done)}/{len(cmds)}, {(time.perf_counter() - began) / 60:.1f} min] {addr}: "
                          f"{seconds:.0f} s", flush=True)
                else:
                    failed.append(addr)
                    print(f"FAILED {addr} (exit {rc}); log in .dvc/tmp/parallel_repro/", flush=True)
    print(f"{len(done)} of {len(cmds)} stages run and recorded in {(time.perf_counter() - began) / 60:.1f} min"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed or len(done) < len(cmds) else 0


if __name__ == "__main__":
    sys.exit(main())
