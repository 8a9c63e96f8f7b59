"""`kdlab ui` serves the project's MLflow store (real server process, loopback only)."""
import json
import os
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
    from kdlab import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, PYTHONPATH=str(REPO / "src"))
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        with tracking.run("teacher", "teacher", {"loss.alpha": 0.5}) as run:
            run.log({"val_acc": 0.5}, step=1)
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kdlab", "ui", "--port", str(port)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10"
        deadline, body = time.time() + 90, None
        while time.time() < deadline and body is None:
            try:
                body = json.load(urllib.request.urlopen(url, timeout=5))
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
                time.sleep(1)
        assert body is not None, "mlflow ui did not answer within 90 s"
        names = {e["name"] for e in body["experiments"]}
        assert "kdlab" in names
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
