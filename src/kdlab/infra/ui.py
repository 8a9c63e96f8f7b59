"""``kdlab ui``: MLflow's server over the project's store, on 127.0.0.1, as one process group that this process owns.

- The port is taken before anything is printed: a busy port is refused in one line (exit 1), not announced and
  then abandoned by the server.
- The server (``mlflow ui`` and the uvicorn worker it starts) runs in its own session; SIGTERM, SIGHUP or Ctrl-C to
  ``kdlab ui`` stops the whole group, and a server that stops by itself ends ``kdlab ui`` with its code.
- Its app is :mod:`kdlab.infra.ui_app` (the ``mlflow.app`` entry point ``kdlab``): MLflow's own, with the bare
  address sent to kdlab's runs in model-training mode.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

HOME_ENV = "KDLAB_UI_HOME"  # the UI's path to kdlab's runs view, for ui_app's redirect of "/"


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop(signum)


def port_free(port: int) -> bool:
    """Whether 127.0.0.1:``port`` can be listened on now: a listener there makes this False; connections of an
    earlier server left in TIME_WAIT do not (SO_REUSEADDR, as uvicorn binds: on Linux it never binds over a
    listener)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stop_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM to ``proc``'s process group, SIGKILL after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def serve(port: int) -> int:
    from kdlab.infra import tracking

    if not port_free(port):
        print(f"kdlab ui: port {port} on 127.0.0.1 is in use (another kdlab ui or MLflow server?); "
              f"stop it or pick another: kdlab ui --port {port + 1}", file=sys.stderr)
        return 1
    views, base = tracking.ui_paths(), f"http://127.0.0.1:{port}/"
    # no job workers (about 3 GB), no telemetry (and no banner asking about it), no Starlette deprecation blocks
    warn = ",".join(w for w in (os.environ.get("PYTHONWARNINGS"), "ignore::DeprecationWarning") if w)
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true",
               PYTHONWARNINGS=warn, **{HOME_ENV: views["kdlab-runs"]})
    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--app-name", "kdlab", "--backend-store-uri", tracking.tracking_uri(),
           "--default-artifact-root", (tracking.root() / "mlartifacts").as_uri()]
    print(f"MLflow UI over {tracking.tracking_uri()}:\n  every training run:  {base} (= {base}{views['kdlab-runs']})\n"
          f"  the studies:         {base}{views['kdlab-studies']}", flush=True)
    handlers = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        code = proc.wait()
        print(f"kdlab ui: the MLflow server stopped (exit {code})", file=sys.stderr)
        return code or 1
    except (_Stop, KeyboardInterrupt):
        return 0
    finally:
        stop_group(proc)
        for s, h in handlers.items():
            signal.signal(s, h)
