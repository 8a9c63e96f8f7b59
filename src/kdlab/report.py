"""``kdlab report``: reports/report.md and its pictures, assembled from each question's section.

Nothing here is typed by hand: every number comes from the metrics files the question stages wrote
(metrics/summary.json, runs.json and plots/curves/ from evaluate; parts.json; pruning.json), and each
question's module (:mod:`kdlab.evaluate`, :mod:`kdlab.parts`, :mod:`kdlab.pruning`) writes its own section
and pictures, in words that never claim more than the intervals do.
"""
from __future__ import annotations

from kdlab import evaluate, io, parts, pruning, tracking
from kdlab.params import Params
from kdlab.schema import flatten
from kdlab.workspace import CURVES, CURVES_PLOT, PARTS_JSON, PRUNING_JSON, REPORTS, RUNS_JSON, SUMMARY_JSON


def render(p: Params, summary: dict, runs: dict, parts_summary: dict | None = None,
           pruning_summary: dict | None = None) -> str:
    lines = [
        "# kdlab report",
        "",
        f"Data `{p.data.name}`; teacher `{p.teacher.arch}` (width {p.teacher.width}, {p.teacher.epochs} epochs); "
        f"students `{p.student.arch}` (width {p.student.width}, {p.student.epochs} epochs); KD alpha "
        f"{p.loss.alpha}, temperature {p.loss.temperature}; cached views per image: {p.cache.views}; "
        f"seeds {p.study.seeds}. Regenerate with `dvc repro` (this file is the `report` stage's output).",
        "",
        *evaluate.report_section(p, summary, runs),
    ]
    if parts_summary is not None:
        lines += parts.report_section(p, parts_summary)
    if pruning_summary is not None:
        lines += pruning.report_section(p, pruning_summary)
    return "\n".join(lines)


def load_curves(names) -> dict[str, list]:
    return {n: io.load_json(CURVES / f"{n}.json", "dvc repro evaluate") for n in names}


def run_report(p: Params):
    summary = io.load_json(SUMMARY_JSON, "dvc repro evaluate")
    runs = io.load_json(RUNS_JSON, "dvc repro evaluate")
    curves = load_curves(runs)
    parts_summary = io.load_json(PARTS_JSON, "dvc repro parts") if PARTS_JSON.exists() else None
    pruning_summary = io.load_json(PRUNING_JSON, "dvc repro pruning") if PRUNING_JSON.exists() else None
    REPORTS.mkdir(exist_ok=True)
    pictures = evaluate.pictures(p, summary, runs, curves)
    if parts_summary is not None:
        pictures.update(parts.pictures(p, parts_summary))
    if pruning_summary is not None:
        pictures.update(pruning.pictures(p, pruning_summary))
    for name, draw in pictures.items():
        tmp = REPORTS / f".{name}.tmp.png"
        draw(tmp)
        tmp.replace(REPORTS / name)
    io.save_json(evaluate.curve_rows(runs, curves), CURVES_PLOT)
    report = REPORTS / "report.md"
    io.save_text(render(p, summary, runs, parts_summary, pruning_summary), report)
    with tracking.run("report", "report", flatten(p)) as run:
        for f in [report, *(REPORTS / n for n in pictures)]:
            run.log_artifact(f)
            run.log_study_artifact(f)
    print(f"wrote {report} and {len(pictures)} pictures")
    return report
