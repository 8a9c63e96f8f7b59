"""Questions 2 and 3 (studies/q23; ``kdlab report --study studies/q23/params.yaml``), from its metrics files alone.

The comparisons are the families ``q23.families`` declares before the runs: ``A - B`` of two student groups
(:class:`kdlab.analysis.q23_design.Group`), paired over the seeds both ran and neither collapsed on, with the 95% t interval,
the t-test's p, Holm's adjustment within its family and a verdict in four words
(:func:`kdlab.analysis.study_report.family`): above or below where the Holm-adjusted p is below 0.05, equivalent
where the Holm-adjusted TOST within +/- ``q23.effect`` points rejects, else inconclusive with the effect the seeds
could have detected. A run has collapsed (``q23.collapse``) when its final validation accuracy is more than
``below_median`` points under its group's median or under ``floor``: it is counted in its group's row and left out.

Besides: the pruning trade-off (test accuracy against parameters for prune-then-distil and the same shape from
scratch with KD and on the labels, at matched compute), the pruning diagnosis (each cut before and after BatchNorm
recalibration), CKA where it separates an arm from the two-teacher reference (the reference outside the arm's 95%
interval over seeds) and the training wall time the runs recorded.

Writes reports/q23/report.md, its pictures, reports/q23/findings.md (the README's ``q23`` block),
metrics/q23/analysis.json (every number) and metrics/q23/headline.json (the study's DVC metrics).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from kdlab.analysis import stats
from kdlab.analysis.present import plt, table
from kdlab.analysis.study_report import (
    ALPHA,
    POWER,
    brief,
    call,
    errorbar,
    family,
    gain,
    holm_gain,
    interval,
    pct,
    publish,
    said,
    short,
)
from kdlab.analysis.q23_design import LAYOUT, METRICS, Q23, REBUILD, Group
from kdlab.analysis.results import complete, frame
from kdlab.infra import io
from kdlab.infra.schema import flatten_dict
from kdlab.pipeline.cuts import cut_name
from kdlab.pipeline.params import Params

REPORT_DIR = LAYOUT.reports
#: what each family asks, in the report's and the README's words
QUESTIONS = {
    "vs_labels": "Which knowledge beats the labels?",
    "vs_kd": "Does any other knowledge beat logit KD, alone or added to it?",
    "weights": "The teacher's weights or its outputs (carved students, at the same student steps and at the same "
               "total steps)?",
    "selective": "Are the teacher's most important channels the ones worth a hint?",
    "pruned": "Does a pruned teacher beat its own shape from scratch?",
    "criteria": "Does the pruning criterion matter?",
    "curve": "Along the trade-off curve: pruned against its shape from scratch with KD, and KD against labels on "
             "that shape (matched compute)",
}


# ---------------------------------------------------------------- the runs

def load_runs(q: Q23, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per trained student of the study, from its rows in ``kdlab results``' table (``runs``:
    :func:`kdlab.analysis.results.frame` of this study alone): its name, group (the cell: ``arm`` there), arm
    (``q23_arm``), init, epochs, seed and metrics, and whether it collapsed (``q23.collapse``, against its group's
    median final validation accuracy)."""
    s = complete(runs, "the report")
    s = s[s.method != "teacher"]
    df = pd.DataFrame({"name": s.run.str.split("/", n=1).str[1], "group": s.arm, "arm": s.q23_arm, "init": s.init,
                       "epochs": s.epochs, "seed": s.seed, "test_acc": s.test_acc, "val_acc": s.val_acc,
                       "val_last": s.val_acc_last, "params": s.params, "wall_seconds": s.wall_seconds}
                      ).reset_index(drop=True)
    median = df.groupby("group").val_last.transform("median")
    df["collapsed"] = (100 * df.val_last < q.collapse.floor) | (100 * (median - df.val_last) > q.collapse.below_median)
    return df


def group_rows(df: pd.DataFrame) -> dict[str, dict]:
    """Per group: the test accuracy interval of its runs that did not collapse, its parameters, how many runs and
    how many collapsed (with their final validation accuracies)."""
    out = {}
    for g, runs in df.groupby("group", sort=False):
        kept = runs[~runs.collapsed]
        out[g] = {"test": interval(kept.test_acc) if len(kept) else None, "params": int(runs.params.iloc[0]),
                  "runs": int(len(runs)), "collapsed": int(runs.collapsed.sum()),
                  "collapsed_val": [round(100 * v, 2) for v in runs[runs.collapsed].val_last]}
    return out


def compare(df: pd.DataFrame, comparison: str) -> dict:
    """``A - B`` paired on the seeds both groups ran and neither collapsed on (``sd``: the SD of the pairs)."""
    a, _, b = comparison.partition(" - ")
    runs = df[~df.collapsed]
    left, right = (runs[runs.group == g].set_index("seed").test_acc for g in (a, b))
    seeds = sorted(set(left.index) & set(right.index))
    d = left[seeds].to_numpy(float) - right[seeds].to_numpy(float)
    return {**stats.paired(left[seeds].to_numpy(float), right[seeds].to_numpy(float)), "a": a, "b": b,
            "sd": float(d.std(ddof=1)) if len(d) > 1 else None}


def families(q: Q23, df: pd.DataFrame) -> dict[str, dict]:
    """Every declared family, each comparison with its verdict and, per family, what 80% power at ``q23.effect``
    would take with the SDs these pairs showed."""
    out = {}
    for name, comparisons in q.families.items():
        fam = family({c: compare(df, c) for c in comparisons}, q.effect / 100)
        sds = [c["sd"] for c in fam.values() if c["sd"] is not None]
        m = len(fam)
        sd = float(np.median(sds)) if sds else None
        out[name] = {"comparisons": fam, "median_pair_sd": sd,
                     "seeds_for_effect": None if sd is None else stats.seeds_for(sd, q.effect / 100, ALPHA / m, POWER)}
    return out


def curve(q: Q23, rows: dict) -> dict:
    """Per size of ``q23.prune.sizes``: the three arms of the trade-off (their parameters and test intervals)."""

    out = {}
    for size in q.prune.sizes:
        cut = cut_name(q.prune.iterative, size, True)
        out[str(size)] = {
            "pruned": rows[Group("kd", "pruned", q.epochs, cut).name],
            "shape_kd": rows[Group("kd", "shape", q.matched.pruned, cut).name],
            "shape_raw": rows[Group("raw", "shape", q.matched.pruned, cut).name]}
    return out


def cka_summary(q: Q23, df: pd.DataFrame, cka: dict) -> dict:
    """Per group CKA'd, per stage: the mean unbiased CKA with the teacher over seeds and its 95% interval, and
    whether the two-teacher reference lies outside it (CKA separates the group from another teacher seed)."""
    stages, ref = cka["stages"], cka["reference"]
    out = {}
    for g, runs in df[df.name.isin(list(cka["students"]))].groupby("group", sort=False):
        per = {}
        for st in stages:
            s = stats.t_interval([cka["students"][n][st]["unbiased"] for n in runs.name])
            lo, hi = s["ci_low"], s["ci_high"]
            per[st] = {**s, "separates": lo is not None and not lo <= ref[st]["unbiased"] <= hi}
        out[g] = per
    return {"images": cka["images"], "stages": stages, "reference": ref, "groups": out,
            "separating": sorted(g for g, per in out.items() if any(v["separates"] for v in per.values()))}


def compute(df: pd.DataFrame, teachers: dict) -> dict:
    """The training wall time the runs recorded: students, teachers, both."""
    students = float(df.wall_seconds.sum())
    t = float(sum(v.get("wall_seconds", 0.0) for v in teachers.values()))
    return {"students_seconds": students, "teachers_seconds": t, "seconds": students + t, "student_runs": len(df),
            "teacher_runs": len(teachers)}


def analyse(q: Q23, df: pd.DataFrame, teacher: dict, teachers: dict, prune: dict, cka: dict) -> dict:
    rows = group_rows(df)
    return {"teacher": teacher, "groups": rows, "families": families(q, df), "curve": curve(q, rows),
            "prune": prune, "cka": cka_summary(q, df, cka), "compute": compute(df, teachers), "seeds": q.seeds,
            "curve_seeds": q.curve_seeds, "collapsed": int(df.collapsed.sum())}


# ---------------------------------------------------------------- words

def _hours(seconds: float) -> str:
    h, m = divmod(round(seconds / 60), 60)
    return f"{h} h {m} min" if h else f"{m} min"


def _group_row(g: str, r: dict) -> list:
    collapsed = f"{r['collapsed']} of {r['runs']}" + (f" ({', '.join(f'{v:.1f}' for v in r['collapsed_val'])})"
                                                      if r["collapsed"] else "")
    return [f"`{g}`", f"{r['params']:,}", pct(r["test"]) if r["test"] else "-", collapsed]


def _family_table(fam: dict) -> str:
    rows = [[f"`{c['a']}` - `{c['b']}`", gain(c), said(c)] for c in fam["comparisons"].values()]
    return table(pd.DataFrame(rows, columns=["comparison", "difference (points)", "verdict"]))


def _power_line(q: Q23, name: str, fam: dict) -> str:
    sd, need = fam["median_pair_sd"], fam["seeds_for_effect"]
    if sd is None:
        return ""
    return (f"Median SD of the paired differences {100 * sd:.2f} points: 80% power at {q.effect} points in this "
            f"family of {len(fam['comparisons'])} would take {need if need else 'more than 500'} seeds.")


def render(p: Params, q: Q23, a: dict) -> str:
    t, ta, fams, rows = a["teacher"], q.teachers[q.teacher], a["families"], a["groups"]
    comp, r = a["compute"], q.recipe
    lines = [
        "# Questions 2 and 3", "",
        f"`{p.data.name}`, {q.train_images} training images (a seeded subset), checkpoints chosen on {q.val_images} "
        f"validation images, accuracy on the full test split. Recipe (every run): peak lr {r.lr}, {r.schedule} with "
        f"{r.warmup:.0%} warm-up, batch {r.batch_size}, weight average {r.ema}, {r.views} cached views. Teacher "
        f"`{q.teacher}`: `{ta.arch}` x{ta.width}, {ta.epochs} epochs, {100 * t['test_acc']:.2f}% test. Students: "
        f"`{q.student.arch}` x{q.student.width}, {q.epochs} epochs from their start unless a group's name says "
        f"otherwise (`-e60`, `-e{q.matched.pruned}`: random weights trained for the steps of the teacher (and of the "
        f"pruning) plus the student's: matched compute); KD alpha {p.loss.alpha}, temperature {p.loss.temperature}. "
        f"Seeds {q.seeds} for the families, {q.curve_seeds} for the trade-off curve and the family `pruned`; the same "
        f"seed gives every arm the same batch order and views. Differences in points, paired over seeds, with the 95% "
        f"t interval, the t-test's p and Holm's adjustment within each declared family "
        f"(`studies/q23/params.yaml`: `q23.families`); verdicts: above / below (Holm p < 0.05), equivalent within "
        f"+/-{q.effect} (TOST, Holm), else inconclusive with the effect 80% power would have needed. A run whose final "
        f"validation accuracy is more than {q.collapse.below_median} points under its group's median, or under "
        f"{q.collapse.floor}%, has collapsed: counted below and left out ({a['collapsed']} of "
        f"{comp['student_runs']} runs). Training wall time the runs recorded: {_hours(comp['seconds'])} "
        f"({comp['student_runs']} student and {comp['teacher_runs']} teacher runs, two at a time on 2 cores). "
        f"Regenerate with `dvc repro studies/q23/dvc.yaml` (`make q23`).", "",
        "## Every group", "",
        table(pd.DataFrame([_group_row(g, v) for g, v in rows.items()],
                           columns=["group", "params", "test accuracy (%)", "collapsed (final val %)"])), ""]
    for name, fam in fams.items():
        lines += [f"## {QUESTIONS.get(name, name)} (`{name}`)", "", _family_table(fam), "", _power_line(q, name, fam), ""]
        lines += [f"- {call(c['a'], c['b'], c)}" for c in fam["comparisons"].values()] + [""]
    lines += ["## The pruning trade-off", "",
              f"Teacher `{q.teacher}` pruned to each size by {q.prune.steps} steps of `{q.prune.iterative}` with "
              f"{q.prune.finetune_steps} KD steps between them, BatchNorm recalibrated, then distilled for {q.epochs} "
              f"epochs (`pruned`); the same shape freshly initialised and trained {q.matched.pruned} epochs with KD "
              f"(`shape, kd`) and on the labels (`shape, labels`): the same total steps. Test accuracy (%), mean "
              f"[95% interval] over seeds {q.curve_seeds}.", ""]
    crows = [[s, f"{c['pruned']['params']:,}", *(pct(c[k]["test"]) if c[k]["test"] else "-"
                                                  for k in ("pruned", "shape_kd", "shape_raw"))]
             for s, c in a["curve"].items()]
    lines += [table(pd.DataFrame(crows, columns=["size (x student)", "params", "pruned, kd", "shape, kd",
                                                 "shape, labels"])), "", "![trade-off](curve.png)", "",
              "## Why pruned teachers start at chance", "",
              f"Each cut of teacher `{q.teacher}` before any training: validation accuracy as cut and after "
              f"recalibrating BatchNorm's running statistics on {q.prune.recalibration_images} training images.", ""]
    prow = [[name, m["route"], m["scored_on"] or "-", f"{m['params']:,}", f"{100 * m['val_acc']:.2f}",
             f"{100 * m['val_acc_recalibrated']:.2f}"] for name, m in a["prune"]["models"].items()]
    lines += [table(pd.DataFrame(prow, columns=["cut", "route", "importance scored on", "params", "val % as cut",
                                                "val % recalibrated"])), ""]
    ck = a["cka"]
    st = ck["stages"]
    ref_words = ", ".join(f"{s} {ck['reference'][s]['unbiased']:.3f}" for s in st)
    lines += ["## CKA with the teacher, against a second teacher", "",
              f"Unbiased linear CKA with teacher `{q.teacher}` per stage on {ck['images']} validation images, mean "
              f"[95% interval] over seeds; the reference is teacher `{q.reference}`, the same architecture from another "
              f"seed: {ref_words}. A group is separated from "
              f"the reference at a stage when the reference lies outside its interval (marked *).", ""]
    krows = [[f"`{g}`", *(f"{v[s]['mean']:.3f}" + ("*" if v[s]["separates"] else "") for s in st)]
             for g, v in ck["groups"].items()]
    lines += [table(pd.DataFrame(krows, columns=["group", *st])), ""]
    return "\n".join(lines) + "\n"


def _cka_words(ck: dict) -> str:
    if not ck["separating"]:
        return ("CKA separates no arm from a second teacher seed at any stage: it does not tell these students "
                "apart.")
    return (f"CKA separates {len(ck['separating'])} of {len(ck['groups'])} groups from a second teacher seed "
            f"at one stage or more: " + ", ".join(f"`{g}`" for g in ck["separating"]) + "; the others it does not.")


def findings(p: Params, q: Q23, a: dict) -> str:
    """The README's answers to questions 2 and 3, worded from the analysis."""
    comp = a["compute"]
    lines = [
        f"Questions 2 and 3 (`make q23`: {p.data.name}, {q.train_images} training images, teacher "
        f"`{q.teachers[q.teacher].arch}` x{q.teachers[q.teacher].width} at {100 * a['teacher']['test_acc']:.2f}%, "
        f"students `{q.student.arch}` x{q.student.width}, {len(q.seeds)} seeds per family arm; differences in "
        f"points, [95% interval], Holm p within each declared family, equivalence within +/-{q.effect} points; "
        f"{a['collapsed']} of {comp['student_runs']} runs collapsed by the declared rule and are left out; "
        f"{_hours(comp['seconds'])} of training wall time recorded; `kdlab report --study "
        f"studies/q23/params.yaml` writes this from `metrics/q23/`; details in `reports/q23/report.md`):", ""]
    for name, fam in a["families"].items():
        lines.append(f"- **{QUESTIONS.get(name, name)}** " + "; ".join(
            f"`{c['a']}` - `{c['b']}`: {short(c)}, **{said(c)}**" for c in fam["comparisons"].values()) + ".")
    lines.append(f"- **CKA.** {_cka_words(a['cka'])}")
    return "\n".join(lines) + "\n"


def brief_findings(p: Params, q: Q23, a: dict) -> str:
    """The README's short block: data, teacher, student, budget and seeds first, then per declared family what the
    seeds decided (every interval and p: findings.md, on the study's docs page)."""
    t = q.teachers[q.teacher]
    lines = [f"Questions 2 and 3 ({p.data.name}, {q.train_images:,} training images; teacher `{t.arch}` x{t.width} "
             f"at {100 * a['teacher']['test_acc']:.2f}%; students `{q.student.arch}` x{q.student.width} trained "
             f"{q.epochs} epochs from their start, or at matched total steps; {len(q.seeds)} seeds per arm, "
             f"{len(q.curve_seeds)} along the pruning curve; paired over seeds, Holm within each declared family, "
             f"equivalence within +/-{q.effect} points; {a['collapsed']} collapsed runs; every interval and p: "
             f"[docs/study-q23.md](docs/study-q23.md)):", ""]
    lines += [brief(QUESTIONS.get(name, name), list(fam["comparisons"].values()), lambda c: f"`{c['a']}` - `{c['b']}`")
              for name, fam in a["families"].items()]
    return "\n".join(lines) + "\n"


def headline(q: Q23, a: dict) -> dict:
    """metrics/q23/headline.json, the study's DVC metrics: each declared comparison's difference in points (what
    `dvc metrics diff` should show; its interval, p and verdict are in the report and analysis.json) and how many
    runs collapsed: one value a comparison, so that a terminal can show them."""
    return {"collapsed": a["collapsed"],
            **{name: {c: holm_gain(v)["gain"] for c, v in fam["comparisons"].items()}
               for name, fam in a["families"].items()}}


# ---------------------------------------------------------------- pictures

def pictures(q: Q23, a: dict) -> dict:
    pyplot = plt()

    def arms(path):
        fig, ax = pyplot.subplots(figsize=(11, 4))
        names = [g for g in a["groups"] if g.split(".")[1].startswith("random-e") and a["groups"][g]["test"]
                 and g.endswith(f"-e{q.epochs}")]
        for i, g in enumerate(names):
            errorbar(ax, [i], a["groups"][g]["test"], color="tab:gray" if g.startswith("raw.") else f"C{i % 10}")
        ax.set_xticks(range(len(names)), [g.split(".")[0] for g in names], rotation=45, fontsize=8)
        ax.set_ylabel("test accuracy (%), mean and 95% CI")
        ax.set_title(f"every arm from random weights, {q.epochs} epochs")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        pyplot.close(fig)

    def trade_off(path):
        fig, ax = pyplot.subplots(figsize=(7, 4.5))
        styles = {"pruned": ("pruned, then kd", "tab:red"), "shape_kd": ("its shape from scratch, kd", "tab:blue"),
                  "shape_raw": ("its shape from scratch, labels", "tab:gray")}
        for key, (label, color) in styles.items():
            pts = [(c[key]["params"], c[key]["test"]) for c in a["curve"].values() if c[key]["test"]]
            xs = [x for x, _ in pts]
            ax.plot(xs, [100 * s["mean"] for _, s in pts], color=color, label=label)
            for x, s in pts:
                errorbar(ax, [x], s, color=color)
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_ylabel("test accuracy (%), mean and 95% CI")
        ax.set_title(f"accuracy against size (matched compute: scratch {q.matched.pruned} epochs)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        pyplot.close(fig)

    return {"arms.png": arms, "curve.png": trade_off}


# ---------------------------------------------------------------- the stage

def report(p: Params, q: Q23) -> dict:
    """The study's report stage (``kdlab report --study studies/q23/params.yaml``)."""
    return run_q23_report(p, q, frame(p, only=("q23", q)))


def run_q23_report(p: Params, q: Q23, runs: pd.DataFrame) -> dict:
    """``runs``: the study's rows of ``kdlab results``' table (:func:`kdlab.analysis.results.frame`); the
    study's other files are read from its metrics folder."""
    df = load_runs(q, runs)
    teachers = {t.run: {"wall_seconds": t.wall_seconds} for t in runs[runs.method == "teacher"].itertuples()}
    a = analyse(q, df, io.load_json(METRICS / "cache.json", REBUILD), teachers,
                io.load_json(METRICS / "prune.json", REBUILD), io.load_json(METRICS / "cka.json", REBUILD))
    study = flatten_dict(dataclasses.asdict(q), "q23.")  # as the study's training runs log it: the same MLflow study
    publish(p, study, "q23", "questions 2 and 3", REPORT_DIR, pictures(q, a), render(p, q, a), findings(p, q, a),
            brief_findings(p, q, a), a, headline(q, a), METRICS)
    return a
