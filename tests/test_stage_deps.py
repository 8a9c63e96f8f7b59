"""scripts/stage_deps.py: a stage's src/ deps checked both ways against what its process imported, and rewritten
from it (the end-to-end tests run it on every study's real records)."""
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import stage_deps  # noqa: E402

PIPELINE = """\
stages:
  teacher:                 # a comment stays
    cmd: kdlab teacher
    deps: &train_deps
      - data/prepared
      - src/kdlab/a.py
      - src/kdlab/warm.py
      - src/kdlab/unused.py
    params:
      - teacher
  student:
    matrix:
      method: [kd]
    cmd: kdlab student --method ${item.method}
    deps: *train_deps
  report:
    cmd: kdlab report
    deps:
      - metrics
      - src/kdlab/distill
    outs:
      - reports
"""


def _records(*rows):
    return [{"pipeline": "dvc.yaml", "stage": s, "files": set(f)} for s, f in rows]


def test_missing_extra_launcher_and_unrun_stages_are_found():
    records = _records(("teacher", ["src/kdlab/a.py", "src/kdlab/warm.py"]),
                       ("student", ["src/kdlab/a.py", "src/kdlab/b.py"]))
    res = stage_deps.check(PIPELINE, "dvc.yaml", records)
    # the alias shares the anchor's list: the union of both stages' imports is checked against it
    assert res["missing"] == {"teacher": ["src/kdlab/b.py"], "student": ["src/kdlab/b.py"]}
    assert res["extra"] == {"teacher": ["src/kdlab/unused.py", "src/kdlab/warm.py"],
                            "student": ["src/kdlab/unused.py", "src/kdlab/warm.py"]}
    assert res["unrun"] == ["report"]


def test_rewrite_lists_what_ran_keeps_the_rest_and_checks_clean():
    records = _records(("teacher", ["src/kdlab/a.py", "src/kdlab/warm.py"]),
                       ("student", ["src/kdlab/b.py"]),
                       ("report", ["src/kdlab/distill/__init__.py", "src/kdlab/distill/kd.py", "src/kdlab/c.py"]))
    new = stage_deps.rewrite(PIPELINE, "dvc.yaml", records)
    assert new == PIPELINE.replace(
        "      - src/kdlab/a.py\n      - src/kdlab/warm.py\n      - src/kdlab/unused.py\n",
        "      - src/kdlab/a.py\n      - src/kdlab/b.py\n").replace(
        "      - src/kdlab/distill\n", "      - src/kdlab/c.py\n      - src/kdlab/distill\n")
    assert stage_deps.check(new, "dvc.yaml", records) == {"missing": {}, "extra": {}, "unrun": []}


def test_the_shipped_pipelines_list_no_launcher_and_parse_whole():
    for pipeline in stage_deps.PIPELINES:
        text = (REPO / pipeline).read_text()
        blocks = stage_deps.deps_blocks(text)
        assert blocks and all(b["src"] for b in blocks.values()), pipeline
        assert not any(f in text for f in stage_deps.LAUNCHER), pipeline
