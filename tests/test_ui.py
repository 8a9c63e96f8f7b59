"""`kdlab ui` serves the project's MLflow store (real server process, loopback only) and opens it on kdlab's view
(headless Chromium)."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from conftest import REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_the_study_store(tmp_path):
    from kdlab.infra import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, PYTHONPATH=str(REPO / "src"))
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        for variant, acc in (("raw", 0.81), ("kd", 0.84)):
            with tracking.run("student", f"{variant}-0", {"loss.alpha": 0.5}, {"variant": variant, "seed": 0}) as run:
                run.log({"val_acc": acc - 0.01}, step=1)
                run.log({"test_acc": acc})
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kdlab", "ui", "--port", str(port)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True)
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10"
        deadline, body = time.time() + 90, None
        while time.time() < deadline and body is None:
            try:
                body = json.load(urllib.request.urlopen(url, timeout=5))
            except OSError:
                assert proc.poll() is None, proc.stdout.read()[-3000:]
                time.sleep(1)
        assert body is not None, "mlflow ui did not answer within 90 s"
        names = {e["name"] for e in body["experiments"]}
        assert "kdlab" in names
        # kdlab ui's first link: the training runs in model-training mode, kdlab's columns, a row per variant
        printed = proc.stdout.readline() + proc.stdout.readline() + proc.stdout.readline()
        url = re.search(r"every training run: +(http://\S+)", printed).group(1)
        assert "workflowType=machine_learning" in url and "viewStateShareKey=kdlab-runs" in url, printed
        dom = subprocess.run(["chromium-headless-shell", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=30000",
                              "--run-all-compositor-stages-before-draw", "--window-size=2000,1000", "--dump-dom", url],
                             capture_output=True, text=True, timeout=180).stdout
        columns = set(re.findall(r'col-id="([^"]+)"', dom))
        assert {"metrics.`test_acc`", "params.`loss.alpha`", "params.`seed`"} <= columns, sorted(columns)
        assert ">raw-0<" in dom and ">kd-0<" in dom and "Model training" in dom
        assert "Group:" in dom  # grouped by the variant param
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
