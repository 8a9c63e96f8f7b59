"""Warm start: a stage process that skips kdlab's start-up (speed).

Every DVC stage is one ``kdlab <command>`` process, and before it trains a step it pays a fixed cost:
importing torch and mlflow, importing ``torch._dynamo`` (pulled in by the first optimizer), SQLAlchemy's
set-up of the MLflow store. On the 2-core CPU that is about 13 s of a tiny stage's 14 (README, Speed).

So ``kdlab <stage>`` run as a program (by DVC, a shell, a test) is a thin client: it connects to a warm
server that has imported all of that once, and the server forks a child that runs the command exactly as
the process would have run it: the client's argv, environment, working directory and standard streams
(passed as file descriptors), its own process group; the client forwards SIGINT, SIGTERM and SIGHUP to it,
and exits with the child's status. A child dies with its client (SIGKILL of its group as soon as the
client's connection closes) and with its server. Nothing a run computes changes (the same code, seeds and
threads; tests/test_warm.py checks that a study's outputs are bit-identical either way).

- The server is keyed by a digest of kdlab's source files, the interpreter, the installed torch / mlflow,
  and the environment variables read at import time (threads, devices, paths): edited code or another
  environment gets another server, never a stale one. Its socket lives in a directory only this user can
  enter, and it serves only this user (SO_PEERCRED).
- The first ``kdlab`` without a server starts one (:mod:`kdlab.warm_server`) in the background and runs
  directly; the server exits after ``KDLAB_WARM_IDLE`` seconds (default 300) with no child running.
- Opt-in: only with ``KDLAB_WARM=1`` (``make smoke`` sets it for its throwaway study); otherwise, and always for
  ``bench`` (it times processes) and ``ui``, under torchrun (``LOCAL_RANK``) and when ``KDLAB_IMPORTS_LOG`` is
  set (the test that records which source files each stage imports), every command is the user's own process.
  A forked child is not quite that process: it keeps what it inherited from the server where the client
  differs in something a child cannot adopt. The key covers what is known of that (umask, niceness,
  affinity, resource limits, namespaces, cgroup, the import-time environment including ``KDLAB_*``, the
  preloaded packages), which is why the launcher is opt-in rather than the default (issue 31).
- The server imports and never computes: it runs no tensor operation and starts no Python thread (its
  ``serve`` checks), so a fork copies no lock another thread holds. The native threads that imports start
  (OpenBLAS's pool from numpy and scipy, a jemalloc background thread) have their own fork handlers, as
  when a DataLoader forks its workers.

Linux only (fork, SO_PEERCRED, PR_SET_PDEATHSIG); elsewhere every command runs directly.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kdlab.infra import io

#: environment variables that matter when a module is imported or a thread pool is created: a client whose
#: values differ gets its own server
ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "PYTHONPATH",
            "PYTHONHASHSEED", "LD_PRELOAD", "LD_LIBRARY_PATH", "MPLBACKEND", "MALLOC_MMAP_THRESHOLD_",
            "MALLOC_TRIM_THRESHOLD_", "TMPDIR")
ENV_PREFIXES = ("TORCH", "TORCHINDUCTOR_", "PYTORCH_", "KMP_", "GOMP_", "ONEDNN_", "DNNL_")
#: kdlab's own variables that only the client reads (every other KDLAB_* is keyed: KDLAB_EXPERIMENT is read
#: when kdlab.infra.tracking is imported)
CLIENT_ONLY = ("KDLAB_WARM", "KDLAB_WARM_IDLE", "KDLAB_IMPORTS_LOG")
#: every package the server preloads (kdlab.warm_server), keyed by its file and mtime: an upgrade gets a new server
_DEPS = ("torch", "torchvision", "mlflow", "torch_pruning", "numpy", "sqlalchemy", "scipy", "pandas", "matplotlib",
         "yaml", "alembic")
_HEADER = struct.Struct("!I")


def enabled(argv: list[str], commands) -> bool:
    """Whether ``kdlab argv`` (run as a program) should go through a warm server: ``commands`` are those worth a
    warm start (kdlab.cli.WARM_COMMANDS)."""
    return (bool(argv) and argv[0] in commands and sys.platform == "linux"
            and os.environ.get("KDLAB_WARM", "0") == "1" and "LOCAL_RANK" not in os.environ
            and not os.environ.get("KDLAB_IMPORTS_LOG"))


def key() -> str:
    """Digest of what the server's imports depend on: kdlab's sources, the interpreter and its packages,
    the import-time environment."""
    # the interpreter by its real path: `python -m kdlab.warm start` and the `kdlab` script (python3) share a server
    h = hashlib.sha256(f"{os.path.realpath(sys.executable)}\n{sys.version}\n{os.getuid()}\n".encode())
    h.update(f"{Path(__file__).resolve().parent}\n".encode())
    h.update(f"{_process()}\n".encode())
    io.hash_sources(h)
    for name in _DEPS:  # an upgraded package has another file or mtime
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec and spec.origin else ""
        mtime = os.stat(origin).st_mtime_ns if origin else 0
        h.update(f"{name} {origin} {mtime}\n".encode())
    for k in sorted(os.environ):
        if k in ENV_KEYS or k.startswith(ENV_PREFIXES) or (k.startswith("KDLAB_") and k not in CLIENT_ONLY):
            h.update(f"{k}={os.environ[k]}\n".encode())
    return h.hexdigest()[:20]


def _process() -> str:
    """What a forked child inherits from its server and not from its client: umask, niceness, CPU affinity,
    resource limits, namespaces and cgroup. A client that differs in any gets its own server."""
    import resource

    umask = os.umask(0)
    os.umask(umask)
    limits = {n: resource.getrlimit(getattr(resource, n)) for n in sorted(dir(resource)) if n.startswith("RLIMIT_")}
    try:
        ns = {n: os.readlink(f"/proc/self/ns/{n}") for n in sorted(os.listdir("/proc/self/ns"))}
        cgroup = Path("/proc/self/cgroup").read_text()
    except OSError:
        ns, cgroup = {}, ""
    return json.dumps({"umask": umask, "nice": os.getpriority(os.PRIO_PROCESS, 0), "limits": limits, "ns": ns,
                       "cgroup": cgroup, "affinity": sorted(os.sched_getaffinity(0))}, sort_keys=True)


def socket_dir() -> Path:
    """This user's directory of servers (mode 0700); refused if someone else owns it or can enter it."""
    d = Path(tempfile.gettempdir()) / f"kdlab-warm-{os.getuid()}"
    d.mkdir(mode=0o700, exist_ok=True)
    st = d.lstat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077 or not d.is_dir() or d.is_symlink():
        raise PermissionError(f"{d} is not a private directory of this user")
    return d


# ---------------------------------------------------------------- the client

def send(sock: socket.socket, obj: dict, fds: list[int] = ()) -> None:
    data = json.dumps(obj).encode()
    msg = _HEADER.pack(len(data)) + data
    if fds:
        socket.send_fds(sock, [msg], list(fds))
    else:
        sock.sendall(msg)


def recv(sock: socket.socket, with_fds: int = 0) -> tuple[dict | None, list[int]]:
    """One message (and up to ``with_fds`` descriptors); (None, []) when the peer closed first."""
    fds: list[int] = []
    buf = b""
    while len(buf) < _HEADER.size or len(buf) < _HEADER.size + _HEADER.unpack_from(buf)[0]:
        if with_fds and not fds:
            chunk, got, _, _ = socket.recv_fds(sock, 65536, with_fds)
            fds = list(got)
        else:
            chunk = sock.recv(65536)
        if not chunk:
            for fd in fds:
                os.close(fd)
            return None, []
        buf += chunk
    n = _HEADER.unpack_from(buf)[0]
    return json.loads(buf[_HEADER.size:_HEADER.size + n]), fds


def run(argv: list[str]) -> int | None:
    """Run ``kdlab argv`` in a warm child; its exit status, or None when no server is ready (one is started
    in the background, and the caller runs the command itself)."""
    try:
        d = socket_dir()
        k = key()
        cwd = os.getcwd()  # a deleted working directory: the command runs here and says what is missing
    except OSError:
        return None
    path = d / f"{k}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        _start_server(d, k)
        return None
    with sock:
        if peer_uid(sock) != os.getuid():  # another uid serving in this user's directory gets nothing of ours
            print(f"kdlab: {path} is served by another user; running without it", file=sys.stderr)
            return None
        timeout = float(os.environ.get("KDLAB_WARM_TIMEOUT", "20"))
        sock.settimeout(timeout)  # a server says hello in milliseconds; a stopped one never
        try:
            hello, _ = recv(sock)  # before the descriptors go: a stopped server would hold them (and our pipes)
            if hello is None:  # the server went away (idle exit) between connect and accept
                return None
            send(sock, {"argv": argv, "cwd": cwd, "env": dict(os.environ)}, [0, 1, 2])
            started, _ = recv(sock)
        except TimeoutError:
            print(f"kdlab: the warm server {path} did not answer within {timeout:.0f} s (stopped?); running "
                  f"without it", file=sys.stderr)
            return None
        sock.settimeout(None)
        if started is None:  # the server went away (idle exit) between connect and fork
            return None
        pid = started["pid"]

        def forward(signum, frame):
            try:
                os.killpg(pid, signum)
            except ProcessLookupError:
                pass

        def suspend(signum, frame):  # Ctrl-Z stops the stage with its client, and fg/bg resume both
            # SIGSTOP, not SIGTSTP: the kernel ignores SIGTSTP in an orphaned process group (a client started by
            # a daemon or a detached script), and either process would then run on alone
            forward(signal.SIGSTOP, frame)
            os.kill(os.getpid(), signal.SIGSTOP)

        def resume(signum, frame):
            forward(signal.SIGCONT, frame)

        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, forward)
        signal.signal(signal.SIGTSTP, suspend)
        signal.signal(signal.SIGCONT, resume)
        done, _ = recv(sock)
    if done is None:
        print("kdlab: the warm server ended before its child; rerun (KDLAB_WARM=0 runs without it)",
              file=sys.stderr)
        return 1
    if done.get("signal"):  # die of the same signal, as the process itself would have
        sig = done["signal"]
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        return 128 + sig
    return done["exit"]


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a unix socket (SO_PEERCRED): client and server check it."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _start_server(d: Path, k: str) -> None:
    """Start the server for ``k`` in the background, unless another client is starting it."""
    starting = d / f"{k}.starting"
    try:
        fd = os.open(starting, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        try:
            if time.time() - starting.stat().st_mtime < 120:
                return
            starting.unlink()  # left by a server that died while warming up
            fd = os.open(starting, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except OSError:
            return
    os.close(fd)
    log = open(d / f"{k}.log", "ab")
    subprocess.Popen([sys.executable, "-m", "kdlab.warm_server", str(d / f"{k}.sock")],
                     stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True)
    log.close()


def _ready(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


def start(timeout: float = 180) -> Path:
    """Start this environment's server unless it runs, and wait until it serves (``make repro`` does this
    first, so the first stages are warm too); its socket."""
    d, k = socket_dir(), key()
    path = d / f"{k}.sock"
    t0 = time.monotonic()
    while not _ready(path):
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"no warm server at {path} after {timeout:.0f} s; see {d / (k + '.log')}")
        _start_server(d, k)
        time.sleep(0.2)
    return path


if __name__ == "__main__":
    if sys.argv[1:] == ["start"]:
        print(start())
    else:
        sys.exit("usage: python -m kdlab.warm start (start this environment's server and wait until it serves)")
