"""Atomic writes, checksums and safe loads: a killed stage never leaves a half-written output behind, and no
file the project reads can run code (tensors and plain containers only, never arbitrary pickles)."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import signal
import tempfile
import threading
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


class StageError(RuntimeError):
    """An expected failure (a missing, corrupt, foreign or stale file; a full disk; an unreachable store): the
    CLI prints its one-line message, which names the file and the command that fixes it, and exits 1."""


def first_line(e: BaseException) -> str:
    """An exception's first line (some libraries' messages run to pages), for a one-line error."""
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


@contextlib.contextmanager
def _signals_deferred():
    """Ctrl-C and SIGTERM arriving inside the block take effect when it ends: a file being written (a checkpoint
    at an epoch's end) is finished and in place first. Otherwise torch.save's zip writer, interrupted, raises its
    own error on the way out and the stage dies with a traceback instead of "rerun the stage to resume". Python
    runs signal handlers in the main thread only, so elsewhere nothing is deferred."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    # a handler installed outside Python (getsignal: None) could not be put back: such a signal is left alone
    signals = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not None]
    kept = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in signals}
    try:
        yield
    finally:
        for s, handler in kept.items():
            signal.signal(s, handler)
        if pending:
            signal.raise_signal(pending[0])


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _signals_deferred():
        _write_then_rename(path, write)


def _write_then_rename(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, StageError):  # ENOSPC, EROFS, EACCES ...
            raise StageError(f"cannot write {path} ({e.strerror or e}); free the space or fix the permissions "
                             f"of {path.parent}, then rerun the stage") from None
        raise


def save_torch(obj, path) -> None:
    import torch

    _atomic(path, lambda f: torch.save(obj, f))


def save_json(obj, path) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    _atomic(path, lambda f: f.write(text.encode()))


def digits(classes) -> str:
    """Predicted (or true) classes, a 1-D integer tensor, as one string of digits: plain data, a tenth of a JSON
    list (comma-separated when a class exceeds 9)."""
    if int(classes.max()) > 9:
        return ",".join(map(str, classes.tolist()))
    return "".join(map(str, classes.tolist()))


def save_text(text: str, path) -> None:
    _atomic(path, lambda f: f.write(text.encode()))


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def code_digest() -> str:
    """sha256 over kdlab's source files and torch's version: the code a stage runs. It goes into every resume
    fingerprint, so a checkpoint written by other code is never resumed (epochs of the old code would be
    credited to the new one). Every file of the package counts, not only those a stage imports: a wasted
    resume costs one restart, a wrong one a silently wrong result."""
    import torch

    h = hashlib.sha256(f"torch {torch.__version__}\n".encode())
    hash_sources(h)
    return h.hexdigest()


def hash_sources(h) -> None:
    """Feed every source file of the package (relative path and bytes, in order) to the hash ``h``; no torch
    needed (kdlab.warm keys its server by it too)."""
    package = Path(__file__).resolve().parents[1]  # kdlab, every layer
    for path in sorted(package.rglob("*.py")):
        h.update(f"{path.relative_to(package).as_posix()}\n".encode())
        h.update(path.read_bytes())


def load_torch(path, rebuild_hint: str):
    """Tensors and plain containers from ``path`` (``weights_only``: a pickle that would build any other object,
    or call anything, is refused), with an error that names the file and the command that rebuilds it."""
    import pickle

    import torch

    path = Path(path)
    if not path.exists():
        raise StageError(f"{path} is missing; rebuild it with `{rebuild_hint}`")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused a global: not a file kdlab wrote
        raise StageError(f"{path} holds objects other than tensors and plain data, so it was not loaded "
                         f"({first_line(e)}); delete it and rebuild it with `{rebuild_hint}`") from None
    except Exception as e:  # truncated or corrupted file
        raise StageError(f"{path} is unreadable ({type(e).__name__}: {e}); rebuild it with `{rebuild_hint}`") from None


def load_json(path, rebuild_hint: str):
    """A JSON file, with an error that names the file and the command that rebuilds it."""
    path = Path(path)
    if not path.exists():
        raise StageError(f"{path} is missing; rebuild it with `{rebuild_hint}`")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise StageError(f"{path} is not valid JSON ({e}); rebuild it with `{rebuild_hint}`") from None
