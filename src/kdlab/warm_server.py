"""The warm server (kdlab.warm has the why and the client): imports what every stage imports, then forks one
child per client, which becomes the client's process (argv, environment, working directory, standard
streams, own process group) and runs the command with :func:`kdlab.cli.run`.

    python -m kdlab.warm_server SOCKET     # started by kdlab.warm, in the background
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

from kdlab import cli
from kdlab.warm import peer_uid, recv, send

#: imported by the server once, before it serves: what a stage would otherwise import itself
PRELOAD = ("torch", "torch._dynamo", "torch.optim", "torchvision", "numpy", "yaml", "mlflow", "mlflow.tracking",
           "mlflow.store.tracking.sqlalchemy_store", "mlflow.store.db.utils", "sqlalchemy", "alembic",
           "torch_pruning", "matplotlib", "scipy.stats", "pandas",
           "kdlab.infra.tracking", "kdlab.core.data", "kdlab.core.features", "kdlab.core.surgery", "kdlab.core.channels",
           "kdlab.distill", "kdlab.pipeline.check", "kdlab.pipeline.train", "kdlab.pipeline.stages",
           "kdlab.pipeline.cache", "kdlab.analysis.q1_design", "kdlab.analysis.q23_design", "kdlab.analysis.stats",
           "kdlab.analysis.present", "kdlab.analysis.evaluate", "kdlab.analysis.report", "kdlab.analysis.results",
           "kdlab.analysis.sweep", "kdlab.analysis.readme")


def _child(request: dict, fds: list[int], server_files: list) -> None:
    """In the forked child: become the client's process and run its command; never returns."""
    code = 1
    try:
        os.setpgid(0, 0)
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the server
        for f in server_files:  # the listener, the selector, every client's connection: the server's, not ours
            f.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(s, signal.SIG_DFL)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["kdlab", *request["argv"]]
        for stream in (sys.stdout, sys.stderr):
            stream.reconfigure(line_buffering=stream.isatty() or stream is sys.stderr)
        code = cli.run(request["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(path: str) -> None:
    """Import everything a stage needs, then fork one child per client until idle."""
    import importlib
    import selectors

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional package (torch_pruning, scipy) absent: the child imports what it needs
            pass
    from kdlab import distill
    from kdlab.analysis import present

    for name in distill.names():  # method files are imported on first use
        importlib.import_module(f"kdlab.distill.{name}")
    present.plt()  # pyplot on the Agg backend, as the report stage sets it
    d, sock_path = Path(path).parent, Path(path)
    starting = sock_path.with_suffix(".starting")
    import threading

    if threading.active_count() != 1:  # a fork copies only this thread, not the locks another one holds
        print(f"kdlab warm: {threading.active_count()} Python threads after the imports; not serving", file=sys.stderr)
        starting.unlink(missing_ok=True)
        return
    idle = float(os.environ.get("KDLAB_WARM_IDLE", "300"))
    tmp = d / f"{sock_path.stem}.{os.getpid()}.tmp"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp))
    listener.listen(16)
    os.replace(tmp, sock_path)  # clients connect only once the server is warm
    starting.unlink(missing_ok=True)
    inode = sock_path.stat().st_ino
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    children: dict[int, tuple] = {}  # pid -> (connection, request, start)
    last = time.monotonic()
    try:
        while True:
            for sk, _ in sel.select(timeout=0.2):
                if sk.fileobj is listener:
                    conn, _ = listener.accept()
                    _accept(conn, [listener, sel, *(c for c, _, _ in children.values())], sel, children)
                else:  # a client's connection closed (or it wrote): its child must not outlive it
                    conn = sk.fileobj
                    if not conn.recv(1, socket.MSG_PEEK):
                        pid = sk.data
                        sel.unregister(conn)
                        try:
                            os.killpg(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
            for pid in list(children):
                done, status = os.waitpid(pid, os.WNOHANG)
                if not done:
                    continue
                conn, request, started = children.pop(pid)
                msg = ({"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status)
                       else {"exit": os.WEXITSTATUS(status)})
                command = " ".join(request["argv"])
                print(f"served {command} in {request['cwd']} exit {msg.get('exit', -msg.get('signal', 0))} "
                      f"after {time.monotonic() - started:.2f} s", flush=True)
                try:
                    sel.unregister(conn)
                except KeyError:
                    pass
                try:
                    send(conn, msg)
                except OSError:
                    pass
                conn.close()
                last = time.monotonic()
            if not children and time.monotonic() - last > idle:
                break
            try:  # another server took the name (or it was removed): leave when idle
                if sock_path.stat().st_ino != inode:
                    idle = 0
            except FileNotFoundError:
                idle = 0
    finally:
        try:
            if sock_path.stat().st_ino == inode:
                sock_path.unlink()
        except FileNotFoundError:
            pass


def _accept(conn: socket.socket, server_files: list, sel, children: dict) -> None:
    import selectors

    conn.settimeout(10)
    try:  # hello first: the client sends its descriptors only to a server that answers (not a stopped one)
        if peer_uid(conn) == os.getuid():
            send(conn, {"hello": os.getpid()})
            request, fds = recv(conn, with_fds=3)
        else:
            request, fds = None, []
    except (OSError, ValueError):
        request, fds = None, []
    if request is None or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        conn.close()
        return
    conn.settimeout(None)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child(request, fds, [*server_files, conn])
    try:  # the child does it too; whichever runs first, signals to the group reach it from now on
        os.setpgid(pid, pid)
    except OSError:
        pass
    for fd in fds:
        os.close(fd)
    children[pid] = (conn, request, time.monotonic())
    try:
        send(conn, {"pid": pid})
    except OSError:
        pass
    sel.register(conn, selectors.EVENT_READ, pid)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m kdlab.warm_server SOCKET (started by kdlab itself)")
    serve(sys.argv[1])
