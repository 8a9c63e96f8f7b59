"""``kdlab report``: reports/report.md and its pictures, assembled from each question's section.

Nothing here is typed by hand: every number comes from the metrics files the question stages wrote
(metrics/summary.json, runs.json and plots/curves/ from evaluate), as does metrics/headline.json, the few
numbers DVC compares across experiments and branches; :mod:`kdlab.analysis.evaluate` writes the sections and
pictures, in words that never claim more than the intervals do. The default study is question 1's core (a
teacher, its logit cache, raw / kd / kd_correct_only over the seeds): questions 2 and 3 are studies/q23's.
"""
from __future__ import annotations

import copy

from kdlab.analysis import evaluate, stats
from kdlab.analysis.present import report_html
from kdlab.analysis.results import complete
from kdlab.analysis.study_report import family, said, short
from kdlab.infra import io, tracking
from kdlab.infra.schema import flatten, flatten_dict
from kdlab.pipeline.params import Params
from kdlab.pipeline.workspace import (
    CURVES,
    CURVES_PLOT,
    FINDINGS_MD,
    HEADLINE_JSON,
    REPORTS,
    RUNS_JSON,
    SUMMARY_JSON,
    TABLE_MD,
)


def paired_family(frame, summary: dict, effect: float) -> dict:
    """A copy of question 1's summary whose comparisons are paired over seeds instead of Welch's: the same seed
    gives both arms the same batch order, views and initial weights, so each comparison is the mean per-seed
    difference with its t interval and paired p (:func:`kdlab.analysis.stats.paired`), plus ``p_holm``
    (Holm-adjusted over the study's comparisons, the family the report and the headline draw conclusions from)
    and the verdict it allows in four words (:func:`kdlab.analysis.study_report.family`: above, below, equivalent
    within the margin, inconclusive with the effect these seeds detect). ``frame``: every run's metrics
    (:func:`kdlab.analysis.results.frame`), so the report stage needs no model; evaluate's own file keeps Welch.
    ``effect``: the study's declared smallest effect of interest and equivalence margin, in points."""
    s = copy.deepcopy(summary)
    pairs = [tuple(k.split("_vs_")) for k in s["comparisons"]]
    tested = family(stats.paired_pairs(frame, "arm", "test_acc", pairs), effect / 100)
    for (a, b), c in zip(pairs, s["comparisons"].values()):
        c["test_acc"] = tested[f"{a}_vs_{b}"]
    return s


#: the first line of a report on made-up data (the tests' and `make smoke`'s studies)
SYNTHETIC_BANNER = ("> **These numbers mean nothing.** This study ran on tiny synthetic data (`data.name: synthetic`) "
                    "for an epoch or two, to show every output once; kdlab's answers are the studies on real data "
                    "(README.md).")


def banner(p: Params) -> list[str]:
    """:data:`SYNTHETIC_BANNER` and a blank line on synthetic data; nothing otherwise."""
    return [SYNTHETIC_BANNER, ""] if p.data.name == "synthetic" else []


def render(p: Params, summary: dict, runs: dict) -> str:
    return "\n".join([
        "# kdlab report",
        "",
        *banner(p),
        f"Data `{p.data.name}`; teacher `{p.teacher.arch}` (width {p.teacher.width}, {p.teacher.epochs} epochs); "
        f"students `{p.student.arch}` (width {p.student.width}, {p.student.epochs} epochs); KD alpha "
        f"{p.loss.alpha}, temperature {p.loss.temperature}; cached views per image: {p.cache.views}; "
        f"seeds {p.study.seeds}. Regenerate with `dvc repro` (this file is the `report` stage's output). Questions "
        f"2 and 3, and question 1 at convergence against controls: `studies/q23`, `studies/q1`.",
        "",
        *evaluate.report_section(p, summary, runs),
    ])


def _verdict(c: dict) -> str:
    """``+0.89 [+0.42, +1.35], Holm p 0.041: **above**`` (points), from a paired comparison of :func:`paired_family`."""
    if c.get("ci_low") is None or c.get("p_holm") is None:
        why = "one seed" if c.get("ci_low") is None else "the same difference on every seed"
        return f"{100 * c['diff']:+.2f} points ({why}: not testable)"
    return f"{short(c)}: **{said(c)}**"


def findings(p: Params, numbers: dict, summary: dict) -> str:
    """The README's opening: what this study found, in a few lines worded from metrics/headline.json and the
    paired comparisons' verdicts."""
    n = len(p.study.seeds)
    comps = {k: c["test_acc"] for k, c in summary["comparisons"].items()}
    lines = [*banner(p), f"What the default study in this commit found ({p.data.name}; teacher `{p.teacher.arch}` at "
             f"{numbers['teacher']['acc']:.2f}%, students `{p.student.arch}` x{p.student.width} trained "
             f"{p.student.epochs} epochs; {n} seed{'s' if n > 1 else ''} per arm; `kdlab report` writes this; "
             f"differences in points, paired over seeds, Holm-adjusted over the {len(comps)} comparisons, "
             f"equivalence within "
             f"+/-{p.study.effect:.1f} points by TOST, the declared `study.effect`):", ""]
    for v in p.study.methods:
        if f"{v}_vs_raw" in comps:
            lines.append(f"- `{v}` {numbers[v]['acc']:.2f}% against {numbers['raw']['acc']:.2f}% trained alone: "
                         f"{_verdict(comps[f'{v}_vs_raw'])}.")
    if "kd_correct_only_vs_kd" in comps:
        lines.append(f"- distilling only where the teacher is right against `kd`: "
                     f"{_verdict(comps['kd_correct_only_vs_kd'])}.")
    lines += ["", f"Students train {p.student.epochs} epochs here, the teacher {p.teacher.epochs}: whether KD beats "
              f"labels at convergence and against label smoothing, and what caps it, is question 1 in depth "
              f"(`studies/q1`); which knowledge transfers and what pruning trades are questions 2 and 3 "
              f"(`studies/q23`). Details, tables and pictures: `reports/report.md`."]
    return "\n".join(lines) + "\n"


def load_curves(names) -> dict[str, list]:
    return {n: io.load_json(CURVES / f"{n}.json", "dvc repro evaluate") for n in names}


def run_report(p: Params, metrics_files: dict | None = None, runs_frame=None):
    """Write the report, its pictures and the headline metrics, and log them to MLflow (the report as one
    HTML page with its pictures, which the UI shows); ``metrics_files`` ({run name: its metrics file}, from
    :func:`kdlab.analysis.results.metrics_files`): the study's runs, so that those DVC reused link into this study."""
    if runs_frame is not None:  # every comparison is paired over the seeds of every arm: no report with holes
        complete(runs_frame, "the report")
    runs = io.load_json(RUNS_JSON, "dvc repro evaluate")
    curves = load_curves(runs)
    summary = paired_family(runs_frame, io.load_json(SUMMARY_JSON, "dvc repro evaluate"), p.study.effect)
    REPORTS.mkdir(exist_ok=True)
    pictures = evaluate.pictures(p, summary, runs, curves)
    for name, draw in pictures.items():
        tmp = REPORTS / f".{name}.tmp.png"
        draw(tmp)
        tmp.replace(REPORTS / name)
    io.save_json(evaluate.curve_rows(runs, curves), CURVES_PLOT)
    numbers = evaluate.headline(p, summary)  # metrics/headline.json: what `dvc metrics diff` compares
    io.save_json(numbers, HEADLINE_JSON)
    io.save_text(findings(p, numbers, summary), FINDINGS_MD)
    io.save_text(evaluate.markdown(p, summary), TABLE_MD)  # the table with the paired, Holm-adjusted p (docs/)
    report = REPORTS / "report.md"
    text = render(p, summary, runs)
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
