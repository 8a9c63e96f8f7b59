"""Screenshots of kdlab's MLflow UI, taken in headless Chromium from a study's own store.

    python scripts/mlflow_screenshots.py --study smoke/study --out reports

starts `kdlab ui` in the study (its MLflow store), opens five pages and writes:

- ``mlflow_runs.png``: `kdlab ui`'s bare address (its first view), every training run grouped by arm with the columns that
  tell runs apart (method, seed, alpha, temperature) and their results (test accuracy, agreement);
- ``mlflow_run.png``: a distilled student's run page (description, params, metrics, dataset, logged model);
- ``mlflow_run_charts.png``: its charts: the per-step training loss next to the per-epoch curves;
- ``mlflow_compare.png``: MLflow's comparison of the raw and the distilled student of the first seed;
- ``mlflow_report.png``: the report run's ``report.html`` (the report with its pictures) in the artifact viewer.

It needs Debian's ``chromium-headless-shell`` (``make browser``). Nothing is asserted here: look at the pictures
(tests/test_ui.py checks the same pages' content).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# the charts draw only once the compositor has run every stage
BROWSER = ["chromium-headless-shell", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--run-all-compositor-stages-before-draw", "--virtual-time-budget=60000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(study: Path, port: int) -> tuple[subprocess.Popen, dict[str, str]]:
    """`kdlab ui` in ``study``, once it answers; returns the process and {view: URL} from what it printed."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), KDLAB_WARM="0")  # this checkout's kdlab ui
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "kdlab", "ui", "--port", str(port)], cwd=study, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    views, deadline = {}, time.time() + 120
    while len(views) < 2:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"kdlab ui exited with {proc.wait()}")
        if "http://" in line:
            views[line.split(":", 1)[0].strip()] = line[line.index("http://"):].split()[0]
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
            return proc, views
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                stop(proc)
                raise RuntimeError("the MLflow UI did not answer within 120 s")
            time.sleep(1)


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def pages(study: Path, port: int, views: dict[str, str]) -> dict[str, str]:
    """{file name: URL} of the five pages, the run ids read from the study's store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{study / 'mlflow.db'}")
    exp = client.get_experiment_by_name("kdlab").experiment_id
    runs = {r.info.run_name: r.info.run_id for r in client.search_runs([exp], max_results=5000,
                                                                         order_by=["attributes.start_time ASC"])}
    seed = next(n.split("-")[-1] for n in runs if n.startswith("kd-"))
    raw, kd = runs[f"raw-{seed}"], runs[f"kd-{seed}"]
    base, mode = f"http://127.0.0.1:{port}/#", "workflowType=machine_learning"  # not MLflow 3's GenAI mode
    return {
        "mlflow_runs.png": next(v for k, v in views.items() if "training run" in k),
        "mlflow_run.png": f"{base}/experiments/{exp}/runs/{kd}?{mode}",
        "mlflow_run_charts.png": f"{base}/experiments/{exp}/runs/{kd}/model-metrics?{mode}",
        "mlflow_compare.png": (f"{base}/compare-runs?runs={json.dumps([raw, kd])}&experiments={json.dumps([exp])}"
                               f"&{mode}"),
        "mlflow_report.png": f"{base}/experiments/{exp}/runs/{runs['report']}/artifacts/report.html?{mode}",
    }


def shoot(url: str, out: Path, size: str = "2000,1200") -> None:
    subprocess.run([*BROWSER, f"--window-size={size}", f"--screenshot={out}", url], capture_output=True,
                   timeout=180, check=False)
    if not out.exists() or out.stat().st_size < 10_000:
        raise RuntimeError(f"no screenshot of {url} (is chromium-headless-shell installed? make browser)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", type=Path, default=REPO / "smoke" / "study", help="a study directory with its "
                    "mlflow.db (default: make smoke's, smoke/study)")
    ap.add_argument("--out", type=Path, default=REPO / "reports", help="where the PNGs go (default reports/)")
    a = ap.parse_args()
    study = a.study.resolve()
    if not (study / "mlflow.db").exists():
        sys.exit(f"{study / 'mlflow.db'} not found: run a study there first (make smoke)")
    port = free_port()
    proc, views = start_ui(study, port)
    try:
        a.out.mkdir(parents=True, exist_ok=True)
        for name, url in pages(study, port, views).items():
            # the charts and the comparison's params and metrics tables run long
            tall = name in ("mlflow_run_charts.png", "mlflow_compare.png")
            shoot(url, a.out / name, "2000,2400" if tall else "2000,1200")
            print(f"{a.out / name}  <- {url}")
    finally:
        stop(proc)


if __name__ == "__main__":
    main()
