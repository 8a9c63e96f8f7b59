"""``kdlab report``: reports/report.md and its pictures, from the metrics files evaluate wrote.

Nothing here is typed by hand: every number comes from metrics/summary.json, metrics/runs.json and
plots/curves/. The words that answer question 1 follow the intervals and never claim more than they do.
"""
from __future__ import annotations

from pathlib import Path

from kdlab import io, tracking
from kdlab.evaluate import CURVES, LABELS, RUNS_JSON, SUMMARY_JSON, fmt_p, markdown, variants
from kdlab.params import BASELINE, Params, flatten

REPORTS = Path("reports")
COLORS = {"teacher": "black", "raw": "tab:gray", "kd": "tab:blue", "kd_correct_only": "tab:orange",
          "init_teacher": "tab:red", "init_random": "tab:pink"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def finish(fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _plt().close(fig)


def _color(variant: str, i: int) -> str:
    return COLORS.get(variant, f"C{i + 2}")


def plot_accuracy(p: Params, summary: dict, runs: dict, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, v in enumerate(variants(p)):
        s = summary["variants"][v]["test_acc"]
        lo = s["ci_low"] if s["ci_low"] is not None else s["mean"]
        hi = s["ci_high"] if s["ci_high"] is not None else s["mean"]
        ax.errorbar([i], [100 * s["mean"]], yerr=[[100 * (s["mean"] - lo)], [100 * (hi - s["mean"])]], fmt="o",
                    capsize=6, color=_color(v, i), label="mean, 95% CI" if i == 0 else None)
        seeds = [100 * r["test_acc"] for r in runs.values() if r.get("variant") == v]
        ax.scatter([i + 0.12] * len(seeds), seeds, s=12, color=_color(v, i), alpha=0.6,
                   label="single seeds" if i == 0 else None)
    ax.axhline(100 * summary["teacher"]["test_acc"], color="black", ls="--", lw=1, label=f"teacher ({p.teacher.arch})")
    ax.set_xticks(range(len(variants(p))), [LABELS.get(v, v).replace(" (", "\n(") for v in variants(p)], fontsize=8)
    finish(fig, ax, "", "test accuracy (%)", f"{p.student.arch} students on {p.data.name}", path)


def plot_curves(p: Params, curves: dict[str, list], runs: dict, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    labelled = set()
    for name, rows in curves.items():
        v = "teacher" if name == "teacher" else runs[name]["variant"]
        i = variants(p).index(v) if v in variants(p) else 0
        ax.plot([r["epoch"] for r in rows], [100 * r["val_acc"] for r in rows], marker=".", color=_color(v, i),
                alpha=0.8, label=None if v in labelled else LABELS.get(v, v))
        labelled.add(v)
    finish(fig, ax, "epoch", "validation accuracy (%)", "learning curves (one line per run)", path)


def plot_agreement(p: Params, runs: dict, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for i, v in enumerate(variants(p)):
        rows = [r for r in runs.values() if r.get("variant") == v]
        ax.scatter([100 * r["agreement"] for r in rows], [100 * r["test_acc"] for r in rows], color=_color(v, i),
                   label=LABELS.get(v, v))
    finish(fig, ax, "top-1 agreement with the teacher (%)", "test accuracy (%)",
           "fidelity vs accuracy (one point per run)", path)


def _pts(x: float) -> str:
    return f"{100 * x:+.2f}"


def verdict(name_a: str, name_b: str, cmp_: dict, n_seeds: int) -> str:
    """One sentence on a - b in test accuracy that says no more than the interval does."""
    w = cmp_["test_acc"]
    if w["ci_low"] is None:
        return (f"{name_a} vs {name_b}: {_pts(w['diff'])} points with one seed per variant; no interval over "
                f"seeds is possible, so only the paired test below speaks to it.")
    ci = f"95% CI [{_pts(w['ci_low'])}, {_pts(w['ci_high'])}] points, Welch p = {fmt_p(w['p'])}, {n_seeds} seeds each"
    if w["ci_low"] > 0:
        return f"**{name_a} beat {name_b}** by {_pts(w['diff'])} points ({ci})."
    if w["ci_high"] < 0:
        return f"**{name_a} was worse than {name_b}** by {_pts(-w['diff'])} points ({ci})."
    return (f"**No detectable difference** between {name_a} and {name_b}: {_pts(w['diff'])} points, but the "
            f"interval includes zero ({ci}). More seeds would be needed to separate them, if they differ at all.")


def _paired_lines(key: str, cmp_: dict) -> list[str]:
    rows = []
    for seed, t in cmp_.get("paired_by_seed", {}).items():
        b = t["bootstrap"]
        rows.append(f"| {key} | {seed} | {_pts(b['diff'])} [{_pts(b['ci_low'])}, {_pts(b['ci_high'])}] "
                    f"| {t['mcnemar']['only_a']} / {t['mcnemar']['only_b']} | {fmt_p(t['mcnemar']['p'])} |")
    return rows


def _stat(s: dict | None, scale: float = 100, digits: int = 2) -> str:
    if not s:
        return "-"
    if s.get("ci_low") is None:
        return f"{scale * s['mean']:.{digits}f}"
    return f"{scale * s['mean']:.{digits}f} [{scale * s['ci_low']:.{digits}f}, {scale * s['ci_high']:.{digits}f}]"


def render(p: Params, summary: dict, runs: dict, parts: dict | None = None, pruning: dict | None = None) -> str:
    n = len(p.study.seeds)
    comps = summary["comparisons"]
    lines = [
        "# kdlab report",
        "",
        f"Data `{p.data.name}`; teacher `{p.teacher.arch}` (width {p.teacher.width}, {p.teacher.epochs} epochs); "
        f"students `{p.student.arch}` (width {p.student.width}, {p.student.epochs} epochs); KD alpha "
        f"{p.loss.alpha}, temperature {p.loss.temperature}; cached views per image: {p.cache.views}; "
        f"seeds {p.study.seeds}. Regenerate with `dvc repro` (this file is the `report` stage's output).",
        "",
        "## The founding note's table, with intervals",
        "",
        markdown(p, summary),
        "![accuracy per variant](accuracy.png)",
        "",
        "## Question 1: does KD beat training on the labels, and does distilling only where the teacher is right help?",
        "",
    ]
    for v in p.study.variants:
        lines.append("- " + verdict(LABELS.get(v, v), LABELS[BASELINE], comps[f"{v}_vs_{BASELINE}"], n))
    if "kd_correct_only_vs_kd" in comps:
        lines.append("- " + verdict(LABELS["kd_correct_only"], LABELS["kd"], comps["kd_correct_only_vs_kd"], n))
    lines += [
        "",
        "Paired tests on the test images, seed by seed (same seed, same test images): the accuracy difference "
        "with a 95% bootstrap interval, the images only the first / only the second gets right, and the exact "
        "McNemar p-value. These say whether two particular runs differ, not whether the methods do: "
        "that is what the interval over seeds above is for.",
        "",
        "| comparison | seed | difference (points) | only first / only second | McNemar p |",
        "|---|---|---|---|---|",
    ]
    for key, cmp_ in comps.items():
        lines += _paired_lines(key.replace("_vs_", " vs "), cmp_)
    lines += [
        "",
        "## Fidelity: do students match their teacher?",
        "",
        "Top-1 agreement with the teacher and KL(teacher || student) on the test split (Stanton et al. 2021 "
        "find that students often do not match their teachers even when they could); expected calibration "
        "error with 15 bins. Mean [95% CI] over seeds.",
        "",
        "| variant | agreement (%) | KL(teacher \\|\\| student) | ECE (%) |",
        "|---|---|---|---|",
    ]
    for v in variants(p):
        e = summary["variants"][v]
        lines.append(f"| {LABELS.get(v, v)} | {_stat(e.get('agreement'))} | "
                     f"{_stat(e.get('kl_teacher_student'), 1, 4)} | {_stat(e.get('ece'))} |")
    t = summary["teacher"]
    student = next(r for k, r in runs.items() if k != "teacher")
    lines += [
        "",
        "![agreement vs accuracy](agreement_vs_accuracy.png)",
        "",
        "## Learning curves",
        "",
        "Validation accuracy after each epoch; the reported checkpoint is each run's best validation epoch, "
        "the table's 'last epoch' column is the final one. The test split never chooses anything.",
        "",
        "![learning curves](learning_curves.png)",
        "",
        "## Cost",
        "",
        "| model | parameters | FLOPs per image | inference images/s (this machine) |",
        "|---|---|---|---|",
        f"| teacher `{p.teacher.arch}` | {t['params']:,} | {t['flops_per_image'] / 1e6:.1f} M | "
        f"{t['images_per_second']:.0f} |",
        f"| student `{p.student.arch}` | {student['params']:,} | {student['flops_per_image'] / 1e6:.1f} M | "
        f"{student['images_per_second']:.0f} |",
        "",
    ]
    if parts is not None:
        lines += parts_section(p, parts)
    if pruning is not None:
        lines += pruning_section(p, pruning)
    return "\n".join(lines)


PLACEMENT_COLORS = ["tab:green", "tab:purple", "tab:brown", "tab:olive", "tab:cyan"]


def plot_parts(p: Params, parts: dict, path: Path) -> None:
    """Question 2: accuracy per run group (left) and CKA with the teacher per stage (right)."""
    from kdlab.parts import groups as study_groups

    plt = _plt()
    groups = {g: parts["groups"][g] for g, _ in study_groups(p) if g in parts["groups"]}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    placements = [g for g in groups if g.startswith(f"{p.parts.method}.")]

    def _color(g, i):
        if g in placements:
            return PLACEMENT_COLORS[placements.index(g) % len(PLACEMENT_COLORS)]
        return COLORS.get(g, f"C{i}")

    for i, (g, e) in enumerate(groups.items()):
        s = e["test_acc"]
        lo = s["ci_low"] if s["ci_low"] is not None else s["mean"]
        hi = s["ci_high"] if s["ci_high"] is not None else s["mean"]
        ax1.errorbar([i], [100 * s["mean"]], yerr=[[100 * (s["mean"] - lo)], [100 * (hi - s["mean"])]], fmt="o",
                     capsize=5, color=_color(g, i))
        stages = list(e["cka"])
        ax2.plot(range(len(stages)), [e["cka"][st]["mean"] for st in stages], marker="o", color=_color(g, i),
                 label=g)
        ax2.set_xticks(range(len(stages)), stages)
    ax1.set_xticks(range(len(groups)), [g.replace(".", "\n") for g in groups], fontsize=7)
    ax1.set_ylabel("test accuracy (%), mean and 95% CI")
    ax1.set_title("accuracy per placement / initialisation")
    finish(fig, ax2, "stage", "linear CKA with the teacher", f"teacher-likeness per stage ({parts['cka_images']} val images)",
           path)


def parts_section(p: Params, parts: dict) -> list[str]:
    from kdlab.parts import comparisons, markdown as parts_markdown

    n = len(p.study.seeds)
    lines = [
        "## Question 2: which parts of the network benefit from distillation?",
        "",
        f"`{p.parts.method}` places a feature loss (plus KD) at one stage at a time; `init_teacher` carves the "
        f"student out of the teacher's blocks (`methods.init_teacher.keep`) and `init_random` is the same shape "
        f"from a random initialisation, both trained with KD. CKA near 1 means that stage of the student "
        f"represents the validation images as the teacher's does. Regenerate with `dvc repro parts report`.",
        "",
        parts_markdown(p, parts),
    ]
    for a, b in comparisons(p):
        if b != BASELINE or a == "kd":
            cmp_ = parts["comparisons"].get(f"{a}_vs_{b}")
            if cmp_:
                lines.append("- " + verdict(a, b, cmp_, n))
    lines += ["", "![question 2](parts.png)", ""]
    return lines


def plot_pruning(p: Params, pruning: dict, path: Path) -> None:
    """Question 3: accuracy per arm and size (left), channels kept per stage by each criterion (right)."""
    from kdlab.pruning import stage_order

    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = list(pruning["groups"])
    for i, name in enumerate(names):
        s = pruning["groups"][name]["test_acc"]
        lo = s["ci_low"] if s["ci_low"] is not None else s["mean"]
        hi = s["ci_high"] if s["ci_high"] is not None else s["mean"]
        g = pruning["groups"][name]
        color = {"prune": "tab:red", "shape": "tab:gray"}[g["init"]]
        ax1.errorbar([i], [100 * s["mean"]], yerr=[[100 * (s["mean"] - lo)], [100 * (hi - s["mean"])]],
                     fmt="o" if g["variant"] == "kd" else "s", mfc=color if g["variant"] == "kd" else "white",
                     capsize=4, color=color)
    ax1.set_xticks(range(len(names)), [n.replace(".", "\n", 2) for n in names], fontsize=6)
    ax1.set_ylabel("test accuracy (%), mean and 95% CI")
    ax1.set_title("pruned (red) vs fresh (grey); KD filled, labels open")
    for i, (name, e) in enumerate(pruning["pruned"].items()):
        stages_ = stage_order(e["stages"])
        ax2.plot(range(len(stages_)), [100 * e["stages"][st] for st in stages_], marker="o", color=f"C{i}",
                 label=f"{name} ({e['params']:,} params)")
        ax2.set_xticks(range(len(stages_)), stages_)
    finish(fig, ax2, "stage", "output channels kept (%)", "where each criterion prunes", path)


def pruning_section(p: Params, pruning: dict) -> list[str]:
    from kdlab.pruning import markdown as pruning_markdown

    n = len(p.study.seeds)
    lines = [
        "## Question 3: what can be pruned while distilling?",
        "",
        f"The trained teacher is pruned by channel importance (torch-pruning's dependency graph, channels ranked "
        f"globally) down to multiples of the student's parameter count, then trained like the students. The "
        f"controls are the same shape freshly initialised, and training on labels instead of KD. Regenerate "
        f"with `dvc repro pruning report`.",
        "",
        pruning_markdown(p, pruning),
    ]
    for key, cmp_ in pruning["comparisons"].items():
        lines.append("- " + verdict(cmp_["a"], cmp_["b"], cmp_, n))
    lines += ["", "![question 3](pruning.png)", ""]
    return lines


def load_curves(names) -> dict[str, list]:
    return {n: io.load_json(CURVES / f"{n}.json", "dvc repro evaluate") for n in names}


def run_report(p: Params) -> Path:
    summary = io.load_json(SUMMARY_JSON, "dvc repro evaluate")
    runs = io.load_json(RUNS_JSON, "dvc repro evaluate")
    curves = load_curves(runs)
    from kdlab.parts import PARTS_JSON

    from kdlab.pruning import PRUNING_JSON

    parts = io.load_json(PARTS_JSON, "dvc repro parts") if Path(PARTS_JSON).exists() else None
    pruning = io.load_json(PRUNING_JSON, "dvc repro pruning") if Path(PRUNING_JSON).exists() else None
    REPORTS.mkdir(exist_ok=True)
    pictures = {"accuracy.png": lambda f: plot_accuracy(p, summary, runs, f),
                "learning_curves.png": lambda f: plot_curves(p, curves, runs, f),
                "agreement_vs_accuracy.png": lambda f: plot_agreement(p, runs, f)}
    if parts is not None:
        pictures["parts.png"] = lambda f: plot_parts(p, parts, f)
    if pruning is not None:
        pictures["pruning.png"] = lambda f: plot_pruning(p, pruning, f)
    for name, draw in pictures.items():
        tmp = REPORTS / f".{name}.tmp.png"
        draw(tmp)
        tmp.replace(REPORTS / name)
    report = REPORTS / "report.md"
    io.save_text(render(p, summary, runs, parts, pruning), report)
    with tracking.run("report", "report", flatten(p)) as run:
        for f in [report, *(REPORTS / n for n in pictures)]:
            run.log_artifact(f)
            run.log_study_artifact(f)
    print(f"wrote {report} and {len(pictures)} pictures")
    return report
