"""``kdlab q23_report``: questions 2 and 3 with their controls (studies/q23), from the study's metrics files.

As question 1's report (:mod:`kdlab.analysis.q1_report`, whose statistics and wording this reuses): every comparison is
paired over seeds, with its 95% t interval and paired t-test p, then Holm's adjustment within each table's
family: what transfers, weights against outputs (the 2x2, its interaction, the compute-matched arm), selective
channels, and pruned against fresh starts. A verdict says "above"/"below" only where the Holm-adjusted p is below
0.05. CKA (:mod:`kdlab.pipeline.q23`'s ``q23_cka``) is descriptive: means over seeds, no test.

Writes reports/q23/report.md, its pictures, reports/q23/findings.md (the README's ``q23`` block),
metrics/q23/analysis.json (every number) and metrics/q23/headline.json (the study's DVC metrics).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

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
from kdlab.infra.schema import flatten_dict
from kdlab.pipeline.params import Params

if TYPE_CHECKING:
    from kdlab.pipeline.q23 import Q23

REPORT_DIR = Path("reports/q23")


def group(arm: str, init: str, epochs: int) -> str:
    """``kd.random-e10``: a student group (every seed of one arm, initialisation and budget)."""
    return f"{arm}.{init}-e{epochs}"


def load_runs(inputs: dict) -> pd.DataFrame:
    """One row per trained student (``inputs["runs"]``: name, arm, init, epochs, seed) with its metrics."""
    rows = []
    for r in inputs["runs"]:
        m = io.load_json(Path(inputs["metrics"]) / "students" / f"{r['name']}.json", inputs["rebuild"])
        rows.append({**r, "group": group(r["arm"], r["init"], r["epochs"]), "test_acc": m["test_acc"],
                     "val_acc": m["val_acc"], "params": m["params"]})
    return pd.DataFrame(rows)


def compare(df: pd.DataFrame, a: str, b: str) -> dict:
    """Group ``a`` minus group ``b`` in test accuracy, paired on the seed."""
    return paired_on(df, "group", a, b)


def accuracies(df: pd.DataFrame, groups: list[str]) -> dict:
    return {g: {**interval(df[df.group == g].test_acc), "params": int(df[df.group == g].params.iloc[0])}
            for g in groups}


def transfer(q: Q23, df: pd.DataFrame) -> dict:
    """Item 1: every arm against labels only and against logit KD."""
    g = {a: group(a, "random", q.epochs) for a in q.transfer}
    cmp_ = {f"{a}_vs_raw": compare(df, g[a], g["raw"]) for a in q.transfer if a != "raw"}
    cmp_.update({f"{a}_vs_kd": compare(df, g[a], g["kd"]) for a in q.transfer if a not in ("raw", "kd")})
    return {"acc": accuracies(df, [g[a] for a in q.transfer]), "comparisons": family(cmp_)}


def init(q: Q23, df: pd.DataFrame) -> dict:
    """Item 2: {carved, random} x {kd, raw}, the interaction, and kd from random weights trained as long as the
    carved weights were."""
    cell = {(i, a): group(a, i, q.epochs) for i in ("carved", "random") for a in ("kd", "raw")}
    matched = group("kd", "random", q.matched_epochs)
    cmp_ = {
        "weights_under_kd": compare(df, cell["carved", "kd"], cell["random", "kd"]),
        "weights_under_labels": compare(df, cell["carved", "raw"], cell["random", "raw"]),
        "outputs_from_carved": compare(df, cell["carved", "kd"], cell["carved", "raw"]),
        "outputs_from_random": compare(df, cell["random", "kd"], cell["random", "raw"]),
        "carved_kd_vs_matched_kd": compare(df, cell["carved", "kd"], matched),
        "matched_kd_vs_kd": compare(df, matched, cell["random", "kd"]),
    }
    # (carved kd - random kd) - (carved raw - random raw), per seed: do the weights' and the outputs' gains add up?
    wide = df.pivot_table(index="seed", columns="group", values="test_acc")
    under_kd = wide[cell["carved", "kd"]] - wide[cell["random", "kd"]]
    under_raw = wide[cell["carved", "raw"]] - wide[cell["random", "raw"]]
    cmp_["interaction"] = stats.paired(list(under_kd), list(under_raw))
    return {"acc": accuracies(df, [*cell.values(), matched]), "comparisons": family(cmp_),
            "matched_epochs": q.matched_epochs}


def selective(q: Q23, df: pd.DataFrame) -> dict:
    """Item 4: hints on the top-k, random-k, bottom-k and all of the teacher's layer3 channels."""
    g = {a: group(a, "random", q.epochs) for a in [*q.selective, "fitnet", "raw"]}
    top, rnd, bottom = (next((a for a in q.selective if q.arms[a].options.get("select") == s), None)
                        for s in ("top", "random", "bottom"))
    pairs = [(top, rnd), (bottom, rnd), (top, bottom), (top, "fitnet"), (rnd, "fitnet")]
    cmp_ = {f"{a}_vs_{b}": compare(df, g[a], g[b]) for a, b in pairs if a and b}
    cmp_.update({f"{a}_vs_raw": compare(df, g[a], g["raw"]) for a in q.selective})
    return {"acc": accuracies(df, [g[a] for a in [*q.selective, "fitnet", "raw"]]), "comparisons": family(cmp_),
            "k": {a: q.arms[a].options.get("k") for a in q.selective}}


def pruned(q: Q23, df: pd.DataFrame, prune: dict) -> dict:
    """Item 5: the students of (about) the student's size under KD: pruned, its shape fresh, carved, resnet8."""
    arms = {"pruned": group("kd", "pruned", q.epochs), "shape": group("kd", "shape", q.epochs),
            "carved": group("kd", "carved", q.epochs), "random": group("kd", "random", q.epochs)}
    pairs = [("pruned", "shape"), ("pruned", "carved"), ("pruned", "random"), ("shape", "random")]
    cmp_ = {f"{a}_vs_{b}": compare(df, arms[a], arms[b]) for a, b in pairs}
    return {"acc": accuracies(df, list(arms.values())), "groups": arms, "comparisons": family(cmp_),
            "diagnosis": prune}


def cka_summary(q: Q23, df: pd.DataFrame, cka: dict) -> dict:
    """Means over seeds: per group and stage, and per epoch through training."""
    stages = cka["stages"]
    names = df.groupby("group", sort=False)["name"].apply(list)
    per_group = {g: {st: {k: float(np.mean([cka["students"][n][st][k] for n in runs])) for k in ("biased", "unbiased")}
                     for st in stages} for g, runs in names.items()}
    through: dict[str, dict] = {}
    for g in [group(arm, init_, q.epochs) for arm in q.carved for init_ in ("random", "carved")]:
        epochs = list(cka["training"][names[g][0]])
        through[g] = {e: {st: float(np.mean([cka["training"][n][e][st]["unbiased"] for n in names[g]])) for st in stages}
                      for e in epochs}
    return {"images": cka["images"], "stages": stages, "reference": cka["reference"], "groups": per_group,
            "through_training": through}


def analyse(q: Q23, df: pd.DataFrame, teacher: dict, prune: dict, cka: dict) -> dict:
    return {"teacher": teacher, "transfer": transfer(q, df), "init": init(q, df), "selective": selective(q, df),
            "pruned": pruned(q, df, prune), "cka": cka_summary(q, df, cka), "seeds": q.seeds}


# ---------------------------------------------------------------- words

def _acc_rows(acc: dict) -> list[list]:
    return [[g, f"{e['params']:,}", pct(e)] for g, e in acc.items()]


def _cmp_rows(cmp_: dict) -> list[list]:
    return [[k.replace("_vs_", " - "), gain(c)] for k, c in cmp_.items()]


def render(p: Params, q: Q23, a: dict) -> str:
    t, tr, ini, sel, pr, ck = a["teacher"], a["transfer"], a["init"], a["selective"], a["pruned"], a["cka"]
    ta, n = q.teachers[q.teacher], len(q.seeds)
    lines = [
        "# Questions 2 and 3 with their controls", "",
        f"`{p.data.name}`, {q.train_images} training images (a seeded subset), checkpoints chosen on {q.val_images} "
        f"validation images, accuracy on the full test split. Teacher `{q.teacher}`: `{ta.arch}` x{ta.width}, "
        f"{ta.epochs} epochs, {100 * t['test_acc']:.2f}% test. Students: `{q.student.arch}` x{q.student.width} for "
        f"{q.epochs} epochs unless said; KD alpha {p.loss.alpha}, temperature {p.loss.temperature}; {n} seeds per "
        f"arm, the same seeds in every arm. Differences are in points, paired over seeds, with the 95% t interval, "
        f"the paired t-test's p and Holm's adjustment within each table. Regenerate with "
        f"`dvc repro studies/q23/dvc.yaml` (`make q23`).", "",
        "## 1. What knowledge transfers", "",
        "Each arm is one method file in `src/kdlab/distill/`; options are `studies/q23/params.yaml`'s `q23.arms`. "
        "`fitnet`, `at` and `rkd` add their feature term to cross-entropy alone; `at_kd` and `rkd_kd` add it to KD.",
        "", table(pd.DataFrame(_acc_rows(tr["acc"]), columns=["arm", "params", "test accuracy (%)"])), "",
        table(pd.DataFrame(_cmp_rows(tr["comparisons"]), columns=["comparison", "difference (points)"])), "",
        *[f"- {call(k.split('_vs_')[0], k.split('_vs_')[1], c)}" for k, c in tr["comparisons"].items()], "",
        "![what transfers](transfer.png)", "",
        "## 2. The teacher's weights or its outputs?", "",
        f"`carved`: the teacher's first block of each layer with its weights (`q23.keep`), which is exactly the "
        f"student's architecture ({ini['acc'][group('kd', 'carved', q.epochs)]['params']:,} parameters), so "
        f"`random` is both the random-weight twin and the capacity-matched labels-only baseline. "
        f"`kd.random-e{q.matched_epochs}`: KD from random weights trained as many epochs as the carved weights saw "
        f"(the teacher's {ta.epochs} plus the student's {q.epochs}). `interaction`: (carved kd - random kd) minus "
        f"(carved raw - random raw), per seed.", "",
        table(pd.DataFrame(_acc_rows(ini["acc"]), columns=["group", "params", "test accuracy (%)"])), "",
        table(pd.DataFrame(_cmp_rows(ini["comparisons"]), columns=["comparison", "difference (points)"])), "",
        "## 3. CKA with the teacher, with a reference", "",
        f"Linear CKA with teacher `{q.teacher}` per stage on {ck['images']} validation images, biased (Kornblith et "
        f"al.) and unbiased (debiased HSIC), mean over seeds. The reference is teacher `{q.reference}`: the same "
        f"architecture from another seed.", ""]
    stages = ck["stages"]
    rows = [[f"teacher `{q.reference}` (reference)",
             *(f"{ck['reference'][st]['biased']:.3f} / {ck['reference'][st]['unbiased']:.3f}" for st in stages)]]
    rows += [[g, *(f"{e[st]['biased']:.3f} / {e[st]['unbiased']:.3f}" for st in stages)] for g, e in ck["groups"].items()]
    lines += [table(pd.DataFrame(rows, columns=["model", *(f"{st} (biased / unbiased)" for st in stages)])), "",
              "Unbiased CKA through training (epoch 0: the starting weights; `kept`: the checkpoint chosen on "
              "validation):", ""]
    rows = [[g, e, *(f"{v[st]:.3f}" for st in stages)] for g, through in ck["through_training"].items()
            for e, v in through.items()]
    lines += [table(pd.DataFrame(rows, columns=["group", "epoch", *stages])), "", "![CKA](cka.png)", "",
              "## 4. Distilling selected channels", "",
              f"FitNet hints on a fraction k of the teacher's layer3 channels ({sel['k']}), chosen by mean "
              f"|activation| on {q.calibration_images} training images (top, bottom) or at random; `fitnet` hints "
              f"on every channel. Hints are added to cross-entropy alone.", "",
              table(pd.DataFrame(_acc_rows(sel["acc"]), columns=["arm", "params", "test accuracy (%)"])), "",
              table(pd.DataFrame(_cmp_rows(sel["comparisons"]), columns=["comparison", "difference (points)"])), "",
              "## 5. Why pruned teachers start at chance, and prune-then-distil once they do not", ""]
    d = pr["diagnosis"]
    rows = [[name, r["route"], r["scored_on"] or "-", f"{r['params']:,}", f"{100 * r['val_acc']:.2f}",
             f"{100 * r['val_acc_recalibrated']:.2f}"] for name, r in cuts(d["models"]).items()]
    lines += [f"Each cut of teacher `{q.teacher}` before any training: validation accuracy as saved, and after "
              f"recalibrating BatchNorm's running statistics on {q.prune.recalibration_images} training images. "
              f"Targets: {d['target']:,} parameters (x{q.prune.size} the student) and {d['small_target']:,} "
              f"(x{q.prune.small}). The iterative run prunes in {q.prune.steps} steps with {q.prune.finetune_steps} "
              f"KD steps between them.", "",
              table(pd.DataFrame(rows, columns=["cut", "route", "importance scored on", "params", "val % as cut",
                                                "val % recalibrated"])), "",
              f"Trained from `{d['chosen']}` (the best recalibrated channel-pruned teacher at x{q.prune.size} on "
              f"validation), against its shape freshly initialised, the carved teacher and the student, all with KD:",
              "", table(pd.DataFrame(_acc_rows(pr["acc"]), columns=["group", "params", "test accuracy (%)"])), "",
              table(pd.DataFrame(_cmp_rows(pr["comparisons"]), columns=["comparison", "difference (points)"])), ""]
    return "\n".join(lines) + "\n"


#: the cuts of the pruning diagnosis in the order a reader follows them (the JSON keeps its keys sorted)
CUT_ORDER = ("teacher", "blocks", "channels.", "iterative.", "blocks+channels.", "channels+blocks.")


def cuts(models: dict) -> dict:
    def rank(name):
        return next(i for i, head in enumerate(CUT_ORDER) if name == head or (head.endswith(".") and name.startswith(head)))
    return dict(sorted(models.items(), key=lambda kv: (rank(kv[0]), kv[0])))


def _per_stage(profile: dict, stages: list[str], kind: str = "unbiased") -> str:
    return ", ".join(f"{profile[st][kind]:.3f}" for st in stages)


def _best(acc: dict) -> str:
    return max(acc, key=lambda g: acc[g]["mean"])


def findings(p: Params, q: Q23, a: dict) -> str:
    """The README's answers to questions 2 and 3, worded from the analysis."""
    tr, ini, sel, pr, ck = a["transfer"], a["init"], a["selective"], a["pruned"], a["cka"]
    c, ic, sc, pc = tr["comparisons"], ini["comparisons"], sel["comparisons"], pr["comparisons"]
    best = _best(tr["acc"])
    above = [k for k, v in c.items() if v.get("verdict") in ("above", "below")]
    st = ck["stages"]
    kd_g, carved_g, raw_g = (group(a_, i, q.epochs) for a_, i in (("kd", "random"), ("kd", "carved"), ("raw", "random")))
    d = pr["diagnosis"]["models"]
    lines = [
        f"Questions 2 and 3 with controls (`make q23`: {p.data.name}, {q.train_images} training images, teacher "
        f"`{q.teachers[q.teacher].arch}` x{q.teachers[q.teacher].width} at {100 * a['teacher']['test_acc']:.2f}%, "
        f"students `{q.student.arch}` x{q.student.width} for {q.epochs} epochs, {len(q.seeds)} seeds per arm; "
        f"differences in points, paired over seeds, [95% interval], Holm-adjusted p within each table; "
        f"`kdlab q23_report` writes this from `metrics/q23/`; details in `reports/q23/report.md`):", "",
        f"- **Which knowledge transfers best?** Highest mean: `{best.split('.')[0]}` at {pct(tr['acc'][best])}%. "
        + "Against labels only: " + "; ".join(f"`{k.split('_vs_')[0]}` {short(v)} ({said(v)})"
                                            for k, v in c.items() if k.endswith("_vs_raw"))
        + ". Against logit KD: " + "; ".join(f"`{k.split('_vs_')[0]}` {short(v)} ({said(v)})"
                                           for k, v in c.items() if k.endswith("_vs_kd"))
        + (". Detectable at the 5% family-wise level: " + ", ".join(f"`{k}`" for k in above) + "."
           if above else ". None of these differences is detectable at the 5% family-wise level."),
        f"- **The teacher's weights or its outputs?** Carved weights minus random weights: under KD "
        f"{short(ic['weights_under_kd'])} ({said(ic['weights_under_kd'])}), on labels "
        f"{short(ic['weights_under_labels'])} ({said(ic['weights_under_labels'])}). KD minus labels: from carved "
        f"weights {short(ic['outputs_from_carved'])} ({said(ic['outputs_from_carved'])}), from random weights "
        f"{short(ic['outputs_from_random'])} ({said(ic['outputs_from_random'])}). Interaction (do they add up?): "
        f"{short(ic['interaction'])} ({said(ic['interaction'])}). Carved KD against random-weight KD trained "
        f"{q.matched_epochs} epochs (compute-matched): {short(ic['carved_kd_vs_matched_kd'])} "
        f"({said(ic['carved_kd_vs_matched_kd'])}); random-weight KD at {q.matched_epochs} epochs minus at {q.epochs}: "
        f"{short(ic['matched_kd_vs_kd'])} ({said(ic['matched_kd_vs_kd'])}).",
        f"- **CKA, with a reference.** Unbiased CKA with the teacher per stage ({', '.join(st)}): another teacher "
        f"seed {_per_stage(ck['reference'], st)}; KD from random weights {_per_stage(ck['groups'][kd_g], st)}; KD "
        f"from carved weights {_per_stage(ck['groups'][carved_g], st)}; labels only {_per_stage(ck['groups'][raw_g], st)}. "
        f"Biased CKA of labels only at {st[0]}: {ck['groups'][raw_g][st[0]]['biased']:.3f}.",
        "- **Distilling selected channels.** " + "; ".join(
            f"`{k.split('_vs_')[0]}` minus `{k.split('_vs_')[1]}` {short(v)} ({said(v)})"
            for k, v in sc.items() if not k.endswith("_vs_raw")) + ".",
        "- **Why pruned teachers start at chance.** Validation accuracy as cut, then after BatchNorm "
        "recalibration: " + "; ".join(f"`{k}` {100 * r['val_acc']:.1f}% -> {100 * r['val_acc_recalibrated']:.1f}%"
                                       for k, r in cuts(d).items()) + ".",
        f"- **Prune then distil, from a start that is not broken** (`{pr['diagnosis']['chosen']}`, recalibrated): "
        + "; ".join(f"{k.replace('_vs_', ' minus ')} {short(v)} ({said(v)})" for k, v in pc.items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def headline(q: Q23, a: dict) -> dict:
    """metrics/q23/headline.json: the study's DVC metrics (accuracies in %, gains in points, Holm p)."""
    out = {"teacher": {"acc": round(100 * a["teacher"]["test_acc"], 2)}}
    for part in ("transfer", "init", "selective", "pruned"):
        out[part] = {"acc": {k: round(100 * v["mean"], 2) for k, v in a[part]["acc"].items()},
                     **{k: holm_gain(c) for k, c in a[part]["comparisons"].items()}}
    ck = a["cka"]
    out["cka_unbiased"] = {"reference": {st: round(ck["reference"][st]["unbiased"], 3) for st in ck["stages"]},
                           **{grp: {st: round(e[st]["unbiased"], 3) for st in ck["stages"]}
                              for grp, e in ck["groups"].items() if grp.endswith(f"-e{q.epochs}")}}
    return out


# ---------------------------------------------------------------- pictures

def pictures(q: Q23, a: dict) -> dict:
    pyplot = plt()

    def bars(path):
        fig, (left, right) = pyplot.subplots(1, 2, figsize=(11, 4))
        parts = {**a["transfer"]["acc"], **{k: v for k, v in a["selective"]["acc"].items() if k not in a["transfer"]["acc"]}}
        for i, (g, s) in enumerate(parts.items()):
            errorbar(left, [i], s, color="tab:gray" if g.startswith("raw.") else f"C{i % 10}")
        left.set_xticks(range(len(parts)), [g.split(".")[0] for g in parts], rotation=45, fontsize=8)
        left.set_ylabel("test accuracy (%), mean and 95% CI")
        left.set_title(f"what transfers ({q.epochs} epochs, random weights)")
        cells = {**a["init"]["acc"], **{k: v for k, v in a["pruned"]["acc"].items() if k not in a["init"]["acc"]}}
        for i, (g, s) in enumerate(cells.items()):
            errorbar(right, [i], s, color="tab:red" if "carved" in g or "pruned" in g else "tab:gray")
        right.set_xticks(range(len(cells)), cells, rotation=45, fontsize=8)
        right.set_title("teacher's weights (red) or fresh (grey)")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        pyplot.close(fig)

    def cka(path):
        ck = a["cka"]
        fig, axes = pyplot.subplots(1, len(ck["stages"]), figsize=(4 * len(ck["stages"]), 3.6), sharey=True)
        for ax, st in zip(np.atleast_1d(axes), ck["stages"]):
            for i, (g, through) in enumerate(ck["through_training"].items()):
                epochs = list(through)
                ax.plot(range(len(epochs)), [through[e][st] for e in epochs], marker="o", label=g, color=f"C{i}")
                ax.set_xticks(range(len(epochs)), epochs)
            ax.axhline(ck["reference"][st]["unbiased"], color="black", ls="--", label=f"teacher {q.reference}")
            ax.set_title(st)
            ax.set_xlabel("epoch")
        np.atleast_1d(axes)[0].set_ylabel("unbiased CKA with the teacher")
        np.atleast_1d(axes)[-1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        pyplot.close(fig)

    return {"transfer.png": bars, "cka.png": cka}


# ---------------------------------------------------------------- the stage

def run_q23_report(p: Params, q: Q23, inputs: dict) -> dict:
    """``inputs`` (:func:`kdlab.pipeline.q23.report_inputs`): every student run, the study's metrics folder and the command
    that rebuilds a missing file."""
    df = load_runs(inputs)
    metrics, rebuild = Path(inputs["metrics"]), inputs["rebuild"]
    a = analyse(q, df, io.load_json(metrics / "cache.json", rebuild), io.load_json(metrics / "prune.json", rebuild),
                io.load_json(metrics / "cka.json", rebuild))
    study = flatten_dict(dataclasses.asdict(q), "q23.")  # as the study's training runs log it: the same MLflow study
    publish(p, study, "q23", "questions 2 and 3 with controls", REPORT_DIR, pictures(q, a), render(p, q, a),
            findings(p, q, a), a, headline(q, a), metrics)
    return a
