"""``kdlab evaluate``: every model on the test split, then statistics over seeds.

Per run (teacher and each student): top-1 (and top-5 with more than 10 classes) accuracy, agreement with
the teacher and KL(teacher || student) (fidelity), expected calibration error, per-class accuracy,
parameters, FLOPs per image, inference throughput on this machine; its test logits are saved under
predictions/ so statistics can be recomputed without the models. Per variant: mean, std and 95% t
interval over seeds, the difference to the raw baseline (Welch) and paired per-seed tests.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kdlab import io, stats, tracking
from kdlab.params import BASELINE, Params, flatten

SUMMARY_JSON = "metrics/summary.json"
RUNS_JSON = "metrics/runs.json"
SUMMARY_MD = "metrics/summary.md"
PREDICTIONS = Path("predictions")
CURVES = Path("plots/curves")
ACCURACY_PLOT = Path("plots/accuracy.json")
ECE_BINS = 15


def variants(p: Params) -> list[str]:
    return [BASELINE, *p.study.variants]


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
    from kdlab.train import predict

    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        predict(model, images, labels, normalize, batch_size, precision)
        best = max(best, len(labels) / (time.perf_counter() - start))
    return best


# ---------------------------------------------------------------- statistics over seeds

SUMMARIZED = ("test_acc", "test_acc_last", "agreement", "kl_teacher_student", "ece", "test_acc_top5")


def summarize(p: Params, runs: dict[str, dict], predictions: dict[str, torch.Tensor] | None = None,
              labels: torch.Tensor | None = None) -> dict:
    """``runs["kd-0"] = {test_acc, agreement, ...}`` (plus ``runs["teacher"]``) -> summary.json."""
    out = {"teacher": {k: v for k, v in runs["teacher"].items() if k != "per_class_acc"}, "variants": {},
           "comparisons": {}}
    seeds = p.study.seeds
    for variant in variants(p):
        rows = [runs[f"{variant}-{s}"] for s in seeds]
        out["variants"][variant] = {k: stats.t_interval([r[k] for r in rows]) for k in SUMMARIZED if k in rows[0]}
        out["variants"][variant]["params"] = rows[0]["params"]
    acc = {v: [runs[f"{v}-{s}"]["test_acc"] for s in seeds] for v in variants(p)}
    pairs = [(v, BASELINE) for v in p.study.variants]
    if "kd" in p.study.variants and "kd_correct_only" in p.study.variants:
        pairs.append(("kd_correct_only", "kd"))
    for a, b in pairs:
        entry = {"test_acc": stats.welch(acc[a], acc[b])}
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


LABELS = {"raw": "Trained alone (raw)", "kd": "Distilled (kd)", "kd_correct_only": "Distilled, teacher-correct only"}


def fmt_p(p: float | None) -> str:
    return "n/a" if p is None else "< 0.001" if p < 0.001 else f"{p:.3f}"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def _ci(s: dict) -> str:
    if s.get("ci_low") is None:
        return f"{_pct(s['mean'])}"
    return f"{_pct(s['mean'])} [{_pct(s['ci_low'])}, {_pct(s['ci_high'])}]"


def markdown(p: Params, summary: dict) -> str:
    """The founding note's table (teacher, distilled, trained alone) with 95% intervals over seeds."""
    n = len(p.study.seeds)
    t = summary["teacher"]
    lines = [
        f"Test accuracy on {p.data.name}: mean [95% t interval] over {n} seed{'s' if n > 1 else ''} "
        f"({', '.join(map(str, p.study.seeds))}); checkpoints chosen on the validation split.",
        "",
        "| model | arch | test accuracy (%) | last epoch (%) | agreement with teacher (%) | vs raw (points) | p (Welch) |",
        "|---|---|---|---|---|---|---|",
        f"| Teacher | {p.teacher.arch} | {_pct(t['test_acc'])} | - | - | - | - |",
    ]
    for variant in variants(p):
        e = summary["variants"][variant]
        cmp_ = summary["comparisons"].get(f"{variant}_vs_{BASELINE}", {}).get("test_acc")
        if cmp_:
            diff = f"{100 * cmp_['diff']:+.2f}"
            if cmp_["ci_low"] is not None:
                diff += f" [{100 * cmp_['ci_low']:+.2f}, {100 * cmp_['ci_high']:+.2f}]"
            pval = fmt_p(cmp_["p"])
        else:
            diff, pval = "-", "-"
        agree = _ci(e["agreement"]) if "agreement" in e else "-"
        lines.append(f"| {LABELS.get(variant, variant)} | {p.student.arch} | {_ci(e['test_acc'])} "
                     f"| {_ci(e['test_acc_last'])} | {agree} | {diff} | {pval} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the stage

def run_evaluate(p: Params) -> dict:
    from kdlab.stages import TEACHER, check_trained, context, model_from_checkpoint, student_paths
    from kdlab.train import predict

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
        m["params"] = sum(t.numel() for t in model.parameters())
        m["flops_per_image"] = flops_per_image(model, shape, ctx.device)
        m["images_per_second"] = throughput(model, test_x[:2000], test_y[:2000], ctx.normalize, bs, p.train.precision)
        for k in ("val_acc", "test_acc_last", "best_epoch"):
            m[k] = ckpt["metrics"][k]
        return logits, m, ckpt["history"]

    runs, predictions, curves = {}, {}, {}
    teacher_logits, runs["teacher"], curves["teacher"] = evaluate_model(TEACHER, "dvc repro teacher", p.teacher, None)
    predictions["teacher"] = teacher_logits
    for variant in variants(p):
        for seed in p.study.seeds:
            name = f"{variant}-{seed}"
            path, _ = student_paths(variant, seed)
            stage = "baseline" if variant == BASELINE else "student"
            predictions[name], runs[name], curves[name] = evaluate_model(
                path, f"dvc repro {stage}@{name}", p.student, teacher_logits)
            runs[name].update(variant=variant, seed=seed)
    for name, logits in predictions.items():
        io.save_torch({"logits": logits.half(), "labels": test_y}, PREDICTIONS / f"{name}.pt")
    summary = summarize(p, runs, predictions, test_y)
    io.save_json(summary, SUMMARY_JSON)
    io.save_json(runs, RUNS_JSON)
    for name, rows in curves.items():
        io.save_json([{k: r[k] for k in ("epoch", "val_acc", "loss")} for r in rows], CURVES / f"{name}.json")
    io.save_json([{"run": n, "variant": r["variant"], "seed": r["seed"], "test_acc": r["test_acc"],
                   "agreement": r["agreement"]} for n, r in runs.items() if n != "teacher"], ACCURACY_PLOT)
    table = markdown(p, summary)
    io.save_text(table, SUMMARY_MD)
    print(table)
    with tracking.run("evaluate", "evaluate", flatten(p)) as run:
        flat = {f"{v}/test_acc_mean": e["test_acc"]["mean"] for v, e in summary["variants"].items()}
        flat.update({f"{v}/agreement_mean": e["agreement"]["mean"] for v, e in summary["variants"].items()})
        flat["teacher/test_acc"] = summary["teacher"]["test_acc"]
        run.log(flat)
        run.log_to_study(flat)
        run.log_artifact(SUMMARY_MD)
    return summary
