"""``kdlab evaluate``: test accuracy of the teacher and every student, top-1 agreement with the teacher,
and per variant the mean and spread over seeds -> metrics/summary.json and metrics/summary.md."""
from __future__ import annotations

import statistics

import torch

from kdlab import io, tracking
from kdlab.params import BASELINE, Params, flatten

SUMMARY_JSON = "metrics/summary.json"
SUMMARY_MD = "metrics/summary.md"


def _spread(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def variants(p: Params) -> list[str]:
    return [BASELINE, *p.study.variants]


def summarize(p: Params, teacher_test: dict, runs: dict[tuple[str, int], dict]) -> dict:
    """``runs[(variant, seed)] = {"test_acc", "agreement"}`` -> the summary.json structure."""
    out = {"teacher": teacher_test, "variants": {}}
    raw = [r["test_acc"] for (v, _), r in runs.items() if v == BASELINE]
    for variant in variants(p):
        rows = [runs[(variant, s)] for s in p.study.seeds]
        acc = [r["test_acc"] for r in rows]
        entry = {"test_acc": _spread(acc), "agreement": _spread([r["agreement"] for r in rows])}
        if raw and variant != BASELINE:
            entry["gain_over_raw"] = statistics.fmean(acc) - statistics.fmean(raw)
        out["variants"][variant] = entry
    return out


LABELS = {"raw": "Trained alone (raw)", "kd": "Distilled (kd)", "kd_correct_only": "Distilled, teacher-correct only"}


def markdown(p: Params, summary: dict) -> str:
    n = len(p.study.seeds)
    t = summary["teacher"]
    lines = [
        f"Test accuracy on {p.data.name} (mean ± sample std over {n} seed{'s' if n > 1 else ''}: "
        f"{', '.join(map(str, p.study.seeds))}); checkpoints chosen on the validation split.",
        "",
        "| model | arch | test accuracy (%) | agreement with teacher (%) | gain over raw (points) |",
        "|---|---|---|---|---|",
        f"| Teacher | {p.teacher.arch} | {100 * t['test_acc']:.2f} | - | - |",
    ]
    for variant, e in summary["variants"].items():
        a, g = e["test_acc"], e["agreement"]
        gain = f"{100 * e['gain_over_raw']:+.2f}" if "gain_over_raw" in e else "-"
        lines.append(f"| {LABELS.get(variant, variant)} | {p.student.arch} | {100 * a['mean']:.2f} ± {100 * a['std']:.2f} "
                     f"| {100 * g['mean']:.2f} ± {100 * g['std']:.2f} | {gain} |")
    return "\n".join(lines) + "\n"


def run_evaluate(p: Params) -> dict:
    from kdlab.stages import TEACHER, context, load_model, student_paths
    from kdlab.train import accuracy, predict

    ctx = context(p, 0)
    test = (ctx.splits["test"]["images"], ctx.splits["test"]["labels"])
    bs = p.train.eval_batch_size

    def test_logits(model):
        return predict(model, *test, ctx.normalize, bs)

    teacher_logits = test_logits(load_model(TEACHER, ctx, "dvc repro teacher"))
    teacher_pred = teacher_logits.argmax(1)
    runs = {}
    for variant in variants(p):
        for seed in p.study.seeds:
            path, _ = student_paths(variant, seed)
            logits = test_logits(load_model(path, ctx, f"dvc repro student@{variant}-{seed}"))
            runs[(variant, seed)] = {"test_acc": accuracy(logits, test[1]),
                                     "agreement": (logits.argmax(1) == teacher_pred).float().mean().item()}
    summary = summarize(p, {"test_acc": accuracy(teacher_logits, test[1])}, runs)
    io.save_json(summary, SUMMARY_JSON)
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


README_START, README_END = "<!-- results:start (kdlab readme) -->", "<!-- results:end -->"


def readme_with_results(readme: str, summary_md: str) -> str:
    """README text with the block between the results markers replaced by metrics/summary.md."""
    start, end = readme.find(README_START), readme.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"README has no results block ({README_START} ... {README_END})")
    return readme[:start + len(README_START)] + "\n" + summary_md + readme[end:]


def run_readme(readme_path: str = "README.md") -> None:
    from pathlib import Path

    text = Path(readme_path).read_text()
    io.save_text(readme_with_results(text, Path(SUMMARY_MD).read_text()), readme_path)
    print(f"{readme_path}: results block updated from {SUMMARY_MD}")
