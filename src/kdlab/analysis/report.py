"""``kdlab report``: reports/report.md and its pictures, assembled from each question's section.

Nothing here is typed by hand: every number comes from the metrics files the question stages wrote
(metrics/summary.json, runs.json and plots/curves/ from evaluate; parts.json; pruning.json), as does
metrics/headline.json, the few numbers DVC compares across experiments and branches; each
question's module (:mod:`kdlab.analysis.evaluate`, :mod:`kdlab.analysis.parts`, :mod:`kdlab.pipeline.pruning`) writes its own section
and pictures, in words that never claim more than the intervals do.
"""
from __future__ import annotations

import copy
import re

from kdlab.analysis import evaluate, parts, pruning, stats
from kdlab.analysis.present import report_html
from kdlab.infra import io, tracking
from kdlab.infra.schema import flatten, flatten_dict
from kdlab.pipeline.params import Params
from kdlab.pipeline.workspace import (
    CURVES,
    CURVES_PLOT,
    FINDINGS_MD,
    HEADLINE_JSON,
    PARTS_JSON,
    PRUNING_JSON,
    REPORTS,
    RUNS_JSON,
    SUMMARY_JSON,
)


def paired_families(p: Params, frame, summary: dict, parts_summary: dict | None, pruning_summary: dict | None):
    """Copies of the three questions' summaries whose comparisons are paired over seeds instead of Welch's: the
    same seed gives both arms the same batch order and views (and, for arms of the same shape, the same initial
    weights), so each comparison is the mean per-seed difference with its t interval and paired p
    (:func:`kdlab.analysis.stats.paired`), plus ``p_holm``, Holm-adjusted over that question's comparisons (the family the
    report and the headline draw conclusions from). ``frame``: every run's metrics (:func:`kdlab.analysis.results.frame`),
    so the report stage needs no model; the question stages' own files keep Welch."""
    out = []
    for question, s in ((1, summary), (2, parts_summary), (3, pruning_summary)):
        if s is None:
            out.append(None)
            continue
        s = copy.deepcopy(s)
        runs = frame[frame.question == question]
        if question == 2:  # placements and the carved students are compared with raw and kd of question 1
            runs = frame[frame.question.isin([1, 2])]
        pairs = [tuple(k.split("_vs_")) if "a" not in c else (c["a"], c["b"]) for k, c in s["comparisons"].items()]
        tested = stats.paired_pairs(runs, "group", "test_acc", pairs)
        adjusted = stats.holm({k: c["p"] for k, c in tested.items()})
        for (a, b), (key, c) in zip(pairs, s["comparisons"].items()):
            c["test_acc"] = {**tested[f"{a}_vs_{b}"], "p_holm": adjusted[f"{a}_vs_{b}"]}
        out.append(s)
    return tuple(out)


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


def headline(p: Params, summary: dict, parts_summary: dict | None = None, pruning_summary: dict | None = None) -> dict:
    """metrics/headline.json, the study's only DVC metrics: what `dvc metrics diff` and `dvc exp show` compare."""
    out = evaluate.headline(p, summary)
    if parts_summary is not None:
        out.update(parts.headline(p, parts_summary))
    if pruning_summary is not None:
        out.update(pruning.headline(p, pruning_summary))
    return out


def _gain(g: dict) -> str:
    """``+0.89 points (95% CI +-0.47, Holm p 0.041)``, from a headline comparison."""
    ci = f"95% CI \u00b1{g['ci']:.2f}, " if "ci" in g else ""
    p = f"Holm p {g['p_holm']:.3f}" if "p_holm" in g else "no test with one seed"
    return f"{g['gain']:+.2f} points ({ci}{p})"


def _call(g: dict) -> str:
    """What a comparison allows saying at the 5% family-wise level, no more."""
    if g.get("p_holm") is None:
        return "not tested"
    return "detectable at the 5% family-wise level" if g["p_holm"] < 0.05 else "not separable from zero"


def findings(p: Params, numbers: dict) -> str:
    """The README's opening: what this study found, in a few lines worded from metrics/headline.json."""
    n = len(p.study.seeds)
    q1 = numbers["q1"]
    lines = [f"What the study in this commit found ({p.data.name}; teacher `{p.teacher.arch}` at "
             f"{numbers['teacher']['acc']:.2f}%, students `{p.student.arch}` x{p.student.width} trained "
             f"{p.student.epochs} epochs; {n} seed{'s' if n > 1 else ''} per arm; `kdlab report` writes this from "
             f"`metrics/headline.json`; p-values Holm-adjusted within each question):", ""]
    for v in p.study.variants:
        if f"{v}_vs_raw" in q1:
            g = q1[f"{v}_vs_raw"]
            lines.append(f"- **Question 1:** `{v}` {numbers[v]['acc']:.2f}% against {numbers['raw']['acc']:.2f}% "
                         f"trained alone: {_gain(g)}, {_call(g)}.")
    if "kd_correct_only_vs_kd" in q1:
        g = q1["kd_correct_only_vs_kd"]
        lines.append(f"- **Question 1:** distilling only where the teacher is right against `kd`: {_gain(g)}, "
                     f"{_call(g)}.")
    for key, g in numbers.get("q2", {}).items():
        a, b = key.split("_vs_")
        lines.append(f"- **Question 2:** `{a}` against `{b}`: {_gain(g)}, {_call(g)}.")
    for key, g in numbers.get("q3", {}).items():
        size, a, b = re.fullmatch(r"(x\d+(?:\.\d+)?)\.(.+)_vs_(.+)", key).groups()
        what = {("kd", "raw"): "KD against labels alone, from the pruned weights",
                ("prune", "shape"): "the pruned weights against that shape from scratch, both distilled"}.get(
            (a, b), f"channels chosen by `{a}` against `{b}`, distilled")
        lines.append(f"- **Question 3** (the teacher pruned to {size} the student's size): {what}: {_gain(g)}, "
                     f"{_call(g)}.")
    lines += ["", f"Differences are paired over seeds (the same seed gives both arms the same batch order and views). "
              f"Students train {p.student.epochs} epochs here, the teacher {p.teacher.epochs}: whether KD helps or "
              f"caps a student trained to convergence is what question 1 in depth (below) tests. Details, tables and "
              f"pictures: `reports/report.md`."]
    return "\n".join(lines) + "\n"


def load_curves(names) -> dict[str, list]:
    return {n: io.load_json(CURVES / f"{n}.json", "dvc repro evaluate") for n in names}


def run_report(p: Params, metrics_files: dict | None = None, runs_frame=None):
    """Write the report, its pictures and the headline metrics, and log them to MLflow (the report as one
    HTML page with its pictures, which the UI shows); ``metrics_files`` ({run name: its metrics file}, from
    :func:`kdlab.analysis.results.metrics_files`): the study's runs, so that those DVC reused link into this study."""
    runs = io.load_json(RUNS_JSON, "dvc repro evaluate")
    curves = load_curves(runs)
    summary, parts_summary, pruning_summary = paired_families(
        p, runs_frame, io.load_json(SUMMARY_JSON, "dvc repro evaluate"),
        io.load_json(PARTS_JSON, "dvc repro parts") if PARTS_JSON.exists() else None,
        io.load_json(PRUNING_JSON, "dvc repro pruning") if PRUNING_JSON.exists() else None)
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
    numbers = headline(p, summary, parts_summary, pruning_summary)
    io.save_json(numbers, HEADLINE_JSON)
    io.save_text(findings(p, numbers), FINDINGS_MD)
    report = REPORTS / "report.md"
    text = render(p, summary, runs, parts_summary, pruning_summary)
    io.save_text(text, report)
    page = report_html(text, {n: (REPORTS / n).read_bytes() for n in pictures}, "kdlab report")
    with tracking.run("report", "report", flatten(p), description="The study's report: report.html (with its "
                      "pictures), report.md and the pictures apart; the headline numbers as metrics.") as run:
        linked = run.link_reused(metrics_files or {})
        flat = flatten_dict(numbers)  # kd.acc, q1.kd_vs_raw.p_holm...: the study row's columns in the runs table
        run.log(flat)
        run.log_to_study(flat)
        run.log_text(page, "report.html")
        run.log_artifact(report)
        for n in pictures:
            run.log_artifact(REPORTS / n, "pictures")
        run.log_study_text(page, "report.html")
    if linked:
        print(f"linked {len(linked)} runs DVC reused into this study's MLflow run: {', '.join(linked)}")
    print(f"wrote {report} and {len(pictures)} pictures")
    return report
