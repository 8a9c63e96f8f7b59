"""`kdlab ui` serves the project's MLflow store (real server process, loopback only), opens it on kdlab's view at
its bare address (headless Chromium), stops every process it started on SIGTERM, and refuses a busy port."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from conftest import REPO, proc_stat
from kdlab.infra.ui import port_free


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
        for method, acc in (("raw", 0.81), ("kd", 0.84)):
            with tracking.run("student", f"{method}-0", {"loss.alpha": 0.5}, {"method": method, "arm": method,
                                                                             "seed": 0}) as run:
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
        # kdlab ui's first link is the bare address, which opens the training runs in model-training mode, kdlab's
        # columns, a row per arm (MLflow's own home page is its GenAI view)
        printed = proc.stdout.readline() + proc.stdout.readline() + proc.stdout.readline()
        url = re.search(r"every training run: +(http://\S+)", printed).group(1)
        assert url == f"http://127.0.0.1:{port}/", printed
        view = re.search(r"\(= (http://\S+)\)", printed).group(1)
        assert "workflowType=machine_learning" in view and "viewStateShareKey=kdlab-runs" in view, printed
        dom = subprocess.run(["chromium-headless-shell", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=30000",
                              "--run-all-compositor-stages-before-draw", "--window-size=2000,1000", "--dump-dom", url],
                             capture_output=True, text=True, timeout=180).stdout
        columns = set(re.findall(r'col-id="([^"]+)"', dom))
        assert {"metrics.`test_acc`", "params.`loss.alpha`", "params.`seed`"} <= columns, sorted(columns)
        assert ">raw-0<" in dom and ">kd-0<" in dom and "Model training" in dom
        assert "Group:" in dom and "arm: kd" in dom.replace("&nbsp;", " "), re.findall(r"Group:.{0,200}", dom)  # by arm
        # SIGTERM to kdlab ui alone (as a service manager or `kill` sends it) stops the server it started
        started = _descendants(proc.pid)
        assert len(started) >= 2, started  # mlflow ui and its uvicorn
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        deadline = time.time() + 30
        while time.time() < deadline and _alive(started):
            time.sleep(0.5)
        assert not _alive(started), f"left running after SIGTERM: {_alive(started)}"
        assert port_free(port)
    finally:
        for pid in [proc.pid, *_alive(_descendants(proc.pid))]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)


def test_ui_refuses_a_busy_port_in_one_line(tmp_path):
    """Before: the links were printed, then the server said "Address already in use" and kdlab ui exited 0."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", PYTHONPATH=str(REPO / "src"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "kdlab", "ui", "--port", str(port)], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    assert f"port {port}" in out.stderr and "in use" in out.stderr, out.stderr
    assert "http://" not in out.stdout, out.stdout  # no links to a server that is not kdlab's


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                ppid = int(proc_stat(int(stat))[1])
            except (OSError, ValueError, IndexError):
                continue
            tree.setdefault(ppid, []).append(int(stat))
    return tree


def _descendants(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (not gone, not a zombie)."""
    out = []
    for pid in pids:
        try:
            if proc_stat(pid)[0] != "Z":
                out.append(pid)
        except OSError:
            pass
    return out

