"""make smoke (scripts/smoke.py): the whole DAG on tiny data in a fresh repo, with every output a newcomer opens."""
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_smoke_study_produces_the_full_report(tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "scripts/smoke.py"), "--dir", str(tmp_path)], capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    study = tmp_path / "study"
    report = (study / "reports/report.md").read_text()
    assert "## Question 1" in report and "studies/q23" in report
    for picture in ("accuracy.png", "learning_curves.png", "agreement_vs_accuracy.png"):
        assert (study / "reports" / picture).stat().st_size > 1000, picture
    page = study / "reports/plots/index.html"
    assert page.exists() and "cdn.jsdelivr" not in page.read_text()
    assert "smoke study done in" in res.stdout and "kdlab ui" in res.stdout
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=study, capture_output=True, text=True)
    assert "up to date" in status.stdout, status.stdout + status.stderr
