"""Warm start (kdlab.warm): a command run through the warm server is the command run directly, minus the
start-up. Real processes: the server, its forked children and `python -m kdlab` clients."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, proc_stat, study_dir, tiny

TINY = tiny({"teacher": {"epochs": 1}, "student": {"epochs": 1}})


def _env(env: dict, warm: bool) -> dict:
    return dict(env, KDLAB_WARM="1" if warm else "0", KDLAB_WARM_IDLE="60")


def _start(env: dict) -> Path:
    """Start the server for ``env`` and wait until it serves."""
    out = subprocess.run([sys.executable, "-m", "kdlab.warm", "start"], env=env, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr
    return Path(out.stdout.strip())


def _kdlab(path, env, *args, **kw):
    return subprocess.run([sys.executable, "-m", "kdlab", *args], cwd=path, env=env, capture_output=True, text=True,
                          timeout=300, **kw)


def _in_dir(path: Path) -> list[int]:
    """Processes whose working directory is ``path``."""
    pids = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and Path(os.readlink(p / "cwd")) == path:
                pids.append(int(p.name))
        except OSError:
            pass
    return pids


def _served(sock: Path) -> list[str]:
    """The commands the server ran (its log: one line per child)."""
    log = sock.with_suffix(".log")
    return [line for line in log.read_text().splitlines() if line.startswith("served ")] if log.exists() else []


@pytest.mark.slow
def test_warm_run_is_the_direct_run(tmp_path):
    """Teacher, cache and a KD student through the server: the same weights, logits and metrics as the
    same commands run directly; the client got the child's output and exit status."""
    runs = {}
    for mode in ("direct", "warm"):
        d = tmp_path / mode
        env = _env(study_dir(d, TINY), warm=mode == "warm")
        if mode == "warm":
            sock = _start(env)
            served = len(_served(sock))
        for args in (["train", "teacher"], ["cache"], ["train", "students/kd-0"]):
            out = _kdlab(d, env, *args)
            assert out.returncode == 0, out.stderr
        runs[mode] = (d, out.stdout + out.stderr)
    (a, out_a), (b, out_b) = runs["direct"], runs["warm"]
    ran = _served(sock)[served:]
    commands = ("train teacher", "cache", "train students/kd-0")
    assert [line.split(" exit ")[0] for line in ran] == [f"served {c} in {b}" for c in commands]
    assert out_b.count("kd-0: val") == out_a.count("kd-0: val") == 1  # the child's output reached the client
    for rel in ("models/teacher.pt", "models/students/kd-0.pt"):
        x, y = torch.load(a / rel, weights_only=True), torch.load(b / rel, weights_only=True)
        assert x["state_dict"].keys() == y["state_dict"].keys()
        assert all(torch.equal(x["state_dict"][k], y["state_dict"][k]) for k in x["state_dict"]), rel
    for f in sorted((a / "data/teacher_logits").glob("*.pt")):
        x, y = torch.load(f, weights_only=True), torch.load(b / f.relative_to(a), weights_only=True)
        assert torch.equal(x["logits"], y["logits"])
    strip = lambda m: {k: v for k, v in m.items() if "second" not in k}
    for rel in ("metrics/teacher.json", "metrics/students/kd-0.json"):
        assert strip(json.loads((a / rel).read_text())) == strip(json.loads((b / rel).read_text())), rel


def test_exit_status_and_stderr_come_back(tmp_path):
    """A refused param: exit 2 and the message on the client's own stderr, as a direct run gives."""
    env = study_dir(tmp_path, TINY)
    direct = _kdlab(tmp_path, _env(env, False), "check", "-S", "loss.alpha=2")
    _start(_env(env, True))
    warm = _kdlab(tmp_path, _env(env, True), "check", "-S", "loss.alpha=2")
    assert direct.returncode == warm.returncode == 2
    assert warm.stderr == direct.stderr and "loss.alpha" in warm.stderr


def _teacher_training(tmp_path: Path, epochs: int) -> tuple[subprocess.Popen, list[str]]:
    """`kdlab train teacher` of ``epochs`` epochs through a warm server, once its first epoch is done (the
    output so far)."""
    env = _env(study_dir(tmp_path, tiny({"teacher": {"epochs": epochs}})), True)
    _start(env)
    proc = subprocess.Popen([sys.executable, "-m", "kdlab", "train", "teacher"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if f"teacher epoch 1/{epochs}: loss" in line:  # the child is training
            break
    return proc, lines


@pytest.mark.slow
def test_the_child_dies_with_its_client(tmp_path):
    """SIGKILL of the client (what DVC or a test does to a stage) leaves no child training on."""
    proc, _ = _teacher_training(tmp_path, 50)
    children = [p for p in _in_dir(tmp_path) if p != proc.pid]
    assert children, "no warm child ran the teacher"
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while _in_dir(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _in_dir(tmp_path)


def test_sigint_is_forwarded(tmp_path):
    """Ctrl-C reaches the child: it stops as a direct run does (exit 130, 'rerun the stage to resume')."""
    proc, lines = _teacher_training(tmp_path, 50)
    proc.send_signal(signal.SIGINT)
    rest = proc.stdout.read()
    assert proc.wait(timeout=120) == 130, "".join(lines) + rest
    assert "rerun the stage to resume" in rest


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _state(pid: int) -> str:
    return proc_stat(pid)[0]


def test_ctrl_z_stops_the_stage_and_fg_resumes_it(tmp_path):
    """Issue 31, item 2: Ctrl-Z (SIGTSTP) stopped the client and left the stage training; now it stops both, and
    SIGCONT (fg, bg) resumes both."""
    proc, lines = _teacher_training(tmp_path, 40)
    # the warm child: forked from the server, so it has the server's command line (a process it starts, such
    # as git for the run's commit tag, is not the stage)
    child = [p for p in _in_dir(tmp_path) if p != proc.pid and b"kdlab.warm_server" in _cmdline(p)]
    assert len(child) == 1, ("no warm child ran the teacher", [(p, _cmdline(p)) for p in _in_dir(tmp_path)])
    watched = [proc.pid, *child]
    proc.send_signal(signal.SIGTSTP)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and {_state(p) for p in watched} != {"T"}:
        time.sleep(0.1)
    states = {p: (_state(p), _cmdline(p)[:80]) for p in watched}
    assert {st for st, _ in states.values()} == {"T"}, (states, "".join(lines))
    proc.send_signal(signal.SIGCONT)
    rest = proc.stdout.read()
    assert proc.wait(timeout=300) == 0, "".join(lines) + rest
    assert "teacher epoch 40/40" in rest


def test_a_stopped_server_or_a_deleted_directory_runs_the_command_directly(tmp_path):
    """Issue 31, item 2: a stopped server (kill -STOP) hung every client forever, and a deleted working directory
    gave a traceback from the client."""
    env = dict(_env(study_dir(tmp_path, TINY), True), KDLAB_EXPERIMENT="stopped-server", KDLAB_WARM_TIMEOUT="2")
    sock = _start(env)  # a server of its own (KDLAB_EXPERIMENT is in the key): no other test meets it stopped
    server = next(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                  and str(sock).encode() in (p / "cmdline").read_bytes())
    os.kill(server, signal.SIGSTOP)
    try:
        res = _kdlab(tmp_path, env, "check")
    finally:
        os.kill(server, signal.SIGCONT)
    assert res.returncode == 0, res.stderr
    assert "did not answer within 2 s (stopped?); running without it" in res.stderr, res.stderr
    assert (tmp_path / "data/checked.json").exists()
    gone = tmp_path / "gone"
    gone.mkdir()
    res = subprocess.run(["bash", "-c", f"cd {gone} && rmdir {gone} && exec {sys.executable} -m kdlab check"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "params.yaml" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def _key(pythonpath: Path, preexec=None, python: str = sys.executable, **env) -> str:
    out = subprocess.run([python, "-c", "from kdlab import warm; print(warm.key())"], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=str(pythonpath), **env), check=True,
                         preexec_fn=preexec)
    return out.stdout.strip()


def test_edited_code_or_other_threads_get_another_server(tmp_path):
    """The server is keyed by the code and the import-time environment: never a stale one."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "src/kdlab", src / "kdlab", ignore=shutil.ignore_patterns("__pycache__"))
    before = _key(src)
    assert _key(src) == before
    assert _key(src, OMP_NUM_THREADS="7") != before
    assert _key(src, KDLAB_WARM_IDLE="5") == before  # kdlab's own switches are read per call
    train = src / "kdlab/core/train.py"  # a file in a layer folder: the key covers every folder
    train.write_text(train.read_text() + "\n# an edit\n")
    assert _key(src) != before


def test_off_when_asked_and_for_the_bench(monkeypatch):
    from kdlab import warm

    for k in ("KDLAB_WARM", "KDLAB_IMPORTS_LOG", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    from kdlab.cli import WARM_COMMANDS

    assert not warm.enabled(["train", "students/kd-0"], WARM_COMMANDS)  # opt-in: the user's own process
    monkeypatch.setenv("KDLAB_WARM", "1")
    assert warm.enabled(["train", "students/kd-0"], WARM_COMMANDS) == (sys.platform == "linux")
    assert not any(warm.enabled(argv, WARM_COMMANDS) for argv in (["bench"], ["ui"], []))
    for k, v in (("KDLAB_WARM", "0"), ("LOCAL_RANK", "0"), ("KDLAB_IMPORTS_LOG", "/tmp/x")):
        monkeypatch.setenv(k, v)
        assert not warm.enabled(["train", "teacher"], WARM_COMMANDS)
        monkeypatch.setenv("KDLAB_WARM", "1") if k == "KDLAB_WARM" else monkeypatch.delenv(k)


def test_by_default_a_command_is_the_users_own_process(tmp_path):
    """Issue 31, item 2: with a warm server running, `umask 077` gave mode-644 outputs and KDLAB_EXPERIMENT=expC
    logged to the server's experiment: the stage ran in a child of someone else's process. The launcher is
    opt-in now, so a plain `kdlab` is the caller's own process (its umask, its experiment), server or not."""
    env = study_dir(tmp_path, TINY)
    _start(_env(env, warm=True))  # someone's server, keyed for this environment
    plain = {k: v for k, v in env.items() if k not in ("KDLAB_WARM", "KDLAB_EXPERIMENT")}
    res = _kdlab(tmp_path, dict(plain, KDLAB_EXPERIMENT="expC"), "prepare", preexec_fn=lambda: os.umask(0o077))
    assert res.returncode == 0, res.stderr
    for f in (tmp_path / "data/prepared").iterdir():
        assert f.stat().st_mode & 0o077 == 0, (f, oct(f.stat().st_mode))


def test_a_client_unlike_the_server_gets_another_server(tmp_path):
    """What a forked child keeps from its server is in the key: umask, niceness, the import-time KDLAB_*
    variables (KDLAB_EXPERIMENT); the interpreter counts by its real path, so `python` and `python3` (the kdlab
    script's) share one server, where they had started two."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "src/kdlab", src / "kdlab", ignore=shutil.ignore_patterns("__pycache__"))
    before = _key(src)
    assert _key(src, KDLAB_EXPERIMENT="expC") != before
    assert _key(src, preexec=lambda: os.umask(0o077)) != before
    assert _key(src, preexec=lambda: os.nice(3)) != before
    names = {"python", "python3"}  # the venv's two names for one interpreter
    other = Path(sys.executable).parent / (names - {Path(sys.executable).name}).pop()
    assert other.exists() and other.resolve() == Path(sys.executable).resolve(), other
    assert _key(src, python=str(other)) == before


def test_socket_directory_is_private():
    from kdlab import warm

    d = warm.socket_dir()
    st = d.stat()
    assert st.st_uid == os.getuid() and st.st_mode & 0o077 == 0
