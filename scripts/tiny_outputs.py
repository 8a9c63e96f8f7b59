"""Fingerprints of every study's tiny version: proof that a change leaves results alone.

    python scripts/tiny_outputs.py --out before.json [--rev REV] [--warm | --imports FILE]
    python scripts/tiny_outputs.py --compare before.json after.json

Builds the end-to-end tests' tiny studies (tests/test_pipeline.py: TINY for the default study, Q1_TINY and
Q23_TINY for studies/q1 and studies/q23) in a temporary git + DVC repository from the sources, dvc.yaml files
and studies of ``--rev`` (default: this working tree), runs ``dvc repro`` for each study, and writes one sha256 per
output file: models and caches by their tensors and plain data, metrics by their JSON. Timings (keys naming
seconds or time), input files' sha256 stamps and the recorded source digest (key ``code``, which any edit of
src/ changes) are left out; nothing else is. ``--warm`` runs the stages through kdlab's warm launcher
(kdlab.warm), otherwise each stage is its own process. ``--imports FILE`` also records the kdlab files each
stage's process imported (tests/probe), for ``scripts/stage_deps.py``. ``--compare`` prints every file that differs and exits 1
if any does.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: what a study's tiny version needs from a revision
TREE = ("src", "dvc.yaml", "studies", "pyproject.toml", ".gitignore", ".dvcignore", "web/templates")
#: the outputs fingerprinted (everything a stage writes that is a result; reports and plots are worded from these)
OUTPUTS = ("models", "data/teacher_logits", "data/q1", "data/q23", "metrics", "predictions", "plots")
#: left out: timings (seconds, throughput), the sha256 stamps of input files, which hold their timings (the
#: inputs themselves are fingerprinted where they are outputs), and the source digest a run records (``code``:
#: provenance, which every source edit changes; the outputs it describes are fingerprinted)
TIMING = re.compile(r"second|time|sha256$|^code$", re.I)


def _digest(value, h) -> None:
    """Feed ``value`` (tensors, dicts, lists, numbers, strings) into ``h`` in a fixed order."""
    import torch

    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        h.update(b"{")
        for k in sorted(value, key=str):
            if TIMING.search(str(k)):
                continue
            h.update(repr(k).encode())
            _digest(value[k], h)
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        h.update(b"[")
        for v in value:
            _digest(v, h)
        h.update(b"]")
    else:
        h.update(repr(value).encode())


def fingerprint(path: Path) -> str:
    import torch

    h = hashlib.sha256()
    if path.suffix == ".pt":
        _digest(torch.load(path, map_location="cpu", weights_only=True), h)
    elif path.suffix == ".json":
        _digest(json.loads(path.read_text()), h)
    else:
        h.update(path.read_bytes())
    return h.hexdigest()


def _tests():
    sys.path[:0] = [str(REPO / "tests"), str(REPO / "src")]
    import test_pipeline

    import conftest

    return conftest, test_pipeline


def _export(rev: str | None, root: Path) -> None:
    if rev is None:
        for name in TREE:
            src = REPO / name
            if src.is_dir():
                shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.lock"))
            else:
                shutil.copy(src, root / name)
        return
    tar = subprocess.run(["git", "archive", rev, *TREE], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=tar, check=True)
    for lock in root.rglob("dvc.lock"):
        lock.unlink()


def _known(over: dict, base: dict) -> dict:
    """``base`` with ``over``'s values where ``base`` has the key (nested mappings key by key)."""
    return {k: _known(over[k], v) if isinstance(v, dict) and isinstance(over.get(k), dict) else over.get(k, v)
            for k, v in base.items()}


def _run(cmd: list[str], root: Path, env: dict) -> str:
    res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res.stdout


def build(rev: str | None, warm: bool, keep: Path | None = None, imports: Path | None = None) -> dict[str, str]:
    import yaml

    conftest, tp = _tests()
    root = Path(keep or tempfile.mkdtemp(prefix="kdlab-tiny-")) / "study"
    root.mkdir(parents=True)
    _export(rev, root)
    # a revision runs its own params.yaml under the tiny sizes: a key added since is unknown to its schema
    shipped = conftest.shipped_with(tp.TINY) if rev is None else _known(tp.TINY, yaml.safe_load(subprocess.run(
        ["git", "show", f"{rev}:params.yaml"], cwd=REPO, capture_output=True, text=True, check=True).stdout))
    (root / "params.yaml").write_text(yaml.safe_dump(shipped, sort_keys=False))
    for name, params in (("q1", tp.Q1_TINY), ("q23", tp.Q23_TINY)):
        (root / f"studies/{name}/params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t", PYTHONPATH=str(root / "src"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for key in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "KDLAB_IMPORTS_LOG"):
        env.pop(key, None)
    env["KDLAB_WARM"] = "1" if warm else "0"
    if imports:
        env["KDLAB_IMPORTS_LOG"] = str(imports.resolve())
        env["PYTHONPATH"] += f"{os.pathsep}{REPO / 'tests' / 'probe'}"
    for cmd in (["git", "init", "-q", "-b", "main"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "tiny studies"]):
        _run(cmd, root, env)
    for target in ([], ["studies/q1/dvc.yaml"], ["studies/q23/dvc.yaml"]):
        print(f"dvc repro {' '.join(target) or '(default study)'} ...", file=sys.stderr, flush=True)
        _run(["dvc", "repro", *target], root, env)
    out = fingerprints(root)
    if keep is None:
        shutil.rmtree(root.parent)
    return out


def fingerprints(root: Path) -> dict[str, str]:
    files = sorted(f for out in OUTPUTS if (root / out).exists() for f in (root / out).rglob("*") if f.is_file()
                   and f.name != ".gitignore")
    return {f.relative_to(root).as_posix(): fingerprint(f) for f in files}


def compare(a: dict, b: dict) -> list[str]:
    return [f"{k}: {'missing in the first' if k not in a else 'missing in the second' if k not in b else 'differs'}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="write the fingerprints here (JSON)")
    ap.add_argument("--rev", help="a git revision whose sources, dvc.yaml files and studies to run (default: the "
                    "working tree)")
    ap.add_argument("--warm", action="store_true", help="run the stages through the warm launcher")
    ap.add_argument("--imports", type=Path, help="append each stage's imported kdlab files here (JSON lines)")
    ap.add_argument("--keep", type=Path, help="build the studies under this folder and keep them")
    ap.add_argument("--again", type=Path, metavar="DIR", help="fingerprint the studies kept in DIR (--keep) again")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="compare two fingerprint files")
    args = ap.parse_args()
    if args.compare:
        a, b = (json.loads(p.read_text()) for p in args.compare)
        diff = compare(a, b)
        print("\n".join(diff) if diff else f"identical: {len(a)} files (models, caches, metrics; timings aside)")
        return 1 if diff else 0
    if not args.out:
        ap.error("--out or --compare")
    if args.warm and args.imports:
        ap.error("--imports records direct runs (the warm launcher is off while it records)")
    out = fingerprints(args.again / "study") if args.again else build(args.rev, args.warm, args.keep, args.imports)
    args.out.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"{len(out)} files fingerprinted into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
