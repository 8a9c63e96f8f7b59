"""make smoke (scripts/smoke.py): the whole DAG on tiny data in a fresh repo, committed, with every output a newcomer
opens and the README's compare commands working against it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO


#: this interpreter's kdlab and dvc first on the PATH, as `source .venv/bin/activate` gives a user
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def _dvc(study, *args, check=True):
    res = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=study, capture_output=True, text=True, env=ENV)
    if check:
        assert res.returncode == 0, " ".join(args) + "\n" + res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.mark.slow
def test_smoke_study_produces_the_full_report_and_the_readmes_flows(tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "scripts/smoke.py"), "--dir", str(tmp_path)], capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    study = tmp_path / "study"
    report = (study / "reports/report.md").read_text()
    assert "## Question 1" in report and "studies/q23" in report
    assert report.splitlines()[2].startswith("> **These numbers mean nothing.**")  # the banner, first thing read
    for picture in ("accuracy.png", "learning_curves.png", "agreement_vs_accuracy.png"):
        assert (study / "reports" / picture).stat().st_size > 1000, picture
    page = study / "reports/plots/index.html"
    assert page.exists() and "cdn.jsdelivr" not in page.read_text()
    assert "smoke study done in" in res.stdout and "kdlab ui" in res.stdout
    assert yaml.safe_load((study / "params.yaml").read_text())["train"]["compile"] is False  # eager: runs too short
    assert "up to date" in _dvc(study, "status").stdout
    # committed: nothing left over, so the compare commands have a revision that holds the results
    assert subprocess.run(["git", "status", "--porcelain"], cwd=study, capture_output=True, text=True).stdout == ""

    # the README's experiment and compare commands
    _dvc(study, "exp", "run", "-S", "loss.alpha=0.7")
    diff = json.loads(_dvc(study, "metrics", "diff", "--json").stdout)
    changed = diff["metrics/headline.json"]
    assert changed and all(set(v) == {"old", "new", "diff"} for v in changed.values()), changed
    plots = json.loads(_dvc(study, "plots", "diff", "HEAD", "--json").stdout)["data"]
    assert len(plots) == 3, list(plots)  # every declared plot, each drawn from both revisions' data
    for title, (plot, *_) in plots.items():
        assert set(plot["revisions"]) == {"HEAD", "workspace"}, title
        assert {row["rev"] for row in plot["content"]["data"]["values"]} == {"HEAD", "workspace"}, title

    # make exps: the experiment beside its baseline, in the few columns a comparison needs
    shown = subprocess.run(["make", "-C", str(REPO), "-s", "exps", f"STUDY={study}"], capture_output=True, text=True,
                           env={**ENV, "COLUMNS": "250"}, check=True).stdout
    header = next(line for line in shown.splitlines() if "Experiment" in line).split()
    assert header == ["Experiment", "kd.acc", "kd_correct_only.acc", "q1.kd_correct_only_vs_kd.gain",
                      "q1.kd_correct_only_vs_raw.gain", "q1.kd_vs_raw.gain", "raw.acc", "loss.alpha",
                      "loss.temperature"], header
    assert any("0.7" in line.split() for line in shown.splitlines() if "[" in line), shown
    # back to the commit (the applied experiment discarded: every tracked file touched, so git compares contents)
    subprocess.run("git ls-files -z | xargs -0 touch && git checkout -- .", shell=True, cwd=study, check=True, env=ENV)
    _dvc(study, "checkout", "-q")
    assert "up to date" in _dvc(study, "status").stdout
    # a failed experiment, and the README's one command that puts the workspace back (make restore)
    bad = _dvc(study, "exp", "run", "-S", "loss.alpha=1.5", check=False)
    assert bad.returncode != 0 and "loss.alpha: must be in [0, 1], got 1.5" in bad.stdout + bad.stderr
    assert "up to date" not in _dvc(study, "status").stdout
    subprocess.run(["make", "-C", str(REPO), "-s", "restore", f"STUDY={study}"], check=True, capture_output=True,
                   env=ENV)
    assert "up to date" in _dvc(study, "status").stdout
    assert subprocess.run(["git", "status", "--porcelain"], cwd=study, capture_output=True, text=True).stdout == ""
    assert yaml.safe_load((study / "params.yaml").read_text())["loss"]["alpha"] == 0.5
