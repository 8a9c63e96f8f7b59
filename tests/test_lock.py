"""dvc.lock matches the committed code and params (issue 14, class 9)."""
import json
import os
import subprocess
import sys

from conftest import REPO


def test_a_fresh_clone_has_no_code_or_params_dependency_modified(tmp_path):
    """dvc.lock was recorded over the committed code and params: in a clone of HEAD, `dvc status` may report
    outputs that are not pulled, never a src/ file or a param (of params.yaml or a named study's params file) of a
    stage the lock holds as changed (a stage that never ran is the pipeline's to run). The lock holds stages."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    res = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=clone, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    import yaml

    locked = set()  # stages a lock holds: a stage that never ran (a re-designed study's) has nothing stale to show
    for lock in [clone / "dvc.lock", *sorted(clone.glob("studies/*/dvc.lock"))]:
        prefix = "" if lock.parent == clone else f"{lock.parent.relative_to(clone).as_posix()}/dvc.yaml:"
        locked |= {prefix + name for name in (yaml.safe_load(lock.read_text()) or {}).get("stages", {})}
    changed = {}
    for stage, entries in json.loads(res.stdout or "{}").items():
        if stage not in locked:
            continue
        for entry in entries:
            if not isinstance(entry, dict):  # "changed command", "always changed": the stage itself
                changed.setdefault(stage, []).append(entry)
                continue
            for path, what in entry.get("changed deps", {}).items():
                if path.startswith("src/") or path.endswith("params.yaml"):  # a named study's params too
                    changed.setdefault(stage, []).append((path, what))
    assert not changed, changed
    assert {"teacher", "studies/q1/dvc.yaml:q1_pilot", "studies/q23/dvc.yaml:q23_cache"} <= locked


def test_the_default_dvc_remote_is_a_directory_git_tracks_inside_the_repo():
    """What `dvc push` stores travels with `git clone` (issue 28): the default remote resolves inside the repo, to
    a path git does not ignore."""
    from dvc.repo import Repo

    config = Repo(str(REPO)).config
    url = config["remote"][config["core"]["remote"]]["url"]
    remote = (REPO / ".dvc" / url).resolve()
    assert remote.parent == REPO and remote.is_dir(), remote
    probe = remote.relative_to(REPO) / "files/md5/ab/cdef"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(probe)], cwd=REPO, timeout=60)
    assert ignored.returncode == 1, f"git ignores {probe}"


def test_each_lock_holds_only_stages_its_pipeline_defines():
    """DVC adds and updates lock entries but never drops one: the default study's lock kept 54 entries of the
    question-2/3 stages that moved to studies/q23 (issue 28). A lock entry describes a run of the pipeline, so
    none may name a stage its dvc.yaml does not define."""
    import yaml

    for pipeline in ("dvc.yaml", "studies/q1/dvc.yaml", "studies/q23/dvc.yaml"):
        defined = set(yaml.safe_load((REPO / pipeline).read_text())["stages"])
        lock = yaml.safe_load((REPO / pipeline).with_name("dvc.lock").read_text())["stages"]
        stray = sorted(name for name in lock if name.split("@")[0] not in defined)
        assert not stray, (pipeline, stray[:10])
        assert lock, pipeline
