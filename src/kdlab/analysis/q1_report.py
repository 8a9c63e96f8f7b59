"""Question 1 in depth (studies/q1; ``kdlab report --study studies/q1/params.yaml``), from its metrics files alone.

The comparisons are the families ``q1.families`` declares before the runs: ``A - B`` is paired over seeds (the
same seed gives both arms the same initialisation, batch order and views), ``A - teacher`` is the student minus
the test accuracy of the teacher it was distilled from (one teacher run: a one-sample comparison, the teacher's
own seed-to-seed spread is not in the interval). Each has its mean difference with the 95% t interval and the
t-test's p, Holm's adjustment within its family, and a verdict in four words
(:func:`kdlab.analysis.study_report.family`): above or below where the Holm-adjusted p is below 0.05, equivalent
where the Holm-adjusted TOST within +/- ``q1.effect`` points rejects, else inconclusive with the effect the seeds
could have detected. A run below ``q1.collapse`` validation accuracy has collapsed: it is counted in its arm's
row and its seed left out of that arm's pairs.

Besides: whether raw has plateaued at the last of ``q1.budgets`` and at the last of ``q1.long.budgets`` (its
validation gain over the budget before it, against ``q1.plateau``), the training wall time the runs recorded, and
the inherited errors of every arm: its agreement with the teacher on test and its accuracy
on the test images the teacher gets right and wrong (the arms on the labels alone against ``q1.teacher``).

Writes reports/q1/report.md, its pictures, reports/q1/findings.md (the README's ``q1`` block),
metrics/q1/analysis.json (every number) and metrics/q1/headline.json (the study's DVC metrics).
"""
from __future__ import annotations

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
from kdlab.analysis.q1_design import (
    CACHE_METRICS,
    LAYOUT,
    METRICS,
    Q1,
    REBUILD,
    TESTS,
    arm_name,
    arm_teacher,
    overrides,
    study_params,
)
from kdlab.analysis.results import complete, frame
from kdlab.infra import io
from kdlab.pipeline.params import Params, with_overrides

REPORT_DIR = LAYOUT.reports
REPORT_MD = REPORT_DIR / "report.md"
FINDINGS_MD = REPORT_DIR / "findings.md"
HEADLINE_JSON = METRICS / "headline.json"
PILOT_JSON = METRICS / "pilot.json"
#: what each family asks, in the report's and the README's words
QUESTIONS = {
    "kd_vs_labels": "Does KD beat the labels, and beat label smoothing?",
    "kd_vs_labels_long": "At the longer budget: does KD beat the labels, and beat label smoothing?",
    "patience": "Does a patient teacher (fresh views, run online) beat cached logits?",
    "cap": "Does KD cap the student at its teacher?",
    "teachers": "How does the KD gain depend on the teacher?",
    "correct_only": "Does distilling only where the teacher is right help?",
    "controls": "Where the teacher is wrong often: which part of its signal matters?",
}


# ---------------------------------------------------------------- the runs

def digits(s: str) -> np.ndarray:
    """A predictions string (one digit per test image, or comma-separated labels) as an int array."""
    if "," in s:
        return np.array([int(x) for x in s.split(",")], dtype=np.int64)
    return np.frombuffer(s.encode(), dtype=np.uint8).astype(np.int64) - 48


def load_runs(q: Q1, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per trained student, from its row in ``kdlab results``' table (``runs``:
    :func:`kdlab.analysis.results.frame` of this study alone: arm, method, teacher, epochs, seed, accuracies,
    wall time) and its test record (validation curve, test predictions), and whether it collapsed (final
    validation accuracy below ``q1.collapse`` points)."""
    s = complete(runs, "the report")
    rows = []
    for r in s[s.method != "teacher"].itertuples():
        name = r.run.split("/", 1)[1]
        t = io.load_json(TESTS / f"{name}.json", REBUILD)
        rows.append({"name": name, "arm": r.arm, "method": r.method, "teacher": r.q1_teacher or None,
                     "epochs": r.epochs, "seed": r.seed, "test_acc": r.test_acc, "val_acc": r.val_acc,
                     "val_curve": t["val_curve"], "pred": digits(t["pred"]), "collapsed": 100 * r.val_acc < q.collapse,
                     "wall_seconds": r.wall_seconds})
    return pd.DataFrame(rows)


def load_teachers(q: Q1, runs: pd.DataFrame) -> dict[str, dict]:
    """Per cached teacher: its run (architecture, width, training images, epochs), accuracies and wrong fractions
    (q1_cache), validation curve, test predictions and wall time (its row in ``runs``)."""
    wall = {r.q1_teacher: r.wall_seconds for r in runs[runs.method == "teacher"].itertuples()}
    out = {}
    for name, run in q.cached.items():
        c = io.load_json(CACHE_METRICS / f"{name}.json", REBUILD)
        t = io.load_json(TESTS / f"teacher.{name}.json", REBUILD)
        curve = io.load_json(METRICS / "teachers" / f"{run}.curve.json", REBUILD)["val_curve"]
        r = q.teachers[run]
        out[name] = {**c, "pred": digits(t["pred"]), "wall_seconds": wall[run], "labels": digits(t["labels"]),
                     "val_curve": curve,
                     "arch": r.arch, "width": r.width, "epochs": r.epochs, "images": r.train_images or q.train_images}
    return out


# ---------------------------------------------------------------- statistics

def arm_rows(q: Q1, df: pd.DataFrame) -> dict[str, dict]:
    """Per arm: the test accuracy interval of its runs that did not collapse, its mean validation accuracy and how
    many runs collapsed."""
    out = {}
    for arm, runs in df.groupby("arm", sort=False):
        kept = runs[~runs.collapsed]
        out[arm] = {"test": interval(kept.test_acc) if len(kept) else None,
                    "val": float(kept.val_acc.mean()) if len(kept) else None,
                    "runs": int(len(runs)), "collapsed": int(runs.collapsed.sum())}
    return out


def compare(df: pd.DataFrame, teachers: dict, comparison: str) -> dict:
    """``A - B`` paired on the seeds neither arm collapsed on, or ``A - teacher`` against the test accuracy of
    A's teacher (one-sample)."""
    a, _, b = comparison.partition(" - ")
    runs = df[~df.collapsed]
    left = runs[runs.arm == a].set_index("seed").test_acc
    if b == "teacher":
        return {**stats.paired(left.to_numpy(float), np.full(len(left), teachers[arm_teacher(a)]["test_acc"])),
                "a": a, "b": b}
    right = runs[runs.arm == b].set_index("seed").test_acc
    seeds = sorted(set(left.index) & set(right.index))
    return {**stats.paired(left[seeds].to_numpy(float), right[seeds].to_numpy(float)), "a": a, "b": b}


def raw_budgets(q: Q1) -> list[int]:
    """Every budget raw trains at: ``q1.budgets`` and ``q1.long.budgets``."""
    return [*q.budgets, *q.long.budgets]


def plateau(q: Q1, rows: dict[str, dict]) -> dict:
    """Raw's mean validation accuracy at every budget, and the plateau rule's checks: its gain from the budget
    before the last to the last, of ``q1.budgets`` and of ``q1.long.budgets`` (each with two or more)."""
    val = {e: rows[arm_name("raw", None, e)]["val"] for e in raw_budgets(q)}
    checks = []
    for budgets in (q.budgets, q.long.budgets):
        if len(budgets) < 2:
            continue
        lo, hi = budgets[-2], budgets[-1]
        g = None if None in (val[lo], val[hi]) else val[hi] - val[lo]
        checks.append({"from": lo, "to": hi, "gain": g, "plateaued": None if g is None else bool(100 * g < q.plateau)})
    return {"val": val, "checks": checks, "threshold": q.plateau}


def _plateau_words(q: Q1, pl: dict) -> str:
    """``from 30 to 40 epochs +0.65 points (not plateaued); ...`` (every collapsed: said so)."""
    return "; ".join(
        f"from {c['from']} to {c['to']} epochs " + ("every run of one of them collapsed" if c["gain"] is None else
                                                    f"{100 * c['gain']:+.2f} points "
                                                    f"({'plateaued' if c['plateaued'] else 'not plateaued'})")
        for c in pl["checks"])


def compute(df: pd.DataFrame, teachers: dict, q: Q1) -> dict:
    """The training wall time the runs recorded (seconds): every student, and every teacher run once (a cached
    name is one run); the start-up of each stage's process, the caches and DVC's bookkeeping are not in it."""
    runs = {q.cached[t]: r["wall_seconds"] for t, r in teachers.items()}
    return {"students": float(df.wall_seconds.sum()), "teachers": float(sum(runs.values())),
            "student_runs": int(len(df)), "teacher_runs": len(runs)}


def inherited(q: Q1, df: pd.DataFrame, teachers: dict) -> dict[str, dict]:
    """Per arm, against its teacher (``q1.teacher`` for the arms on the labels alone): per seed, the fraction of
    test images on which the student predicts what the teacher does, and its accuracy on the test images the
    teacher gets right and on those it gets wrong; intervals over the seeds that did not collapse."""
    out = {}
    for arm, runs in df[~df.collapsed].groupby("arm", sort=False):
        t = arm_teacher(arm) or q.teacher
        tp, labels = teachers[t]["pred"], teachers[t]["labels"]
        right = tp == labels
        preds = list(runs.pred)
        out[arm] = {"teacher": t, "teacher_wrong": int((~right).sum()),
                    "agreement": interval([float((p == tp).mean()) for p in preds]),
                    "teacher_right": interval([float((p[right] == labels[right]).mean()) for p in preds]),
                    "teacher_wrong_acc": interval([float((p[~right] == labels[~right]).mean()) for p in preds])}
    return out


def analyse(q: Q1, df: pd.DataFrame, teachers: dict) -> dict:
    rows = arm_rows(q, df)
    fams = {name: family({c: compare(df, teachers, c) for c in comparisons}, q.effect / 100)
            for name, comparisons in q.families.items()}
    return {"arms": rows, "families": fams, "plateau": plateau(q, rows), "inherited": inherited(q, df, teachers),
            "compute": compute(df, teachers, q),
            "teachers": {t: {k: v for k, v in r.items() if not isinstance(v, np.ndarray)} for t, r in teachers.items()},
            "raw_curve": {e: np.mean(np.stack([np.asarray(c) for c in df[df.arm == arm_name("raw", None, e)]
                                                .val_curve]), axis=0).tolist() for e in raw_budgets(q)},
            "power": power(q, io.load_json(PILOT_JSON, REBUILD))}


def power(q: Q1, pilot: dict) -> dict:
    """The seeds each declared family needs for 80% power at ``q1.effect`` under Holm (its first step: level 0.05
    over the family's size), from the paired SD of the recipe the pilot adopted, against the seeds the study
    runs, and the effect those seeds detect."""
    sd = (pilot.get("power") or {}).get("sd")
    out = {"adopted": pilot.get("adopted"), "sd": sd, "seeds": len(q.seeds), "families": {}}
    for name, comparisons in q.families.items():
        m = len(comparisons)
        out["families"][name] = {
            "size": m, "needed": None if sd is None else stats.seeds_for(sd, q.effect, ALPHA / m, POWER),
            "detectable": None if sd is None else stats.detectable(sd, len(q.seeds), ALPHA / m, POWER)}
    return out


# ---------------------------------------------------------------- words

def _hours(c: dict) -> str:
    """``2 h 1 min of training wall time recorded by 151 student and 4 teacher runs (teachers 8 min)``."""
    def hm(sec: float) -> str:
        h, m = divmod(round(sec / 60), 60)
        return f"{h} h {m} min" if h else f"{m} min"
    return (f"{hm(c['students'] + c['teachers'])} of training wall time recorded by {c['student_runs']} student and "
            f"{c['teacher_runs']} teacher runs (teachers {hm(c['teachers'])}; process start-up, the logit caches and "
            f"DVC not included)")


def _n(k: int, noun: str) -> str:
    return f"{k} {noun}{'' if k == 1 else 's'}"


def _arm(arm: str) -> str:
    return f"`{arm}`"


def _side(c: dict) -> str:
    return "its teacher" if c["b"] == "teacher" else _arm(c["b"])


def _label(c: dict) -> str:
    """A comparison as the params declare it: `` `kd.main-e40` - `raw-e40` ``, `` `kd.big-e30` - teacher ``."""
    return f"{_arm(c['a'])} - {'teacher' if c['b'] == 'teacher' else _arm(c['b'])}"


def render(p: Params, q: Q1, a: dict) -> str:
    n, rows, pl = len(q.seeds), a["arms"], a["plateau"]
    r = q.recipe
    lines = [
        "# Question 1 in depth: does distillation cap the student?", "",
        f"`{p.data.name}`, {q.train_images:,} training images (a seeded subset), checkpoints chosen on "
        f"{q.val_images:,} validation images, accuracy on the full test split. Students `{q.student.arch}` "
        f"x{q.student.width}; KD alpha {p.loss.alpha}, temperature {p.loss.temperature}; {_n(n, 'seed')} per arm, "
        f"the same seeds in every arm. Recipe (adopted by the pilot, `reports/q1/pilot.md`): "
        + (", ".join(f"{k} {str(v).lower()}" for k, v in r.items()) if r else "the default study's train.*")
        + f". Arms are `method.teacher-e<epochs>`. Comparisons are the families `q1.families` declared before the "
        f"runs: mean difference [95% t interval] in points, t-test p, Holm within the family; equivalence is TOST "
        f"within +/-{q.effect} points. A run below {q.collapse}% validation accuracy counts as collapsed and is left "
        f"out. Regenerate with `make q1` (`dvc repro studies/q1/dvc.yaml`); this file is the `q1_report` stage's "
        f"output.", ""]
    pw = a["power"]
    if pw["sd"] is not None:
        lines += [f"Seeds: the pilot adopted `{pw['adopted']}`, whose largest paired SD of kd - raw was {pw['sd']:.2f} "
                  f"points. For 80% power at {q.effect} points under Holm, each declared family needs: " + "; ".join(
                      f"`{f}` ({_n(r['size'], 'comparison')}) {r['needed']} seeds (these {pw['seeds']} detect "
                      + ("nothing: one seed" if r["detectable"] is None else f"{r['detectable']:.2f} points") + ")"
                      for f, r in pw["families"].items()) + ".", ""]
    else:
        lines += ["Seeds: the pilot adopted no recipe, so no power analysis sized them.", ""]
    lines += [f"Compute: {_hours(a['compute'])}.", "", "## Teachers", ""]
    trows = [[f"`{t}`", f"`{r['arch']}` x{r['width']}", f"{r['images']:,}", r["epochs"], f"{100 * r['test_acc']:.2f}",
              f"{100 * r['train_images_wrong']:.2f}"] for t, r in a["teachers"].items()]
    lines += [table(pd.DataFrame(trows, columns=["teacher", "model", "training images", "epochs", "test %",
                                                 "study's training images wrong %"])), "",
              "## Arms", "",
              "Raw's validation accuracy by budget: " + ", ".join(
                  f"{e} epochs " + ("every run collapsed" if v is None else f"{100 * v:.2f}%") for e, v in pl["val"].items())
              + (f". Its gain in the last quarter of a budget, by the declared rule (plateaued: under {q.plateau} "
                 f"points): {_plateau_words(q, pl)}." if pl["checks"] else "."), "",
              "![accuracy of every arm](arms.png)", ""]
    arows = [[_arm(arm), pct(r["test"]) if r["test"] else "", f"{100 * r['val']:.2f}" if r["val"] is not None else "",
              f"{r['collapsed']} of {r['runs']}"] for arm, r in rows.items()]
    lines += [table(pd.DataFrame(arows, columns=["arm", "test % [95% CI]", "val %", "collapsed"])), ""]
    for name, fam in a["families"].items():
        lines += [f"## {QUESTIONS.get(name, name)} (`{name}`)", ""]
        frows = [[_label(c), gain(c), said(c)]
                 for c in fam.values()]
        lines += [table(pd.DataFrame(frows, columns=["comparison", "difference (points)", "verdict"])), ""]
        lines += [f"- {call(_arm(c['a']), _side(c), c)}" for c in fam.values()]
        if name == "cap":
            lines += ["", "![students against their teachers](student_vs_teacher.png)"]
        lines.append("")
    lines += ["## Inherited errors", "",
              "Per arm, against its teacher (the arms on the labels alone against `" + q.teacher + "`): agreement "
              "with the teacher's test predictions, and accuracy on the test images the teacher gets right and wrong "
              "(mean [95% interval] over seeds, %).", ""]
    irows = [[_arm(arm), f"`{r['teacher']}`", pct(r["agreement"]), pct(r["teacher_right"]),
              f"{pct(r['teacher_wrong_acc'])} of {r['teacher_wrong']:,}"] for arm, r in a["inherited"].items()]
    lines += [table(pd.DataFrame(irows, columns=["arm", "teacher", "agreement", "acc where teacher right",
                                                 "acc where teacher wrong (images)"])), "",
              "![learning curves](curves.png)", ""]
    return "\n".join(lines) + "\n"


def findings(p: Params, q: Q1, a: dict) -> str:
    """The README's question-1 answers, worded from the analysis: each a verdict with its interval and Holm p."""
    pl, fams = a["plateau"], a["families"]
    lines = [f"Question 1 in depth (`make q1`: {_setting(p, q, a)}; differences in points, [95% "
             f"interval], Holm p within each declared family, equivalence within +/-{q.effect} points; "
             f"{_hours(a['compute'])}; `kdlab report --study studies/q1/params.yaml` writes this from "
             f"`metrics/q1/`; details in `reports/q1/report.md`):", ""]
    if pl["checks"]:
        lines.append(f"- **Has raw plateaued?** Its validation accuracy gains {_plateau_words(q, pl)}; the rule: "
                     f"under {q.plateau} points.")
    for name, fam in fams.items():
        lines.append(f"- **{QUESTIONS.get(name, name)}** " + "; ".join(
            f"{_label(c)}: {short(c)}, **{said(c)}**"
            for c in fam.values()) + ".")
    inh = a["inherited"]
    lines.append("- **Inherited errors:** on the test images the teacher gets wrong, accuracy " + "; ".join(
        f"{_arm(arm)} {100 * r['teacher_wrong_acc']['mean']:.1f}% (agreement {100 * r['agreement']['mean']:.1f}%)"
        for arm, r in inh.items() if r["teacher"] == q.teacher and arm.endswith(f"-e{q.budgets[0]}")) + ".")
    return "\n".join(lines) + "\n"


def _setting(p: Params, q: Q1, a: dict) -> str:
    """The study's data, teacher, student, budgets and seeds, as the first line of its findings says them."""
    t = q.teachers[q.teacher]
    budgets = list(dict.fromkeys([*q.budgets, *q.long.budgets]))
    return (f"{p.data.name}, {q.train_images:,} training images; teacher `{q.teacher}` (`{t.arch}` x{t.width}) at "
            f"{100 * a['teachers'][q.teacher]['test_acc']:.2f}% and {_n(len(a['teachers']) - 1, 'other')}; students "
            f"`{q.student.arch}` x{q.student.width} trained {', '.join(map(str, budgets))} epochs; {_n(len(q.seeds), 'seed')} per arm")


def brief_findings(p: Params, q: Q1, a: dict) -> str:
    """The README's short block: the setting, then per declared family what the seeds decided."""
    lines = [f"Question 1 in depth ({_setting(p, q, a)}; paired over seeds, Holm within each declared family, "
             f"equivalence within +/-{q.effect} points; every interval and p: [docs/study-q1.md](docs/study-q1.md)):",
             ""]
    if a["plateau"]["checks"]:
        lines.append(f"- **Has raw plateaued?** Its validation accuracy gains {_plateau_words(q, a['plateau'])}; "
                     f"the rule: under {q.plateau} points.")
    lines += [brief(QUESTIONS.get(name, name), list(fam.values()), _label) for name, fam in a["families"].items()]
    return "\n".join(lines) + "\n"


def headline(q: Q1, a: dict) -> dict:
    """metrics/q1/headline.json, the study's DVC metrics, as q23's: each declared comparison's difference in points
    (its interval, Holm p and verdict are in the report and analysis.json; every arm's accuracy too), each teacher's
    test accuracy (%) and raw's validation gain at the plateau checks: one value a comparison, so that a terminal
    can show them (at most 40)."""
    out = {"teacher_acc": {t: round(100 * r["test_acc"], 2) for t, r in a["teachers"].items()}}
    for name, fam in a["families"].items():
        out[name] = {k.replace(" ", ""): holm_gain(c)["gain"] for k, c in fam.items()}
    gains = {f"{c['from']}-{c['to']}": round(100 * c["gain"], 2)
             for c in a["plateau"]["checks"] if c["gain"] is not None}
    if gains:
        out["raw_val_gain"] = gains
    return out


# ---------------------------------------------------------------- pictures

def pictures(q: Q1, a: dict) -> dict:
    pyplot = plt()

    def arms(path):
        rows = [(arm, r["test"]) for arm, r in a["arms"].items() if r["test"]]
        fig, ax = pyplot.subplots(figsize=(7, 0.3 * len(rows) + 1.2))
        for i, (arm, s) in enumerate(rows):
            lo = s["mean"] if s["ci_low"] is None else s["ci_low"]
            hi = s["mean"] if s["ci_high"] is None else s["ci_high"]
            ax.errorbar(100 * s["mean"], i, xerr=[[100 * (s["mean"] - lo)], [100 * (hi - s["mean"])]], fmt="o",
                        capsize=3, color=f"C{0 if arm_teacher(arm) is None else 1}")
        for t, r in a["teachers"].items():
            ax.axvline(100 * r["test_acc"], color="gray", lw=0.8, ls="--")
            ax.annotate(f"teacher {t}", (100 * r["test_acc"], len(rows) - 0.5), fontsize=6, rotation=90)
        ax.set_yticks(range(len(rows)), [arm for arm, _ in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set(xlabel="test accuracy (%, 95% CI)", title="every arm (blue: labels alone)")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        pyplot.close(fig)

    def student_vs_teacher(path):
        fig, ax = pyplot.subplots(figsize=(6, 4))
        for c in a["families"].get("cap", {}).values():
            x = 100 * a["teachers"][arm_teacher(c["a"])]["test_acc"]
            errorbar(ax, x, c, color="C1")
            ax.annotate(c["a"], (x, 100 * c["diff"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.axhline(0, color="gray", lw=1)
        ax.set(xlabel="teacher test accuracy (%)", ylabel="student - teacher (points, 95% CI)",
               title="students against their teachers")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        pyplot.close(fig)

    def curves(path):
        fig, ax = pyplot.subplots(figsize=(6, 4))
        lows = []
        for t, r in a["teachers"].items():
            c = r["val_curve"]
            ax.plot(range(1, len(c) + 1), [100 * x for x in c], label=f"teacher {t}")
            lows.append(min(c))
        for e, c in a["raw_curve"].items():
            ax.plot(range(1, len(c) + 1), [100 * x for x in c], label=f"raw student, {e} epochs (mean)")
            lows.append(min(c))
        ax.set_ylim(bottom=max(0, min(100 * min(lows), 60)))
        ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title="learning curves")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        pyplot.close(fig)

    out = {"arms.png": arms, "curves.png": curves}
    if "cap" in a["families"]:
        out["student_vs_teacher.png"] = student_vs_teacher
    return out


# ---------------------------------------------------------------- the stage

def report(p: Params, q: Q1) -> dict:
    """The study's report stage (``kdlab report --study studies/q1/params.yaml``)."""
    return run_q1_report(p, q)


def run_q1_report(p: Params, q: Q1) -> dict:
    """The report, from the study's rows of ``kdlab results``' table and its test records."""
    runs = frame(p, only=("q1", q))
    df = load_runs(q, runs)
    a = analyse(q, df, load_teachers(q, runs))
    # the params as the study's training runs log them (the recipe in place of train.*): the same MLflow study
    study = study_params(q)
    publish(with_overrides(p, overrides(q)), study, "q1", "question 1 in depth", REPORT_DIR, pictures(q, a),
            render(p, q, a), findings(p, q, a), brief_findings(p, q, a), a, headline(q, a), METRICS)
    return a
