"""``kdlab parts``: question 2, which parts of the network benefit from distillation.

The same student distilled with the feature loss ``parts.method`` placed at one ResNet layer at a time (runs
``fitnet.layer1`` ..), logits-only KD and the raw baseline (from the main study), and the students carved from
the teacher (``parts.init``: ``init_teacher`` and its random-init control) over ``study.seeds``. Per group: test
accuracy (mean, 95% t interval), the gain over raw (Welch), and linear CKA between teacher and student
features at every layer on a fixed batch of validation images (the first ``parts.cka_images``), mean over
seeds. Accuracies come from the runs' metrics files (checkpoints chosen on val); CKA is measured here.
"""
from __future__ import annotations

from pathlib import Path

from kdlab.analysis import stats
from kdlab.analysis.present import COLORS, ci, diff, finish, headline_gain, plt, table, verdict, yerr
from kdlab.core import cka
from kdlab.core.features import features, layers
from kdlab.core.models import count_params
from kdlab.infra import io, tracking
from kdlab.infra.schema import flatten
from kdlab.pipeline.params import BASELINE, Params
from kdlab.pipeline.workspace import CKA_PLOT, PARTS_JSON, PARTS_MD, context, load_model, load_teacher, run_files


def groups(p: Params) -> list[tuple[str, bool]]:
    """(run group, whether it is a question-2 run under models/parts): raw, kd, each placement, each init."""
    out = [(BASELINE, False)]
    if "kd" in p.study.variants:
        out.append(("kd", False))
    out += [(f"{p.parts.method}.{st}", True) for st in p.parts.layers]
    out += [(v, True) for v in p.parts.init]
    return out


def comparisons(p: Params) -> list[tuple[str, str]]:
    """(a, b) pairs tested: every group against raw; placements against kd (logits only); the first of
    ``parts.init`` against each of the others (its controls, e.g. init_teacher against init_random)."""
    names = [g for g, _ in groups(p)]
    pairs = [(g, BASELINE) for g in names if g != BASELINE]
    if "kd" in names:
        pairs += [(g, "kd") for g in names if g.startswith(f"{p.parts.method}.")]
    pairs += [(p.parts.init[0], control) for control in p.parts.init[1:]] if p.parts.init else []
    return pairs


def summarize(p: Params, runs, cka_images: int) -> dict:
    """parts.json from a tidy DataFrame of the runs: one row per (group, seed) with test_acc, params and
    ``cka.<layer>`` columns."""
    paths = [c[len("cka."):] for c in runs.columns if c.startswith("cka.")]
    acc = stats.intervals(runs, "group", "test_acc")
    cka = {st: stats.intervals(runs, "group", f"cka.{st}") for st in paths}
    params_count = runs.groupby("group", sort=False)["params"].first()
    out = {"groups": {}, "comparisons": {}, "cka_images": cka_images, "seeds": p.study.seeds}
    for g, _ in groups(p):
        out["groups"][g] = {"test_acc": acc[g], "params": int(params_count[g]), "cka": {st: cka[st][g] for st in paths}}
    for key, w in stats.welch_pairs(runs, "group", "test_acc", comparisons(p)).items():
        out["comparisons"][key] = {"test_acc": w}
    return out


def diff_cell(c: dict | None) -> str:
    return diff(c["test_acc"], with_p=True) if c else "-"


def markdown(p: Params, summary: dict) -> str:
    import pandas as pd

    # in the study's order (raw, kd, placements, carved), whatever order the JSON was written in
    g0 = {g: summary["groups"][g] for g, _ in groups(p) if g in summary["groups"]}
    paths = list(next(iter(g0.values()))["cka"])
    with_kd = p.methods.get(p.parts.method, {}).get("kd", True)
    n = len(p.study.seeds)
    lines = [
        f"Question 2 on {p.data.name}: test accuracy, mean [95% t interval] over {n} seed{'s' if n > 1 else ''}, and "
        f"linear CKA with the teacher at each stage on {summary['cka_images']} validation images (mean over seeds). "
        f"`{p.parts.method}.layerN`: {p.parts.method} loss at that stage only{', plus KD' if with_kd else ''}.",
        "",
    ]
    cmp_ = summary["comparisons"]
    controls = {p.parts.init[0]: c for c in p.parts.init[1:2]}
    rows = []
    for g, e in g0.items():
        kd_col = diff_cell(cmp_.get(f"{g}_vs_kd"))
        if g in controls:
            kd_col = f"{diff_cell(cmp_.get(f'{g}_vs_{controls[g]}'))} vs {controls[g]}"
        rows.append([g, f"{e['params']:,}", ci(e["test_acc"]), diff_cell(cmp_.get(f"{g}_vs_{BASELINE}")), kd_col,
                     *(f"{e['cka'][st]['mean']:.3f}" for st in paths)])
    columns = ["run", "params", "test accuracy (%)", "vs raw (points)", "vs kd, or vs its control (points)",
               *(f"CKA {st}" for st in paths)]
    return "\n".join(lines) + "\n" + table(pd.DataFrame(rows, columns=columns)) + "\n"


def run_parts(p: Params) -> dict:
    import pandas as pd

    ctx = context(p, 0)
    val = ctx.splits["val"]
    images = ctx.normalize(val["images"][:p.parts.cka_images].to(ctx.device))
    _, teacher = load_teacher(p, ctx)
    paths = layers(teacher)
    teacher_feats = features(teacher, images, paths)
    rows = []
    for g, in_parts in groups(p):
        for seed in p.study.seeds:
            model_path, metrics_path = run_files(g, seed, "parts" if in_parts else "students")
            stage = (f"placement@{g.split('.', 1)[1]}-{seed}" if g.startswith(f"{p.parts.method}.")
                     else f"carve@{g}-{seed}" if in_parts else
                     f"baseline@{g}-{seed}" if g == BASELINE else f"student@{g}-{seed}")
            rebuild = f"dvc repro {stage}"
            test_acc = io.load_json(metrics_path, rebuild)["test_acc"]
            student = load_model(model_path, ctx, rebuild)
            profile = {st: v["biased"] for st, v in cka.profile(student, images, paths, teacher_feats).items()}
            rows.append({"group": g, "seed": seed, "test_acc": test_acc, "params": count_params(student),
                         **{f"cka.{k}": v for k, v in profile.items()}})
            print(f"{g}-{seed}: CKA " + " ".join(f"{k} {v:.3f}" for k, v in profile.items()))
    summary = summarize(p, pd.DataFrame(rows), len(images))
    io.save_json(summary, PARTS_JSON)
    # "stage": the plot's field name in dvc.yaml (a ResNet layer)
    io.save_json([{"run": g, "stage": st, "cka": e["cka"][st]["mean"]} for g, e in summary["groups"].items()
                  for st in paths], CKA_PLOT)
    table = markdown(p, summary)
    io.save_text(table, PARTS_MD)
    print(table)
    with tracking.run("parts", "parts", flatten(p)) as run:
        flat = {}
        for g, e in summary["groups"].items():
            flat[f"parts/{g}/test_acc_mean"] = e["test_acc"]["mean"]
            flat.update({f"parts/{g}/cka_{st}": e["cka"][st]["mean"] for st in paths})
        run.log(flat)
        run.log_to_study(flat)
        run.log_artifact(PARTS_MD)
    return summary


# ---------------------------------------------------------------- its part of the report

PLACEMENT_COLORS = ["tab:green", "tab:purple", "tab:brown", "tab:olive", "tab:cyan"]


def plot_parts(p: Params, parts: dict, path: Path) -> None:
    """Accuracy per run group (left) and CKA with the teacher per layer (right)."""
    shown = {g: parts["groups"][g] for g, _ in groups(p) if g in parts["groups"]}
    fig, (ax1, ax2) = plt().subplots(1, 2, figsize=(10, 3.8))
    placements = [g for g in shown if g.startswith(f"{p.parts.method}.")]

    def color(g, i):
        if g in placements:
            return PLACEMENT_COLORS[placements.index(g) % len(PLACEMENT_COLORS)]
        return COLORS.get(g, f"C{i}")

    for i, (g, e) in enumerate(shown.items()):
        s = e["test_acc"]
        ax1.errorbar([i], [100 * s["mean"]], yerr=yerr([s]), fmt="o", capsize=5, color=color(g, i))
        paths = list(e["cka"])
        ax2.plot(range(len(paths)), [e["cka"][st]["mean"] for st in paths], marker="o", color=color(g, i), label=g)
        ax2.set_xticks(range(len(paths)), paths)
    ax1.set_xticks(range(len(shown)), [g.replace(".", "\n") for g in shown], fontsize=7)
    ax1.set_ylabel("test accuracy (%), mean and 95% CI")
    ax1.set_title("accuracy per placement / initialisation")
    finish(fig, ax2, "stage", "linear CKA with the teacher", f"teacher-likeness per stage ({parts['cka_images']} val images)",
           path)


def headline(p: Params, parts: dict) -> dict:
    """Question 2's part of metrics/headline.json: the comparisons the report words a verdict on (placements
    against kd, carved against its random control), p adjusted by Holm over every question-2 comparison."""
    adjusted = stats.holm({k: c["test_acc"]["p"] for k, c in parts["comparisons"].items()})
    keys = [f"{a}_vs_{b}" for a, b in comparisons(p) if b != BASELINE]
    return {"q2": {k: headline_gain(parts["comparisons"][k]["test_acc"], adjusted[k])
                   for k in keys if k in parts["comparisons"]}}


def pictures(p: Params, parts: dict) -> dict:
    return {"parts.png": lambda f: plot_parts(p, parts, f)}


def report_section(p: Params, parts: dict) -> list[str]:
    n = len(p.study.seeds)
    lines = [
        "## Question 2: which parts of the network benefit from distillation?",
        "",
        f"`{p.parts.method}` places a feature loss (plus KD) at one stage at a time; `init_teacher` carves the "
        f"student out of the teacher's blocks (`methods.init_teacher.keep`) and `init_random` is the same shape "
        f"from a random initialisation, both trained with KD. CKA near 1 means that stage of the student "
        f"represents the validation images as the teacher's does. Regenerate with `dvc repro parts report`.",
        "",
        markdown(p, parts),
    ]
    for a, b in comparisons(p):
        if b != BASELINE or a == "kd":
            cmp_ = parts["comparisons"].get(f"{a}_vs_{b}")
            if cmp_:
                lines.append("- " + verdict(a, b, cmp_, n))
    lines += ["", "![question 2](parts.png)", ""]
    return lines
