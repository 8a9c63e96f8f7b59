"""Does the in-repo DVC remote hold every output the lock files record? (issue 28: a fresh clone pulls, never retrains)

    python scripts/shipped.py [dvc.yaml studies/q1/dvc.yaml ...] [--repo DIR]

For each named pipeline (default: the three studies), every cached output that DVC would push (``cache`` and
``push`` not false in its dvc.yaml) is looked up in the repository's default remote by the hash its dvc.lock
records; a directory output is checked file by file through its manifest. Prints, per pipeline, the outputs
shipped and missing and the remote's size, and exits 1 when anything is missing, naming it. Reads the lock
files only: the outputs need not be on disk.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PIPELINES = ("dvc.yaml", "studies/q1/dvc.yaml", "studies/q23/dvc.yaml")


def _object(remote: Path, md5: str) -> Path:
    return remote / "files" / "md5" / md5[:2] / md5[2:]


def missing_objects(remote: Path, md5: str) -> list[str]:
    """The objects of one output (a file, or a directory's manifest and its files) that ``remote`` lacks."""
    path = _object(remote, md5)
    if not path.is_file():
        return [md5]
    if not md5.endswith(".dir"):
        return []
    entries = json.loads(path.read_text())
    return [e["md5"] for e in entries if not _object(remote, e["md5"]).is_file()]


def check(root: Path, pipelines) -> tuple[dict, Path]:
    """{pipeline: {"shipped": [paths], "missing": {path: [objects]}}} and the remote's directory."""
    from dvc.repo import Repo

    repo = Repo(str(root))
    name = repo.config["core"].get("remote")
    if not name:
        raise SystemExit(f"{root}/.dvc/config names no default remote")
    url = repo.config["remote"][name]["url"]
    remote = Path(url) if Path(url).is_absolute() else (root / ".dvc" / url).resolve()
    report = {}
    for pipeline in pipelines:
        shipped, missing = [], {}
        for stage in repo.stage.collect(str(root / pipeline)):
            for out in stage.outs:
                if not (out.use_cache and out.can_push):
                    continue
                rel = out.def_path
                md5 = out.hash_info.value if out.hash_info else None
                if not md5:
                    missing[rel] = ["(no hash in the lock: the stage never ran)"]
                    continue
                lacking = missing_objects(remote, md5)
                if lacking:
                    missing[rel] = lacking
                else:
                    shipped.append(rel)
        report[pipeline] = {"shipped": shipped, "missing": missing}
    return report, remote


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pipelines", nargs="*", default=list(PIPELINES), help="dvc.yaml files (default: all three)")
    ap.add_argument("--repo", type=Path, default=REPO, help="the repository (default: this one)")
    args = ap.parse_args()
    root = args.repo.resolve()
    report, remote = check(root, args.pipelines)
    size = sum(f.stat().st_size for f in remote.rglob("*") if f.is_file()) if remote.is_dir() else 0
    print(f"remote {remote} ({size / 2**20:.1f} MiB)")
    bad = 0
    for pipeline, r in report.items():
        print(f"{pipeline}: {len(r['shipped'])} outputs shipped, {len(r['missing'])} missing")
        for path, objects in sorted(r["missing"].items()):
            print(f"  missing {path}: {', '.join(objects[:3])}{' ...' if len(objects) > 3 else ''}")
        bad += len(r["missing"])
    if bad:
        print(f"{bad} outputs are not in the remote: run the study (make repro / q1 / q23, which push) or `dvc push`")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
