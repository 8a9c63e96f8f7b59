"""Atomic writes and checksums: a killed stage never leaves a half-written output behind."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_torch(obj, path) -> None:
    import torch

    _atomic(path, lambda f: torch.save(obj, f))


def save_json(obj, path) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    _atomic(path, lambda f: f.write(text.encode()))


def save_text(text: str, path) -> None:
    _atomic(path, lambda f: f.write(text.encode()))


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_torch(path, rebuild_hint: str):
    """torch.load with an error that names the file and the command that rebuilds it."""
    import torch

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; rebuild it with `{rebuild_hint}`")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or corrupted file
        raise RuntimeError(f"{path} is unreadable ({type(e).__name__}: {e}); rebuild it with `{rebuild_hint}`") from None
