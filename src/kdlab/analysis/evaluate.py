"""``kdlab evaluate``: every model on the test split, then statistics over seeds.

Per run (teacher and each student): top-1 (and top-5 with more than 10 classes) accuracy, agreement with
the teacher and KL(teacher || student) (fidelity), expected calibration error, per-class accuracy,
parameters, FLOPs per image, inference throughput on this machine; its test logits are saved under
predictions/ so statistics can be recomputed without the models. Per method: mean, std and 95% t
interval over seeds, the difference to the raw baseline (Welch) and paired per-seed tests.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kdlab.analysis import stats
from kdlab.analysis.present import (
    LABELS,
    ci,
    color,
    diff,
    finish,
    fmt_p,
    headline_acc,
    headline_gain,
    num,
    plt,
    pts,
    table,
    test_name,
    verdict,
    yerr,
)
from kdlab.core.models import count_params
from kdlab.core.train import predict
from kdlab.infra import io, tracking
from kdlab.infra.schema import flatten
from kdlab.pipeline.params import BASELINE, Params
from kdlab.pipeline.workspace import (
    ACCURACY_PLOT,
    CURVES,
    PREDICTIONS,
    RUNS_JSON,
    SUMMARY_JSON,
    SUMMARY_MD,
    TEACHER,
    check_trained,
    context,
    model_from_checkpoint,
    run_files,
)

ECE_BINS = 15


def methods(p: Params) -> list[str]:
    return [BASELINE, *p.study.methods]


# ---------------------------------------------------------------- per-run metrics

def ece(logits: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error with equal-width confidence bins."""
    conf, pred = F.softmax(logits.float(), dim=1).max(dim=1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.float().mean().item() * abs(conf[inside].mean().item() - correct[inside].mean().item())
    return total


def kl_teacher_student(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> float:
    """Mean over images of KL(softmax(teacher) || softmax(student)), temperature 1."""
    log_t = F.log_softmax(teacher_logits.float(), dim=1)
    log_s = F.log_softmax(student_logits.float(), dim=1)
    return (log_t.exp() * (log_t - log_s)).sum(dim=1).mean().item()


def run_metrics(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None) -> dict:
    classes = logits.shape[1]
    pred = logits.argmax(dim=1)
    out = {"test_acc": (pred == labels).float().mean().item(), "ece": ece(logits, labels)}
    if classes > 10:
        top5 = logits.topk(5, dim=1).indices
        out["test_acc_top5"] = (top5 == labels[:, None]).any(dim=1).float().mean().item()
    if teacher_logits is not None:
        out["agreement"] = (pred == teacher_logits.argmax(dim=1)).float().mean().item()
        out["kl_teacher_student"] = kl_teacher_student(teacher_logits, logits)
    out["per_class_acc"] = {str(c): (pred[labels == c] == c).float().mean().item()
                            for c in range(classes) if (labels == c).any()}
    return out


def flops_per_image(model: torch.nn.Module, shape: tuple[int, int, int], device) -> int:
    """FLOPs (2 x multiply-adds, as torch's FlopCounterMode counts) of one forward pass."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *shape, device=device))
    return int(counter.get_total_flops())


def throughput(model, images, labels, normalize, batch_size: int, precision: str = "auto", repeats: int = 2) -> float:
    """Inference images/second on this machine (best of ``repeats`` passes over ``images``)."""
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        predict(model, images, labels, normalize, batch_size, precision)
        best = max(best, len(labels) / (time.perf_counter() - start))
    return best


# ---------------------------------------------------------------- statistics over seeds

SUMMARIZED = ("test_acc", "test_acc_last", "agreement", "kl_teacher_student", "ece", "test_acc_top5")
#: logged to each student's MLflow run by the evaluate stage
FIDELITY = ("agreement", "kl_teacher_student", "ece", "test_acc_top5")


def summarize(p: Params, runs: dict[str, dict], predictions: dict[str, torch.Tensor] | None = None,
              labels: torch.Tensor | None = None) -> dict:
    """``runs["kd-0"] = {test_acc, agreement, ...}`` (plus ``runs["teacher"]``) -> summary.json."""
    out = {"teacher": {k: v for k, v in runs["teacher"].items() if k != "per_class_acc"}, "methods": {},
           "comparisons": {}}
    import pandas as pd

    seeds = p.study.seeds
    df = pd.DataFrame([{**runs[f"{v}-{s}"], "method": v, "seed": s} for v in methods(p) for s in seeds])
    per_metric = {k: stats.intervals(df, "method", k) for k in SUMMARIZED if k in df.columns}
    for method, rows in df.groupby("method", sort=False):
        out["methods"][method] = {k: per_metric[k][method] for k in per_metric}
        out["methods"][method]["params"] = int(rows["params"].iloc[0])
    pairs = [(v, BASELINE) for v in p.study.methods]
    if "kd" in p.study.methods and "kd_correct_only" in p.study.methods:
        pairs.append(("kd_correct_only", "kd"))
    welch = stats.welch_pairs(df, "method", "test_acc", pairs)
    for a, b in pairs:
        entry = {"test_acc": welch[f"{a}_vs_{b}"]}
        if predictions is not None:
            per_seed = {}
            for s in seeds:
                ca = predictions[f"{a}-{s}"].argmax(1) == labels
                cb = predictions[f"{b}-{s}"].argmax(1) == labels
                per_seed[str(s)] = {"mcnemar": stats.mcnemar(ca.numpy(), cb.numpy()),
                                    "bootstrap": stats.paired_bootstrap(ca.numpy(), cb.numpy(), resamples=2000,
                                                                        seed=s)}
            entry["paired_by_seed"] = per_seed
        out["comparisons"][f"{a}_vs_{b}"] = entry
    return out


def markdown(p: Params, summary: dict) -> str:
    """The founding note's table (teacher, distilled, trained alone) with 95% intervals over seeds."""
    import pandas as pd

    n = len(p.study.seeds)
    test = test_name(summary["comparisons"])
    rows = [["Teacher", p.teacher.arch, num(summary["teacher"]["test_acc"]), "-", "-", "-", "-"]]
    for method in methods(p):
        e = summary["methods"][method]
        cmp_ = summary["comparisons"].get(f"{method}_vs_{BASELINE}", {}).get("test_acc")
        # one p a comparison: a paired family's is Holm-adjusted, and that is the one shown
        difference, pval = (diff(cmp_), fmt_p(cmp_.get("p_holm", cmp_["p"]))) if cmp_ else ("-", "-")
        agree = ci(e["agreement"]) if "agreement" in e else "-"
        rows.append([LABELS.get(method, method), p.student.arch, ci(e["test_acc"]), ci(e["test_acc_last"]), agree,
                     difference, pval])
    columns = ["model", "arch", "test accuracy (%)", "last epoch (%)", "agreement with teacher (%)", "vs raw (points)",
               f"p ({test})"]
    return (f"Test accuracy on {p.data.name}: mean [95% t interval] over {n} seed{'s' if n > 1 else ''} "
            f"({', '.join(map(str, p.study.seeds))}); checkpoints chosen on the validation split.\n\n"
            + table(pd.DataFrame(rows, columns=columns)) + "\n")


def headline(p: Params, summary: dict) -> dict:
    """Question 1's part of metrics/headline.json: the teacher, each method's test accuracy and agreement with
    the teacher (mean and 95% half-width, %), and each comparison's gain with its Holm-adjusted p."""
    out = {"teacher": {"acc": round(100 * summary["teacher"]["test_acc"], 2)}}
    for method in methods(p):
        e = summary["methods"][method]
        out[method] = headline_acc(e["test_acc"])
        if "agreement" in e:
            out[method]["agree"] = round(100 * e["agreement"]["mean"], 2)
    cmp_ = {k: c["test_acc"] for k, c in summary["comparisons"].items()}
    adjusted = stats.holm({k: w["p"] for k, w in cmp_.items()})
    out["q1"] = {k: headline_gain(w, adjusted[k]) for k, w in cmp_.items()}
    return out


# ---------------------------------------------------------------- the stage

def run_evaluate(p: Params) -> dict:
    ctx = context(p, 0)
    test_x, test_y = ctx.splits["test"]["images"], ctx.splits["test"]["labels"]
    shape = tuple(test_x.shape[1:])
    bs = p.train.eval_batch_size

    def evaluate_model(path: Path, rebuild: str, spec, teacher_logits):
        ckpt = io.load_torch(path, rebuild)
        check_trained(ckpt, path, spec, ctx, rebuild)
        model = model_from_checkpoint(ckpt, ctx)
        logits = predict(model, test_x, test_y, ctx.normalize, bs, p.train.precision)
        m = run_metrics(logits, test_y, teacher_logits)
        m["params"] = count_params(model)
        m["flops_per_image"] = flops_per_image(model, shape, ctx.device)
        m["images_per_second"] = throughput(model, test_x[:2000], test_y[:2000], ctx.normalize, bs, p.train.precision)
        for k in ("val_acc", "test_acc_last", "best_epoch"):
            m[k] = ckpt["metrics"][k]
        return logits, m, ckpt["history"]

    runs, predictions, curves = {}, {}, {}
    teacher_logits, runs["teacher"], curves["teacher"] = evaluate_model(TEACHER, "dvc repro teacher", p.teacher, None)
    predictions["teacher"] = teacher_logits
    for method in methods(p):
        for seed in p.study.seeds:
            name = f"{method}-{seed}"
            path, _ = run_files(method, seed)
            stage = "baseline" if method == BASELINE else "student"
            predictions[name], runs[name], curves[name] = evaluate_model(
                path, f"dvc repro {stage}@{name}", p.student, teacher_logits)
            runs[name].update(method=method, seed=seed)
    for name, logits in predictions.items():
        io.save_torch({"logits": logits.half(), "labels": test_y}, PREDICTIONS / f"{name}.pt")
    summary = summarize(p, runs, predictions, test_y)
    io.save_json(summary, SUMMARY_JSON)
    io.save_json(runs, RUNS_JSON)
    for name, rows in curves.items():
        io.save_json([{k: r[k] for k in ("epoch", "val_acc", "loss")} for r in rows], CURVES / f"{name}.json")
    io.save_json([{"run": n, "method": r["method"], "seed": r["seed"], "test_acc": r["test_acc"],
                   "agreement": r["agreement"]} for n, r in runs.items() if n != "teacher"], ACCURACY_PLOT)
    table = markdown(p, summary)
    io.save_text(table, SUMMARY_MD)
    print(table)
    with tracking.run("evaluate", "evaluate", flatten(p)) as run:
        flat = {f"{v}/test_acc_mean": e["test_acc"]["mean"] for v, e in summary["methods"].items()}
        flat.update({f"{v}/agreement_mean": e["agreement"]["mean"] for v, e in summary["methods"].items()})
        flat["teacher/test_acc"] = summary["teacher"]["test_acc"]
        run.log(flat)
        run.log_to_study(flat)
        run.log_artifact(SUMMARY_MD)
        # each run's test-split fidelity in its own row of the MLflow runs table
        run.log_to_runs({n: {k: r[k] for k in FIDELITY if k in r} for n, r in runs.items() if n != "teacher"})
        # the student a user takes away: the best on the validation split (never test), registered
        best = max((n for n in runs if n != "teacher"), key=lambda n: runs[n]["val_acc"])
        if best in (siblings := run.siblings()):
            run.register_model(siblings[best].run_id, f"kdlab-{p.data.name}-{p.student.arch}",
                               f"kdlab student {best}: the best validation accuracy ({runs[best]['val_acc']:.4f}) "
                               f"of question 1's students in study {tracking.study_key(flatten(p))}")
    return summary


# ---------------------------------------------------------------- its part of the report

def plot_accuracy(p: Params, summary: dict, runs: dict, path: Path) -> None:
    fig, ax = plt().subplots(figsize=(6, 3.6))
    for i, v in enumerate(methods(p)):
        s = summary["methods"][v]["test_acc"]
        ax.errorbar([i], [100 * s["mean"]], yerr=yerr([s]), fmt="o", capsize=6, color=color(v, i),
                    label="mean, 95% CI" if i == 0 else None)
        seeds = [100 * r["test_acc"] for r in runs.values() if r.get("method") == v]
        ax.scatter([i + 0.12] * len(seeds), seeds, s=12, color=color(v, i), alpha=0.6,
                   label="single seeds" if i == 0 else None)
    ax.axhline(100 * summary["teacher"]["test_acc"], color="black", ls="--", lw=1, label=f"teacher ({p.teacher.arch})")
    ax.set_xticks(range(len(methods(p))), [LABELS.get(v, v).replace(" (", "\n(") for v in methods(p)], fontsize=8)
    finish(fig, ax, "", "test accuracy (%)", f"{p.student.arch} students on {p.data.name}", path)


def plot_curves(p: Params, curves: dict[str, list], runs: dict, path: Path) -> None:
    fig, ax = plt().subplots(figsize=(6, 3.6))
    labelled = set()
    for name, rows in curves.items():
        v = "teacher" if name == "teacher" else runs[name]["method"]
        i = methods(p).index(v) if v in methods(p) else 0
        ax.plot([r["epoch"] for r in rows], [100 * r["val_acc"] for r in rows], marker=".", color=color(v, i),
                alpha=0.8, label=None if v in labelled else LABELS.get(v, v))
        labelled.add(v)
    finish(fig, ax, "epoch", "validation accuracy (%)", "learning curves (one line per run)", path)


def plot_agreement(p: Params, runs: dict, path: Path) -> None:
    fig, ax = plt().subplots(figsize=(5, 3.6))
    for i, v in enumerate(methods(p)):
        rows = [r for r in runs.values() if r.get("method") == v]
        ax.scatter([100 * r["agreement"] for r in rows], [100 * r["test_acc"] for r in rows], color=color(v, i),
                   label=LABELS.get(v, v))
    finish(fig, ax, "top-1 agreement with the teacher (%)", "test accuracy (%)",
           "fidelity vs accuracy (one point per run)", path)


def curve_rows(runs: dict, curves: dict[str, list]) -> list[dict]:
    """Every student's validation curve as one table (run, method, seed, epoch, val_acc), for `dvc plots`: all
    runs in one chart, coloured by run."""
    return [{"run": name, "method": runs[name].get("method", name), "seed": runs[name].get("seed"),
             "epoch": r["epoch"], "val_acc": r["val_acc"]}
            for name in sorted(curves) if name in runs and name != "teacher" for r in curves[name]]


def pictures(p: Params, summary: dict, runs: dict, curves: dict[str, list]) -> dict:
    """{file name under reports/: draw(path)} of this question's pictures."""
    return {"accuracy.png": lambda f: plot_accuracy(p, summary, runs, f),
            "learning_curves.png": lambda f: plot_curves(p, curves, runs, f),
            "agreement_vs_accuracy.png": lambda f: plot_agreement(p, runs, f)}


def _paired_rows(key: str, cmp_: dict) -> list[list[str]]:
    rows = []
    for seed, t in cmp_.get("paired_by_seed", {}).items():
        b = t["bootstrap"]
        rows.append([key, seed, f"{pts(b['diff'])} [{pts(b['ci_low'])}, {pts(b['ci_high'])}]",
                     f"{t['mcnemar']['only_a']} / {t['mcnemar']['only_b']}"])
    return rows


def report_section(p: Params, summary: dict, runs: dict) -> list[str]:
    """The founding note's table, question 1's answers, fidelity, learning curves and cost."""
    import pandas as pd

    n = len(p.study.seeds)
    comps = summary["comparisons"]
    student = next(r for k, r in runs.items() if k != "teacher")
    cost = [("teacher", p.teacher.arch, summary["teacher"]), ("student", p.student.arch, student)]
    fidelity = [[LABELS.get(v, v), ci(e.get("agreement")), ci(e.get("kl_teacher_student"), 1, 4), ci(e.get("ece"))]
                for v, e in ((v, summary["methods"][v]) for v in methods(p))]
    lines = [
        "## The founding note's table, with intervals",
        "",
        markdown(p, summary),
        "![accuracy per method](accuracy.png)",
        "",
        "## Question 1: does KD beat training on the labels, and does distilling only where the teacher is right help?",
        "",
    ]
    for v in p.study.methods:
        lines.append("- " + verdict(LABELS.get(v, v), LABELS[BASELINE], comps[f"{v}_vs_{BASELINE}"], n))
    if "kd_correct_only_vs_kd" in comps:
        lines.append("- " + verdict(LABELS["kd_correct_only"], LABELS["kd"], comps["kd_correct_only_vs_kd"], n))
    lines += [
        "",
        "Paired tests on the test images, seed by seed (same seed, same test images): the accuracy difference "
        "with a 95% bootstrap interval and the images only the first / only the second gets right (their exact "
        "McNemar test is in metrics/summary.json). These say whether two particular runs differ, not whether the "
        "methods do: that is what the interval over seeds above is for.",
        "",
        table(pd.DataFrame([r for key, cmp_ in comps.items() for r in _paired_rows(key.replace("_vs_", " vs "), cmp_)],
                           columns=["comparison", "seed", "difference (points)", "only first / only second"])),
        "",
        "## Fidelity: do students match their teacher?",
        "",
        "Top-1 agreement with the teacher and KL(teacher || student) on the test split (Stanton et al. 2021 "
        "find that students often do not match their teachers even when they could); expected calibration "
        "error with 15 bins. Mean [95% CI] over seeds.",
        "",
        table(pd.DataFrame(fidelity, columns=["method", "agreement (%)", "KL(teacher \\|\\| student)", "ECE (%)"])),
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
        table(pd.DataFrame([[f"{who} `{arch}`", f"{r['params']:,}", f"{r['flops_per_image'] / 1e6:.1f} M",
                             f"{r['images_per_second']:.0f}"] for who, arch, r in cost],
                           columns=["model", "parameters", "FLOPs per image", "inference images/s (this machine)"])),
        "",
    ]
    return lines
