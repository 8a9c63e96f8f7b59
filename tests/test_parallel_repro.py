"""scripts/parallel_repro.py: a pipeline's stages run two at a time in dependency order and recorded with dvc
commit, in a real git + DVC repository; the lock is the one ``dvc repro`` writes, a second run has nothing to do,
and a failing stage stops the scheduling of new ones while what finished stays recorded."""
import json
import os
import subprocess
import sys

import yaml
from conftest import REPO

SCRIPT = REPO / "scripts/parallel_repro.py"
#: a diamond: b and c read a, d reads b and c; each stage writes its output and when it ran (for the order)
PIPELINE = {"stages": {
    "a": {"cmd": "echo a > a.txt && date +%s.%N > a.t", "outs": ["a.txt", {"a.t": {"cache": False}}]},
    "b": {"cmd": "sleep 1 && cat a.txt > b.txt && echo b >> b.txt && date +%s.%N > b.t", "deps": ["a.txt"],
          "outs": ["b.txt", {"b.t": {"cache": False}}]},
    "c": {"cmd": "sleep 1 && cat a.txt > c.txt && echo c >> c.txt && date +%s.%N > c.t", "deps": ["a.txt"],
          "outs": ["c.txt", {"c.t": {"cache": False}}]},
    "d": {"cmd": "cat b.txt c.txt > d.txt", "deps": ["b.txt", "c.txt"], "outs": ["d.txt"]},
}}


def _repo(path, pipeline=PIPELINE):
    path.mkdir()
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t", DVC_NO_ANALYTICS="1")
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=path, check=True, env=env)
    (path / "dvc.yaml").write_text(yaml.safe_dump(pipeline))
    return env


def _status(path, env) -> dict:
    res = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=path, env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(res.stdout or "{}")


def _outs(lock: dict) -> dict:
    return {name: [(o["path"], o["md5"]) for o in s["outs"] if not o["path"].endswith(".t")]
            for name, s in lock["stages"].items()}


def test_stages_run_two_at_a_time_in_order_and_lock_as_dvc_repro_does(tmp_path):
    par, seq = tmp_path / "par", tmp_path / "seq"
    env = _repo(par)
    _repo(seq)
    res = subprocess.run([sys.executable, str(SCRIPT), "dvc.yaml", "--jobs", "2"], cwd=par, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4 of 4 stages run and recorded" in res.stdout
    assert (par / "d.txt").read_text() == "a\nb\na\nc\n"
    t = {s: float((par / f"{s}.t").read_text()) for s in "abc"}
    assert t["a"] < min(t["b"], t["c"]) and abs(t["b"] - t["c"]) < 0.9  # b and c ran side by side, after a
    assert _status(par, env) == {}  # every stage recorded: dvc has nothing to do
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=seq, env=env, check=True, timeout=300)
    locks = [yaml.safe_load((r / "dvc.lock").read_text()) for r in (par, seq)]
    assert _outs(locks[0]) == _outs(locks[1])
    assert {k: v.get("deps") for k, v in locks[0]["stages"].items()} == {k: v.get("deps") for k, v in locks[1]["stages"].items()}
    again = subprocess.run([sys.executable, str(SCRIPT), "dvc.yaml"], cwd=par, env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and "0 stages to run" in again.stdout


def test_a_failing_stage_stops_new_ones_and_keeps_what_finished(tmp_path):
    broken = yaml.safe_load(yaml.safe_dump(PIPELINE))
    broken["stages"]["c"]["cmd"] = "exit 3"
    root = tmp_path / "r"
    env = _repo(root, broken)
    res = subprocess.run([sys.executable, str(SCRIPT), "dvc.yaml", "--jobs", "2"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and "FAILED c (exit 3)" in res.stdout, res.stdout
    assert not (root / "d.txt").exists()  # d waits for c, which failed
    status = _status(root, env)
    assert "a" not in status and "b" not in status and {"c", "d"} <= set(status)
