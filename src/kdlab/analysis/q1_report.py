"""``kdlab q1_report``: question 1 in depth (studies/q1), from the study's metrics files alone.

Every comparison is paired over seeds (the same seed gives both arms the same initialisation, batch order and
views): the mean difference with its 95% t interval and the paired t-test's p, then Holm's adjustment within
each family the report draws conclusions from (budget, capacity, teacher quality, question 1b's controls, and
the three breakdowns of where the gain comes from). A verdict has four words
(:func:`kdlab.analysis.study_report.family`): above or below where the Holm-adjusted p is below 0.05, equivalent
where the Holm-adjusted TOST within +/-0.5 points rejects, else inconclusive with the effect the seeds could have
detected. A student against its teacher is a one-sample comparison: one teacher (one seed), so the teacher's
own seed-to-seed spread is not in the interval.

Writes reports/q1/report.md, its pictures, reports/q1/findings.md (the README's ``q1`` block),
metrics/q1/analysis.json (every number) and metrics/q1/headline.json (the study's DVC metrics).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kdlab.analysis import stats
from kdlab.analysis.present import plt, table
from kdlab.analysis.study_report import (
    call,
    errorbar,
    family,
    gain,
    holm_gain,
    interval,
    paired_on,
    pct,
    publish,
    said,
    short,
)
from kdlab.infra import io
from kdlab.pipeline.params import Params
from kdlab.pipeline.q1 import CACHE_METRICS, METRICS, Q1, STUDY, TESTS, student_name, study_params

REPORT_DIR = Path("reports/q1")
REPORT_MD = REPORT_DIR / "report.md"
FINDINGS_MD = REPORT_DIR / "findings.md"
ANALYSIS_JSON = METRICS / "analysis.json"
HEADLINE_JSON = METRICS / "headline.json"
REBUILD = f"dvc repro {STUDY.parent / 'dvc.yaml'}"
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
#: teacher-confidence bins (max softmax probability on the clean test image)
CONFIDENCE_EDGES = (0.0, 0.6, 0.9, 0.99, 1.0)


# ---------------------------------------------------------------- the runs

def expected_runs(q: Q1) -> list[tuple[str, str | None, float, int]]:
    """(variant, teacher, width, epochs) of every arm the study trains (each over q1.seeds)."""
    w, arms = q.student.width, []
    for e in q.budgets:
        arms += [("raw", None, w, e)] + [(v, q.teacher, w, e) for v in q.variants]
    for width in q.widths:
        arms += [("raw", None, width, q.converged), ("kd", q.teacher, width, q.converged)]
    arms += [("kd", t, w, q.quality_epochs) for t in q.quality]
    arms += [(v, q.control_teacher, w, q.quality_epochs) for v in q.controls]
    return list(dict.fromkeys(arms))


def digits(s: str) -> np.ndarray:
    """A predictions string (kdlab.pipeline.q1._digits) as an int array."""
    if "," in s:
        return np.array([int(x) for x in s.split(",")], dtype=np.int64)
    return np.frombuffer(s.encode(), dtype=np.uint8).astype(np.int64) - 48


def load_runs(q: Q1) -> pd.DataFrame:
    """One row per trained student: its arm, seed, accuracies, parameter count, validation curve and test
    predictions."""
    rows = []
    for variant, teacher, width, epochs in expected_runs(q):
        for seed in q.seeds:
            name = student_name(variant, teacher, width, epochs, seed)
            t = io.load_json(TESTS / f"{name}.json", REBUILD)
            m = io.load_json(METRICS / "students" / f"{name}.json", REBUILD)
            rows.append({"name": name, "arm": variant if teacher is None else f"{variant}.{teacher}",
                         "variant": variant, "teacher": teacher, "width": width, "epochs": epochs, "seed": seed,
                         "test_acc": t["test_acc"], "val_acc": t["val_acc"], "params": m["params"],
                         "val_curve": t["val_curve"], "pred": digits(t["pred"])})
    return pd.DataFrame(rows)


def load_teachers(q: Q1) -> dict[str, dict]:
    """Per cached teacher: its accuracies and wrong fractions (q1_cache) and its test predictions."""
    out = {}
    for name in q.cached:
        c = io.load_json(CACHE_METRICS / f"{name}.json", REBUILD)
        t = io.load_json(TESTS / f"teacher.{name}.json", REBUILD)
        out[name] = {**c, "pred": digits(t["pred"]), "labels": digits(t["labels"]),
                     "confidence": np.asarray(t["confidence"], dtype=float)}
    for name in q.teachers:
        curve = io.load_json(METRICS / "teachers" / f"{name}.curve.json", REBUILD)["val_curve"]
        if name in out:
            out[name]["val_curve"] = curve
    return out


# ---------------------------------------------------------------- statistics

def compare(df: pd.DataFrame, a: str, b: str) -> dict:
    """Arm ``a`` minus arm ``b`` in test accuracy, paired on the seed."""
    return paired_on(df, "arm", a, b)


def budget(q: Q1, df: pd.DataFrame, teacher_acc: float) -> dict:
    """Item 1: raw and each variant at every budget; the family is every budget's comparisons."""
    w, arms = q.student.width, ["raw", *[f"{v}.{q.teacher}" for v in q.variants]]
    acc, val, cmp_ = {}, {}, {}
    for e in q.budgets:
        sub = df[(df.width == w) & (df.epochs == e) & df.arm.isin(arms)]
        acc[e] = {a: interval(sub[sub.arm == a].test_acc) for a in arms}
        val[e] = float(sub[sub.arm == "raw"].val_acc.mean())
        pairs = [(a, "raw") for a in arms[1:]] + [(a, arms[1]) for a in arms[2:]]
        for a, b in pairs:
            cmp_[f"e{e}.{a.split('.')[0]}_vs_{b.split('.')[0]}"] = compare(sub, a, b)
    last = df[(df.arm == "raw") & (df.width == w) & (df.epochs == q.budgets[-1])]
    curve = np.mean(np.stack([np.asarray(c) for c in last.val_curve]), axis=0)
    return {"acc": acc, "raw_val_acc": val, "raw_val_curve": curve.tolist(), "comparisons": family(cmp_),
            "teacher_acc": teacher_acc}


def capacity(q: Q1, df: pd.DataFrame, teacher: dict) -> dict:
    """Item 2: raw and kd at every width at the converged budget, and each against the teacher (one-sample)."""
    widths = sorted({q.student.width, *q.widths})
    sub = df[(df.epochs == q.converged) & (((df.arm == "raw") | (df.arm == f"kd.{q.teacher}")))]
    t_acc, t_right = teacher["test_acc"], teacher["pred"] == teacher["labels"]
    rows, cmp_ = {}, {}
    for w in widths:
        s = sub[sub.width == w]
        row = {"params": int(s.params.iloc[0])}
        for a in ("raw", f"kd.{q.teacher}"):
            short = a.split(".")[0]
            runs = s[s.arm == a].sort_values("seed")
            row[short] = interval(runs.test_acc)
            # test images this student gets right and the teacher wrong (and the reverse), mean over seeds
            right = [p == teacher["labels"] for p in runs.pred]
            row[f"{short}_right_teacher_wrong"] = float(np.mean([(r & ~t_right).sum() for r in right]))
            row[f"{short}_wrong_teacher_right"] = float(np.mean([(~r & t_right).sum() for r in right]))
            cmp_[f"w{w}.{short}_vs_teacher"] = stats.paired(runs.test_acc.to_numpy(float),
                                                            np.full(len(runs), t_acc))
        cmp_[f"w{w}.kd_vs_raw"] = compare(s, f"kd.{q.teacher}", "raw")
        rows[w] = row
    return {"widths": rows, "teacher_acc": t_acc, "teacher_width": q.teachers[q.teacher].width,
            "comparisons": family(cmp_)}


def quality(q: Q1, df: pd.DataFrame, teachers: dict) -> dict:
    """Item 3: kd from each teacher at quality_epochs against raw at the same budget."""
    e, w = q.quality_epochs, q.student.width
    sub = df[(df.epochs == e) & (df.width == w)]
    names = sorted([q.teacher, *q.quality], key=lambda t: teachers[t]["test_acc"])
    cmp_ = {t: compare(sub, f"kd.{t}", "raw") for t in names}
    return {"teachers": {t: {"teacher_acc": teachers[t]["test_acc"], "kd": interval(sub[sub.arm == f"kd.{t}"].test_acc)}
                         for t in names},
            "raw": interval(sub[sub.arm == "raw"].test_acc), "comparisons": family(cmp_), "epochs": e}


def controls(q: Q1, df: pd.DataFrame, teachers: dict) -> dict:
    """Item 4 (question 1b): where KD is applied, from the weak teacher, against kd and raw; and how much of the
    training set each teacher gets wrong."""
    e, w, t = q.quality_epochs, q.student.width, q.control_teacher
    sub = df[(df.epochs == e) & (df.width == w)]
    cmp_ = {}
    for v in q.controls:
        cmp_[f"{v}_vs_kd"] = compare(sub, f"{v}.{t}", f"kd.{t}")
        cmp_[f"{v}_vs_raw"] = compare(sub, f"{v}.{t}", "raw")
    wrong_keys = ("train_views_wrong", "train_images_wrong", "train_images_any_view_wrong",
                  "train_views_wrong_clean_right")
    return {"teacher": t, "epochs": e,
            "acc": {a: interval(sub[sub.arm == a].test_acc) for a in ["raw", f"kd.{t}", *[f"{v}.{t}" for v in q.controls]]},
            "wrong": {name: {k: teachers[name][k] for k in wrong_keys} | {"test_acc": teachers[name]["test_acc"]}
                      for name in q.cached},
            "comparisons": family(cmp_)}


def breakdown(q: Q1, df: pd.DataFrame, teacher: dict, classes: list[str]) -> dict:
    """Item 5: kd's gain over raw at the converged budget per class, per teacher-confidence bin and on test images
    the teacher gets right or wrong: per seed, the two arms' accuracy on that subset of the test images, paired."""
    w, e = q.student.width, q.converged
    sub = df[(df.width == w) & (df.epochs == e)]
    kd = sub[sub.arm == f"kd.{q.teacher}"].sort_values("seed")
    raw = sub[sub.arm == "raw"].sort_values("seed")
    labels = teacher["labels"]
    kd_right = np.stack([p == labels for p in kd.pred])
    raw_right = np.stack([p == labels for p in raw.pred])
    conf, t_right = teacher["confidence"], teacher["pred"] == labels
    edges = CONFIDENCE_EDGES
    subsets = {
        "class": {classes[c]: labels == c for c in range(len(classes))},
        "confidence": {f"[{lo:g}, {hi:g}{']' if hi == edges[-1] else ')'}":
                       (conf >= lo) & ((conf <= hi) if hi == edges[-1] else (conf < hi))
                       for lo, hi in zip(edges[:-1], edges[1:])},
        "teacher": {"teacher right": t_right, "teacher wrong": ~t_right},
    }
    out = {}
    for kind, masks in subsets.items():
        cmp_ = {}
        for label, mask in masks.items():
            if mask.sum() == 0:
                continue
            c = stats.paired(kd_right[:, mask].mean(1), raw_right[:, mask].mean(1))
            cmp_[label] = {**c, "images": int(mask.sum()), "raw_acc": float(raw_right[:, mask].mean())}
        out[kind] = family(cmp_)
    return out


def analyse(p: Params, q: Q1, df: pd.DataFrame, teachers: dict) -> dict:
    main = teachers[q.teacher]
    classes = FASHION if p.data.name == "fashion_mnist" else [str(c) for c in range(int(main["labels"].max()) + 1)]
    return {"budget": budget(q, df, main["test_acc"]), "capacity": capacity(q, df, main),
            "quality": quality(q, df, teachers), "controls": controls(q, df, teachers),
            "breakdown": breakdown(q, df, main, classes),
            "teacher_curves": {t: teachers[t]["val_curve"] for t in q.teachers if "val_curve" in teachers.get(t, {})}}


# ---------------------------------------------------------------- words

def render(p: Params, q: Q1, a: dict) -> str:
    b, cap, qual, ctl, br = a["budget"], a["capacity"], a["quality"], a["controls"], a["breakdown"]
    v0 = q.variants
    n = len(q.seeds)
    tmain = q.teachers[q.teacher]
    lines = [
        "# Question 1 in depth: does distillation cap the student?", "",
        f"`{p.data.name}`, {q.train_images} training images (a seeded subset), checkpoints chosen on "
        f"{q.val_images} validation images, accuracy on the full test split. Teacher `{q.teacher}`: "
        f"`{tmain.arch}` x{tmain.width} trained {tmain.epochs} epochs ({100 * b['teacher_acc']:.2f}% test). Students "
        f"`{q.student.arch}` x{q.student.width} unless said; KD alpha {p.loss.alpha}, temperature "
        f"{p.loss.temperature}; {n} seeds per arm, the same seeds in every arm. Differences are paired over seeds "
        f"(mean [95% t interval] in points, paired t p, then Holm within each section's family). Regenerate with "
        f"`make q1` (`dvc repro studies/q1/dvc.yaml`); this file is the `q1_report` stage's output.", "",
        "## 1. Does the KD gain survive a converged student?", "",
        f"Raw's validation accuracy by budget: " + ", ".join(f"{e} epochs {100 * v:.2f}%"
                                                              for e, v in b["raw_val_acc"].items())
        + f". Within the {q.budgets[-1]}-epoch run (mean of seeds), validation accuracy over its last five epochs: "
        + ", ".join(f"{100 * x:.2f}" for x in b["raw_val_curve"][-5:]) + "%.", "",
        "![accuracy and KD gain by budget](gain_vs_budget.png)", "", "![learning curves](curves.png)", "",
    ]
    head = ["epochs", "raw", *[f"{v} (teacher {q.teacher})" for v in v0],
            *[f"{v} - raw" for v in v0], *[f"{v} - {v0[0]}" for v in v0[1:]]]
    rows = []
    for e in q.budgets:
        acc = b["acc"][e]
        rows.append([e, pct(acc["raw"]), *[pct(acc[f"{v}.{q.teacher}"]) for v in v0],
                     *[gain(b["comparisons"][f"e{e}.{v}_vs_raw"]) for v in v0],
                     *[gain(b["comparisons"][f"e{e}.{v}_vs_{v0[0]}"]) for v in v0[1:]]])
    lines += [table(pd.DataFrame(rows, columns=head)), ""]
    lines += [f"- {e} epochs: " + "; ".join(call(f"`{k.split('.')[1].split('_vs_')[0]}`",
                                                 f"`{k.split('_vs_')[1]}`", c)
                                            for k, c in b["comparisons"].items() if k.startswith(f"e{e}."))
              for e in q.budgets]
    lines += ["", "## 2. Can a student reach or beat its teacher?", "",
              f"At {q.converged} epochs. The teacher is `{tmain.arch}` x{tmain.width}: the student of that width is "
              f"born-again (Furlanello et al. 2018). Student minus teacher is a one-sample comparison against one "
              f"teacher. 'Right where the teacher is wrong': test images, mean over seeds.", "",
              "![students against their teacher](student_vs_teacher.png)", ""]
    rows = []
    for w, r in cap["widths"].items():
        c = cap["comparisons"]
        rows.append([f"x{w}", r["params"], pct(r["raw"]), pct(r["kd"]), gain(c[f"w{w}.kd_vs_raw"]),
                     gain(c[f"w{w}.raw_vs_teacher"]), gain(c[f"w{w}.kd_vs_teacher"]),
                     f"{r['kd_right_teacher_wrong']:.0f} / {r['kd_wrong_teacher_right']:.0f}"])
    lines += [table(pd.DataFrame(rows, columns=["width", "params", "raw", "kd", "kd - raw", "raw - teacher",
                                                 "kd - teacher", "kd right & teacher wrong / the reverse"])), ""]
    lines += [f"- x{w}: " + "; ".join([call("`kd`", "`raw`", cap["comparisons"][f"w{w}.kd_vs_raw"]),
                                       call("`kd`", "the teacher", cap["comparisons"][f"w{w}.kd_vs_teacher"])])
              for w in cap["widths"]]
    others = ", ".join(f"`{n}` ({r.arch} x{r.width})" for n, r in q.teachers.items() if n != q.teacher)
    others += " is a teacher of" if len(q.teachers) == 2 else " are teachers of"
    curve = a["teacher_curves"].get(q.teacher, [])
    half = curve[:max(2, len(curve) // 2)]
    jump = max((abs(y - x) for x, y in zip(half, half[1:])), default=0.0)
    swing = (f" The teacher's validation accuracy moved by up to {100 * jump:.0f} points from one epoch to the next "
             f"in the first half of its run (the learning curves above), where the snapshots are taken: they are weak "
             f"teachers in an erratic way, not smoothly earlier versions of the final one." if jump >= 0.1 else "")
    lines += ["", "## 3. Teacher quality", "",
              f"`kd` at {qual['epochs']} epochs from each teacher (snapshots `<run>_e<k>` are the weights at the end of "
              f"epoch k of the same run; {others} another size), against raw at {pct(qual['raw'])}%.{swing}", "", "![KD gain against teacher accuracy](gain_vs_teacher.png)", ""]
    rows = [[f"`{t}`", f"{100 * r['teacher_acc']:.2f}", pct(r["kd"]), gain(qual["comparisons"][t])]
            for t, r in qual["teachers"].items()]
    lines += [table(pd.DataFrame(rows, columns=["teacher", "teacher test %", "kd", "kd - raw"])), ""]
    lines += [f"- teacher `{t}` ({100 * r['teacher_acc']:.2f}%): " + call("`kd`", "`raw`", qual["comparisons"][t])
              for t, r in qual["teachers"].items()]
    t = ctl["teacher"]
    lines += ["", "## 4. Question 1b: does distilling only where the teacher is right help?", "",
              "How much of the training set each teacher gets wrong (fractions of the cached views, of the clean "
              "images, of images with at least one wrong view, and of views wrong although the clean image is "
              "right):", ""]
    rows = [[f"`{name}`", f"{100 * w['test_acc']:.2f}", *(f"{100 * w[k]:.2f}" for k in
                                                           ("train_views_wrong", "train_images_wrong",
                                                            "train_images_any_view_wrong",
                                                            "train_views_wrong_clean_right"))]
            for name, w in ctl["wrong"].items()]
    lines += [table(pd.DataFrame(rows, columns=["teacher", "test %", "views wrong %", "clean images wrong %",
                                                "images with a wrong view %", "views wrong, clean right %"])), "",
              f"The controls, from teacher `{t}` at {ctl['epochs']} epochs: `kd_correct_only` (KD where the teacher "
              f"is right on the view), `kd_correct_clean` (right on the clean image), `kd_drop_wrong` (teacher-wrong "
              f"views dropped), `kd_wrong_only` (KD only where the teacher is wrong).", ""]
    rows = [[f"`{arm.split('.')[0]}`", pct(s),
             gain(ctl["comparisons"][f"{arm.split('.')[0]}_vs_kd"]) if arm.split(".")[0] in q.controls else "",
             gain(ctl["comparisons"][f"{arm.split('.')[0]}_vs_raw"]) if arm.split(".")[0] in q.controls else ""]
            for arm, s in ctl["acc"].items()]
    lines += [table(pd.DataFrame(rows, columns=["arm", "test %", "- kd", "- raw"])), ""]
    lines += [f"- `{v}`: " + "; ".join([call(f"`{v}`", "`kd`", ctl["comparisons"][f"{v}_vs_kd"]),
                                        call(f"`{v}`", "`raw`", ctl["comparisons"][f"{v}_vs_raw"])])
              for v in q.controls]
    lines += ["", "## 5. Where the gain comes from", "",
              f"`kd` against raw at {q.converged} epochs (x{q.student.width}, teacher `{q.teacher}`), on subsets of the "
              f"test split: per class, by the teacher's confidence on the clean test image, and on images the "
              f"teacher gets right or wrong. From the saved test predictions; Holm within each table.", ""]
    for kind, title in (("class", "class"), ("confidence", "teacher confidence"), ("teacher", "teacher")):
        rows = [[k, c["images"], f"{100 * c['raw_acc']:.2f}", gain(c)] for k, c in br[kind].items()]
        lines += [table(pd.DataFrame(rows, columns=[title, "test images", "raw %", "kd - raw"])), ""]
    return "\n".join(lines) + "\n"


def findings(p: Params, q: Q1, a: dict) -> str:
    """The README's question-1 answers, worded from the analysis: each number a paired difference in points."""
    b, cap, qual, ctl = a["budget"], a["capacity"], a["quality"], a["controls"]
    c, last, t = b["comparisons"], q.budgets[-1], ctl["teacher"]
    val = b["raw_val_acc"]
    lines = [f"Question 1 in depth (`make q1`: {p.data.name}, {q.train_images} training images, students "
             f"`{q.student.arch}` x{q.student.width}, teacher `{q.teacher}` at {100 * b['teacher_acc']:.2f}%, "
             f"{len(q.seeds)} seeds per arm; differences in points, paired over seeds, [95% interval], Holm-adjusted "
             f"p; `kdlab q1_report` writes this from `metrics/q1/`; details in `reports/q1/report.md`):", "",
             f"- **Does the KD gain survive a converged student?** `kd` minus `raw` by student epochs: "
             + "; ".join(f"{e}: {short(c[f'e{e}.kd_vs_raw'])} ({said(c[f'e{e}.kd_vs_raw'])})" for e in q.budgets)
             + f". Raw's validation accuracy by budget: "
             + ", ".join(f"{100 * v:.2f}%" for v in val.values()) + "."]
    rows = [f"x{w} ({r['params']:,} parameters) `kd` {short(cap['comparisons'][f'w{w}.kd_vs_teacher'])} "
            f"({said(cap['comparisons'][f'w{w}.kd_vs_teacher'])}), `raw` "
            f"{short(cap['comparisons'][f'w{w}.raw_vs_teacher'])} ({said(cap['comparisons'][f'w{w}.raw_vs_teacher'])})"
            for w, r in cap["widths"].items()]
    lines.append(f"- **Does any student match or beat its teacher?** Student minus teacher at {q.converged} epochs "
                 f"(one teacher, so its own seed-to-seed spread is not in the interval): " + "; ".join(rows) + ".")
    lines.append(f"- **How does the gain depend on the teacher's accuracy?** `kd` minus `raw` at {qual['epochs']} "
                 f"epochs, by teacher: " + "; ".join(
                     f"`{name}` ({100 * r['teacher_acc']:.2f}%) {short(qual['comparisons'][name])} "
                     f"({said(qual['comparisons'][name])})" for name, r in qual["teachers"].items()) + ".")
    only = [v for v in q.variants if v != q.variants[0]]
    words = [f"`{v}` minus `{q.variants[0]}` from `{q.teacher}` by student epochs: " + "; ".join(
        f"{e}: {short(c[f'e{e}.{v}_vs_{q.variants[0]}'])}" for e in q.budgets) for v in only]
    words.append(f"from the weak teacher `{t}` ({100 * ctl['wrong'][t]['train_views_wrong']:.1f}% of the cached "
                 f"training views wrong), each control minus `kd`: " + "; ".join(
                     f"`{v}` {short(ctl['comparisons'][f'{v}_vs_kd'])} ({said(ctl['comparisons'][f'{v}_vs_kd'])})"
                     for v in q.controls))
    lines.append("- **When, if ever, does distilling only where the teacher is right help?** " + "; ".join(words) + ".")
    return "\n".join(lines) + "\n"


def headline(q: Q1, a: dict) -> dict:
    """metrics/q1/headline.json: the study's DVC metrics (accuracies in %, gains in points, Holm p)."""
    b, cap, qual, ctl = a["budget"], a["capacity"], a["quality"], a["controls"]

    def acc(s):
        out = {"acc": round(100 * s["mean"], 2)}
        if s.get("ci_high") is not None:
            out["acc_ci"] = round(100 * (s["ci_high"] - s["ci_low"]) / 2, 2)
        return out

    out = {"teacher": {"acc": round(100 * b["teacher_acc"], 2)}, "budget": {}, "capacity": {}, "quality": {},
           "controls": {}}
    for e in q.budgets:
        row = {"raw": acc(b["acc"][e]["raw"])}
        row.update({k.split(".", 1)[1]: holm_gain(c) for k, c in b["comparisons"].items() if k.startswith(f"e{e}.")})
        out["budget"][f"e{e}"] = row
    for w in cap["widths"]:
        out["capacity"][f"w{w}"] = {k.split(".", 1)[1]: holm_gain(c) for k, c in cap["comparisons"].items()
                                    if k.startswith(f"w{w}.")}
    for t, r in qual["teachers"].items():
        out["quality"][t] = {"teacher_acc": round(100 * r["teacher_acc"], 2),
                             "kd_vs_raw": holm_gain(qual["comparisons"][t])}
    out["controls"] = {k: holm_gain(c) for k, c in ctl["comparisons"].items()}
    return out


# ---------------------------------------------------------------- pictures

def pictures(q: Q1, a: dict) -> dict:
    pyplot = plt()
    b, cap, qual = a["budget"], a["capacity"], a["quality"]

    def gain_vs_budget(path):
        fig, (left, right) = pyplot.subplots(1, 2, figsize=(10, 4))
        arms = ["raw", *[f"{v}.{q.teacher}" for v in q.variants]]
        for i, arm in enumerate(arms):
            for j, e in enumerate(q.budgets):
                errorbar(left, e * (1 + 0.04 * (i - 1)), b["acc"][e][arm], color=f"C{i}",
                         label=arm.split(".")[0] if j == 0 else None)
        left.axhline(100 * b["teacher_acc"], color="black", ls="--", lw=1, label=f"teacher {q.teacher}")
        left.set_xscale("log")
        left.minorticks_off()
        left.set_xticks(q.budgets, [str(e) for e in q.budgets])
        left.set(xlabel="student epochs", ylabel="test accuracy (%)", title="accuracy by training budget")
        left.legend(fontsize=7)
        for i, v in enumerate(q.variants):
            for j, e in enumerate(q.budgets):
                errorbar(right, e * (1 + 0.04 * (i - 0.5)), b["comparisons"][f"e{e}.{v}_vs_raw"], color=f"C{i + 1}",
                         label=f"{v} - raw" if j == 0 else None)
        right.axhline(0, color="gray", lw=1)
        right.set_xscale("log")
        right.minorticks_off()
        right.set_xticks(q.budgets, [str(e) for e in q.budgets])
        right.set(xlabel="student epochs", ylabel="gain over raw (points, 95% CI)", title="KD gain by budget")
        right.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        pyplot.close(fig)

    def gain_vs_teacher(path):
        fig, ax = pyplot.subplots(figsize=(6, 4))
        for t, r in qual["teachers"].items():
            errorbar(ax, 100 * r["teacher_acc"], qual["comparisons"][t], color="C1")
            ax.annotate(t, (100 * r["teacher_acc"], 100 * qual["comparisons"][t]["diff"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
        ax.axhline(0, color="gray", lw=1)
        ax.set(xlabel="teacher test accuracy (%)", ylabel="kd - raw (points, 95% CI)",
               title=f"KD gain against teacher accuracy ({qual['epochs']} student epochs)")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        pyplot.close(fig)

    def student_vs_teacher(path):
        fig, ax = pyplot.subplots(figsize=(6, 4))
        for i, arm in enumerate(("raw", "kd")):
            for j, (w, r) in enumerate(cap["widths"].items()):
                errorbar(ax, r["params"] * (1 + 0.05 * (i - 0.5)), r[arm], color=f"C{i}",
                         label=arm if j == 0 else None)
        ax.axhline(100 * cap["teacher_acc"], color="black", ls="--", lw=1, label=f"teacher {q.teacher}")
        ax.set_xscale("log")
        ax.minorticks_off()
        params = [r["params"] for r in cap["widths"].values()]
        ax.set_xticks(params, [f"{n:,}" for n in params])
        ax.set(xlabel="student parameters", ylabel="test accuracy (%)",
               title=f"students against their teacher ({q.converged} epochs)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        pyplot.close(fig)

    def curves(path):
        fig, ax = pyplot.subplots(figsize=(6, 4))
        for t, c in a["teacher_curves"].items():
            ax.plot(range(1, len(c) + 1), [100 * x for x in c], label=f"teacher {t}")
        c = b["raw_val_curve"]
        ax.plot(range(1, len(c) + 1), [100 * x for x in c], label=f"raw student, {q.budgets[-1]} epochs (mean)")
        ax.set_ylim(bottom=max(0, min(100 * min(c), 60)))
        ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title="learning curves")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        pyplot.close(fig)

    return {"gain_vs_budget.png": gain_vs_budget, "gain_vs_teacher.png": gain_vs_teacher,
            "student_vs_teacher.png": student_vs_teacher, "curves.png": curves}


# ---------------------------------------------------------------- the stage

def run_q1_report(p: Params, q: Q1) -> dict:
    df = load_runs(q)
    teachers = load_teachers(q)
    a = analyse(p, q, df, teachers)
    study = study_params(q)  # as the study's training runs log it: the same MLflow study
    publish(p, study, "q1", "question 1 in depth", REPORT_DIR, pictures(q, a), render(p, q, a), findings(p, q, a), a,
            headline(q, a), METRICS)
    return a
