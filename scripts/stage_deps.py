"""Each stage's ``src/`` dependencies, derived from what its process imported.

    python scripts/stage_deps.py IMPORTS.jsonl [...] [--write]

Every ``kdlab`` process run with tests/probe on its PYTHONPATH and ``KDLAB_IMPORTS_LOG`` set appends the kdlab
files it imported, with DVC's stage name (``scripts/tiny_outputs.py --imports FILE`` records every study's tiny
version; so do the end-to-end tests). From those records this script checks, both ways, the ``src/`` lines of
every stage's ``deps`` in ./dvc.yaml and studies/*/dvc.yaml: a file imported but not listed (missing: an edit to it
would leave the stage's results stale) and a file listed but imported by no run of the stage (extra: an edit to it
re-runs the stage for nothing). With ``--write`` it rewrites those lines to the imported files, in place (comments,
other deps and YAML anchors stay). A listed folder (``src/kdlab/distill``: the methods, loaded by name from the
params) stands for the files under it. The launcher (:data:`LAUNCHER`) is never a dependency: it only decides in
which process a stage runs, and ``scripts/tiny_outputs.py --warm`` shows the outputs do not depend on it.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: kdlab.warm (the client every ``kdlab`` program imports) and kdlab.warm_server: how a stage is launched
LAUNCHER = ("src/kdlab/warm.py", "src/kdlab/warm_server.py")
PIPELINES = ("dvc.yaml", "studies/q1/dvc.yaml", "studies/q23/dvc.yaml")
_STAGE = re.compile(r"^  ([A-Za-z0-9_]+):")
_DEPS = re.compile(r"^(\s+)deps:\s*(?:&(\w+)|\*(\w+))?\s*(?:#.*)?$")


def deps_blocks(text: str) -> dict[str, dict]:
    """Stage -> its deps block: ``{"block": the anchor's or the stage's name, "start", "end": the block's line
    range (its ``- `` items), "src": the src/ items}``; a stage whose deps are an alias (``*name``) shares the
    anchor's block."""
    lines = text.splitlines()
    stages, stage, anchors = {}, None, {}
    in_stages = False
    for i, line in enumerate(lines):
        if line.startswith("stages:"):
            in_stages = True
            continue
        if in_stages and _STAGE.match(line):
            stage = _STAGE.match(line).group(1)
            continue
        m = _DEPS.match(line)
        if not (in_stages and stage and m):
            continue
        indent, anchor, alias = m.groups()
        if alias:
            stages[stage] = anchors[alias]
            continue
        item = indent + "  - "
        end = i + 1
        while end < len(lines) and lines[end].startswith(item):
            end += 1
        block = {"block": anchor or stage, "start": i + 1, "end": end, "prefix": item,
                 "src": [ln[len(item):].strip() for ln in lines[i + 1:end] if ln[len(item):].startswith("src/")]}
        stages[stage] = block
        if anchor:
            anchors[anchor] = block
    return stages


def read_records(paths: list[Path], root: Path | None = None) -> list[dict]:
    """The probe's records, each file made relative to the study's root (``root``, or the folder above the
    record's ``src/kdlab``)."""
    out = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            rec = json.loads(line)
            if not rec["stage"]:
                continue
            files = set()
            for f in rec["files"]:
                posix = Path(f).resolve().as_posix()
                rel = posix[posix.rindex("/src/kdlab/") + 1:] if root is None else \
                    Path(f).resolve().relative_to(root).as_posix()
                files.add(rel)
            pipeline, _, name = rec["stage"].rpartition(":")
            out.append({"pipeline": pipeline or "dvc.yaml", "stage": name.split("@")[0], "files": files})
    return out


def _covered(f: str, listed: list[str]) -> bool:
    return any(f == d or f.startswith(d.rstrip("/") + "/") for d in listed)


def imported_by_block(text: str, pipeline: str, records: list[dict]) -> tuple[dict, dict]:
    """(stage -> its block, block -> the files its stages' runs imported, launcher aside)."""
    blocks = deps_blocks(text)
    imported: dict[str, set] = {}
    for rec in records:
        if rec["pipeline"] == pipeline and rec["stage"] in blocks:
            imported.setdefault(blocks[rec["stage"]]["block"], set()).update(
                f for f in rec["files"] if f not in LAUNCHER)
    return blocks, imported


def check(text: str, pipeline: str, records: list[dict]) -> dict:
    """``{"missing": {stage: files}, "extra": {stage: deps}, "unrun": [stages no record covers]}`` for one
    dvc.yaml's text; the launcher counts as extra wherever it is listed."""
    blocks, imported = imported_by_block(text, pipeline, records)
    out = {"missing": {}, "extra": {}, "unrun": sorted(s for s, b in blocks.items() if b["block"] not in imported)}
    for stage, b in blocks.items():
        files = imported.get(b["block"])
        if files is None:
            continue
        missing = sorted(f for f in files if not _covered(f, b["src"]))
        extra = sorted(d for d in b["src"] if d in LAUNCHER or not any(_covered(f, [d]) for f in files))
        if missing:
            out["missing"][stage] = missing
        if extra:
            out["extra"][stage] = extra
    return out


def rewrite(text: str, pipeline: str, records: list[dict]) -> str:
    """``text`` with every recorded block's src/ items replaced by the files its runs imported (listed folders
    kept where anything under them was imported)."""
    blocks, imported = imported_by_block(text, pipeline, records)
    lines = text.splitlines(keepends=True)
    # each block once (stages sharing an anchor share it), from the last up, so earlier line numbers stay valid
    for b in sorted({b["block"]: b for b in blocks.values()}.values(), key=lambda b: -b["start"]):
        files = imported.get(b["block"])
        if files is None:
            continue
        folders = [d for d in b["src"] if not d.endswith(".py") and any(_covered(f, [d]) for f in files)]
        src = sorted(set(folders) | {f for f in files if not _covered(f, folders)})
        body = lines[b["start"]:b["end"]]
        other = [ln for ln in body if not ln[len(b["prefix"]):].startswith("src/")]
        first = next((i for i, ln in enumerate(body) if ln[len(b["prefix"]):].startswith("src/")), len(other))
        new = other[:first] + [f"{b['prefix']}{f}\n" for f in src] + other[first:]
        lines[b["start"]:b["end"]] = new
    return "".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("imports", nargs="+", type=Path, help="the probe's records (JSON lines)")
    ap.add_argument("--write", action="store_true", help="rewrite the dvc.yaml files' src/ deps")
    args = ap.parse_args()
    records = read_records(args.imports)
    bad = False
    for pipeline in PIPELINES:
        path = REPO / pipeline
        text = path.read_text()
        if args.write:
            new = rewrite(text, pipeline, records)
            if new != text:
                path.write_text(new)
                print(f"{pipeline}: rewritten")
            text = new
        res = check(text, pipeline, records)
        for kind in ("missing", "extra"):
            for stage, files in res[kind].items():
                bad = True
                print(f"{pipeline}:{stage}: {kind} {', '.join(files)}")
        if res["unrun"]:
            print(f"{pipeline}: no record of {', '.join(res['unrun'])} (not checked)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
