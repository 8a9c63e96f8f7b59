"""Shared tracking: a real ``mlflow server`` (sqlite backend, proxied artifacts directory) on 127.0.0.1, a tiny
stage run against it through ``MLFLOW_TRACKING_URI=http://...``, and the runs and an artifact found through
the server's REST API."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import study_dir, tiny

TINY = tiny({"data": {"synthetic": {"n_train": 600, "image_size": 12}}, "teacher": {"width": 0.25}})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(base: str, path: str, **query) -> dict:
    with urllib.request.urlopen(f"{base}{path}?{urllib.parse.urlencode(query)}", timeout=30) as r:
        return json.loads(r.read())


def _post(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _start_server(tmp: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}", "--artifacts-destination", str(tmp / "artifacts")],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        assert proc.poll() is None, (tmp / "server.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(1)
    proc.kill()
    raise AssertionError("mlflow server did not answer /health within 120 s:\n" + (tmp / "server.log").read_text()[-3000:])


def test_a_stage_logs_to_a_shared_mlflow_server(tmp_path):
    port = _free_port()
    server = _start_server(tmp_path, port)
    base = f"http://127.0.0.1:{port}"
    try:
        study = tmp_path / "study"
        env = study_dir(study, TINY, tracking=base)
        out = subprocess.run([sys.executable, "-m", "kdlab", "train", "teacher"], cwd=study, env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        assert not (study / "mlflow.db").exists() and not (study / "mlartifacts").exists()  # nothing local

        exp = _get(base, "/api/2.0/mlflow/experiments/get-by-name", experiment_name="kdlab")["experiment"]
        assert exp["artifact_location"].startswith("mlflow-artifacts:")  # the server's proxied store
        runs = _post(base, "/api/2.0/mlflow/runs/search",
                     {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
        by_role = {}
        for r in runs:
            tags = {t["key"]: t["value"] for t in r["data"].get("tags", [])}
            by_role.setdefault(tags.get("kdlab.role"), []).append((r, tags))
        assert sorted(by_role) == ["study", "teacher"] and len(by_role["teacher"]) == 1
        teacher, tags = by_role["teacher"][0]
        assert teacher["info"]["status"] == "FINISHED"
        assert tags["mlflow.parentRunId"] == by_role["study"][0][0]["info"]["run_id"]
        metrics = {m["key"]: m["value"] for m in teacher["data"]["metrics"]}
        local = json.loads((study / "metrics/teacher.json").read_text())
        assert metrics["test_acc"] == pytest.approx(local["test_acc"], rel=1e-6) and tags["best_epoch"] == "2"  # metadata: a tag

        run_id = teacher["info"]["run_id"]
        listed = _get(base, "/api/2.0/mlflow/artifacts/list", run_id=run_id)
        assert [f["path"] for f in listed["files"]] == ["metrics.json"]  # the same name in every run
        with urllib.request.urlopen(f"{base}/get-artifact?" + urllib.parse.urlencode(
                {"run_id": run_id, "path": "metrics.json"}), timeout=30) as r:
            assert json.loads(r.read()) == local
        # it and the logged model (torch.export's pt2) are in the server's artifacts directory, not beside the study
        stored = {p.name for p in (tmp_path / "artifacts").rglob("*") if p.is_file()}
        assert {"metrics.json", "model.pt2", "MLmodel"} <= stored, sorted(stored)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
