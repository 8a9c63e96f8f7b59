"""Evaluate's statistics and the report, from small fixtures of metrics files."""
import json

import pandas as pd
import pytest
import torch

from kdlab.analysis import evaluate, present, report, stats, sweep
from kdlab.pipeline import params, workspace


def _fixture_runs(p, accs):
    """runs.json-like dict: accs[method] = per-seed test accuracies."""
    runs = {"teacher": {"test_acc": 0.9, "ece": 0.02, "params": 1000, "flops_per_image": 2e6,
                        "images_per_second": 500.0, "val_acc": 0.91, "test_acc_last": 0.9, "best_epoch": 3,
                        "per_class_acc": {"0": 0.9}}}
    for v, values in accs.items():
        for s, a in zip(p.study.seeds, values):
            runs[f"{v}-{s}"] = {"test_acc": a, "test_acc_last": a - 0.01, "agreement": a + 0.02,
                                "kl_teacher_student": 0.1, "ece": 0.03, "params": 100, "flops_per_image": 2e5,
                                "images_per_second": 5000.0, "method": v, "seed": s, "val_acc": a,
                                "best_epoch": 2, "per_class_acc": {"0": a}}
    return runs


@pytest.fixture
def study(in_tmp):
    p = params.from_dict({"study": {"seeds": [0, 1, 2]}})
    runs = _fixture_runs(p, {"raw": [0.80, 0.81, 0.82], "kd": [0.84, 0.85, 0.86],
                             "kd_correct_only": [0.83, 0.86, 0.845]})
    labels = torch.arange(200) % 4
    g = torch.Generator().manual_seed(0)
    preds = {n: torch.randn(200, 4, generator=g) + 3 * torch.nn.functional.one_hot(labels, 4) for n in runs}
    summary = evaluate.summarize(p, runs, preds, labels)
    (in_tmp / "metrics").mkdir()
    (in_tmp / workspace.SUMMARY_JSON).write_text(json.dumps(summary))
    (in_tmp / workspace.RUNS_JSON).write_text(json.dumps(runs))
    workspace.CURVES.mkdir(parents=True) if not (in_tmp / workspace.CURVES).exists() else None
    (in_tmp / workspace.CURVES).mkdir(parents=True, exist_ok=True)
    for n in runs:
        (in_tmp / workspace.CURVES / f"{n}.json").write_text(json.dumps(
            [{"epoch": e, "val_acc": 0.5 + 0.1 * e, "loss": 1.0 / e} for e in (1, 2, 3)]))
    return p, summary, runs


def _frame(runs):
    """kdlab.analysis.results.frame's shape for question 1: a row per run (the teacher aside)."""
    return pd.DataFrame([{"question": 1, "arm": r["method"], "seed": r["seed"], "test_acc": r["test_acc"]}
                         for n, r in runs.items() if n != "teacher"])


def test_summary_intervals_and_comparisons(study):
    p, s, _ = study
    kd = s["methods"]["kd"]["test_acc"]
    assert kd["mean"] == pytest.approx(0.85) and kd["std"] == pytest.approx(0.01)
    assert kd["ci_low"] == pytest.approx(0.85 - 4.302653 * 0.01 / 3 ** 0.5, rel=1e-6)
    w = s["comparisons"]["kd_vs_raw"]["test_acc"]
    # t = 0.04 / sqrt(2 * 0.01^2 / 3) = 4.898979 with df = 4
    assert w["diff"] == pytest.approx(0.04) and w["p"] == pytest.approx(0.0080499, rel=1e-4)
    assert set(s["comparisons"]) == {"kd_vs_raw", "kd_correct_only_vs_raw", "kd_correct_only_vs_kd"}
    assert set(s["comparisons"]["kd_vs_raw"]["paired_by_seed"]) == {"0", "1", "2"}
    md = evaluate.markdown(p, s)
    assert "| Distilled (kd) | resnet8 | 85.00 [82.52, 87.48] |" in md
    assert "+4.00 [+1.73, +6.27] | 0.008 |" in md
    assert "| Trained alone (raw) | resnet8 | 81.00 [" in md
    assert "| Teacher | resnet20 | 90.00 |" in md


def test_verdicts_do_not_overstate():
    better = {"test_acc": {"diff": 0.02, "ci_low": 0.01, "ci_high": 0.03, "p": 0.01}}
    unclear = {"test_acc": {"diff": 0.003, "ci_low": -0.004, "ci_high": 0.01, "p": 0.3}}
    worse = {"test_acc": {"diff": -0.02, "ci_low": -0.03, "ci_high": -0.01, "p": 0.01}}
    single = {"test_acc": {"diff": 0.01, "ci_low": None, "ci_high": None, "p": None}}
    assert "beat" in present.verdict("A", "B", better, 3)
    assert "No detectable difference" in present.verdict("A", "B", unclear, 3)
    assert "includes zero" in present.verdict("A", "B", unclear, 3)
    assert "worse" in present.verdict("A", "B", worse, 3)
    assert "one seed" in present.verdict("A", "B", single, 1)
    # paired with a family-adjusted p: the adjusted p decides, even where the unadjusted interval excludes zero
    paired = {"test_acc": {"diff": 0.02, "ci_low": 0.01, "ci_high": 0.03, "p": 0.01, "p_holm": 0.06}}
    assert "No difference detectable" in present.verdict("A", "B", paired, 3)
    assert "Holm-adjusted p = 0.060" in present.verdict("A", "B", paired, 3)
    paired["test_acc"]["p_holm"] = 0.03
    assert "**A beat B**" in present.verdict("A", "B", paired, 3)
    paired["test_acc"].update(diff=-0.02, ci_low=-0.03, ci_high=-0.01)
    assert "**A was worse than B**" in present.verdict("A", "B", paired, 3)


def test_report_renders_every_method_and_valid_pngs(study, monkeypatch):
    p, _, runs = study
    monkeypatch.setattr(report.tracking, "run", _no_tracking)
    path = report.run_report(p, None, _frame(runs))
    text = path.read_text()
    assert "p (paired t; Holm)" in text and "Welch" not in text  # the report's comparisons are paired
    for label in ("Trained alone (raw)", "Distilled (kd)", "Distilled, teacher-correct only"):
        assert f"| {label} | resnet8 |" in text
    assert "Question 1" in text and "beat" in text
    for name in ("accuracy.png", "learning_curves.png", "agreement_vs_accuracy.png"):
        blob = (workspace.REPORTS / name).read_bytes()
        assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 5000
        assert f"]({name})" in text


def test_headline_is_few_rounded_numbers_with_holm_adjusted_p(study, monkeypatch):
    p, s, runs = study
    monkeypatch.setattr(report.tracking, "run", _no_tracking)
    report.run_report(p, None, _frame(runs))
    h = json.loads((workspace.HEADLINE_JSON).read_text())
    assert set(h) == {"teacher", "raw", "kd", "kd_correct_only", "q1"}
    # kd: 85.00 +- 4.302653 x 0.01 / sqrt(3) = 2.48 points; agreement = accuracy + 2 points in the fixture
    assert h["kd"] == {"acc": 85.0, "acc_ci": 2.48, "agree": 87.0} and h["teacher"] == {"acc": 90.0}
    # paired over seeds: kd - raw is +4 points at every seed (no spread: p 0); kd_correct_only - raw is
    # (3, 5, 2.5) points: mean 3.5, sd 1.3229, t = 4.5826 on 2 df, p 0.04447, half-width 4.302653 x 0.76376
    assert h["q1"]["kd_vs_raw"] == {"gain": 4.0, "ci": 0.0, "p_holm": 0.0}
    assert h["q1"]["kd_correct_only_vs_raw"]["gain"] == 3.5 and h["q1"]["kd_correct_only_vs_raw"]["ci"] == 3.29
    # Holm over the 3: 0 x 3; 0.04447 x 2 = 0.0889; kd_correct_only - kd's p 0.5799 x 1, as it is the largest
    assert h["q1"]["kd_correct_only_vs_raw"]["p_holm"] == pytest.approx(0.0889, abs=1e-4)
    assert h["q1"]["kd_correct_only_vs_kd"]["p_holm"] == pytest.approx(0.5799, abs=1e-4)
    # the question stage's own file keeps Welch's unpaired test
    assert s["comparisons"]["kd_vs_raw"]["test_acc"]["p"] == pytest.approx(0.0080499, rel=1e-4)
    leaves = [v for e in h.values()
              for v in (e.values() if "acc" in e else (x for c in e.values() for x in c.values()))]
    assert all(isinstance(v, (int, float)) for v in leaves) and len(leaves) == 19
    # the README's opening gives each paired comparison its verdict in four words (kd - raw: +4 at every seed)
    found = workspace.FINDINGS_MD.read_text()
    assert "`kd` 85.00% against 81.00% trained alone: +4.00 [+4.00, +4.00], Holm p < 0.001: **above**" in found
    assert "+3.50 [+0.21, +6.79], Holm p 0.089: **inconclusive; detectable:" in found


class _NoRun:
    """MLflow left out: these tests are about the files (tests/test_pipeline.py checks what MLflow gets)."""

    def __getattr__(self, name):
        return lambda *a, **k: []


from contextlib import contextmanager  # noqa: E402


@contextmanager
def _no_tracking(*a, **k):
    yield _NoRun()


EXP_SHOW = [
    {"rev": "workspace", "name": None, "experiments": None,
     "data": {"rev": "workspace", "params": {"params.yaml": {"data": {"loss": {"alpha": 0.5}}}},
              "metrics": {"metrics/headline.json": {"data": {
                  "teacher": {"acc": 90.0}, "raw": {"acc": 80.0, "acc_ci": 1.0, "agree": 85.0},
                  "kd": {"acc": 82.0, "acc_ci": 1.0}, "q1": {"kd_vs_raw": {"gain": 2.0, "ci": 1.5}}}}}}},
    {"rev": "abc", "name": "main", "data": {"rev": "abc", "params": {"params.yaml": {"data": {"loss": {"alpha": 0.5}}}},
                                            "metrics": {}},
     "experiments": [{"revs": [{"rev": "def", "name": "exp-1", "data": {
         "rev": "def", "params": {"params.yaml": {"data": {"loss": {"alpha": 0.9}}}},
         "metrics": {"metrics/headline.json": {"data": {
             "raw": {"acc": 80.0},  # one seed: no interval
             "kd": {"acc": 84.0, "acc_ci": 1.0}}}}}}]}]},
]


def test_sweep_gathers_experiments(in_tmp):
    exps = sweep.experiments(EXP_SHOW)
    assert [e["name"] for e in exps] == ["workspace", "exp-1"]  # main has no metrics: skipped
    names, rows = sweep.table(exps, "loss.alpha")
    assert names == ["raw", "kd"] and [r[0] for r in rows] == [0.5, 0.9] and [r[1] for r in rows] == [None, None]
    md = sweep.run_sweep("loss.alpha", json.dumps(EXP_SHOW)).read_text()
    assert "| 0.9 | exp-1 | 80.00 | 84.00 [83.00, 85.00] |" in md
    assert (workspace.REPORTS / "sweep_loss.alpha.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(RuntimeError, match="no experiment with loss.temperature"):
        sweep.run_sweep("loss.temperature", json.dumps(EXP_SHOW))


def _exp(name: str, alpha: float, temperature: float, kd: float) -> dict:
    return {"rev": name, "name": name, "data": {
        "rev": name, "params": {"params.yaml": {"data": {"loss": {"alpha": alpha, "temperature": temperature}}}},
        "metrics": {"metrics/headline.json": {"data": {
            "raw": {"acc": 80.0, "acc_ci": 1.0}, "kd": {"acc": 100 * kd, "acc_ci": 1.0}}}}}}


def test_a_grid_sweep_has_one_row_per_experiment_and_one_curve_per_second_value(in_tmp):
    grid = [_exp(f"exp-{a}-{t}", a, t, 0.8 + a / 10 + t / 100) for a in (0.3, 0.7) for t in (2.0, 4.0)]
    show = [{"rev": "abc", "name": "main", "data": {"rev": "abc", "params": {}, "metrics": {}},
             "experiments": [{"revs": [g]} for g in grid]}]
    md = sweep.run_sweep("loss.alpha", json.dumps(show), by="loss.temperature").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| 0.")]
    # sorted by temperature, then alpha; each cell is that experiment's
    assert rows == ["| 0.3 | 2.0 | exp-0.3-2.0 | 80.00 [79.00, 81.00] | 85.00 [84.00, 86.00] |",
                    "| 0.7 | 2.0 | exp-0.7-2.0 | 80.00 [79.00, 81.00] | 89.00 [88.00, 90.00] |",
                    "| 0.3 | 4.0 | exp-0.3-4.0 | 80.00 [79.00, 81.00] | 87.00 [86.00, 88.00] |",
                    "| 0.7 | 4.0 | exp-0.7-4.0 | 80.00 [79.00, 81.00] | 91.00 [90.00, 92.00] |"]
    assert "| loss.alpha | loss.temperature | experiment |" in md
    png = workspace.REPORTS / "sweep_loss.alpha_by_loss.temperature.png"
    assert png.read_bytes()[:4] == b"\x89PNG"


def _write_run(spec, acc, **more):
    """A run's metrics file as kdlab train writes it: the measured numbers and the run's spec."""
    from kdlab.pipeline.spec import record

    path = spec.files[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"test_acc": acc, "val_acc": acc + 0.01, "params": 100, "train_seconds": 1.5,
                                **more, "spec": record(spec)}))


def test_results_is_one_tidy_row_per_run_of_the_study(in_tmp, capsys):
    from kdlab.analysis import results

    p = params.from_dict({"study": {"seeds": [0, 1]}})
    specs = {spec.name: spec for *_, spec in results.runs(p)}
    assert set(specs) == {"teacher", *(f"{m}-{s}" for m in ("raw", "kd", "kd_correct_only") for s in (0, 1))}
    _write_run(specs["teacher"], 0.9)
    for i, v in enumerate(["raw", "kd", "kd_correct_only"]):
        for s in (0, 1) if v != "kd_correct_only" else (0,):  # kd_correct_only-1 not trained yet
            _write_run(specs[f"{v}-{s}"], 0.80 + i / 100 + s / 1000)
    (in_tmp / workspace.RUNS_JSON).write_text(json.dumps({"kd-1": {"agreement": 0.95, "method": "kd", "seed": 1}}))
    df = results.run_results(p)
    assert list(df.columns[:6]) == ["study", "question", "run", "arm", "method", "seed"]
    assert df.groupby("question").size().to_dict() == {1: 6}
    kd1 = df[df.run == "kd-1"].iloc[0]
    assert kd1.test_acc == pytest.approx(0.811) and kd1.agreement == 0.95 and kd1["loss.alpha"] == 0.5
    # the identity is the spec's: kd reads the teacher's file, the baseline reads none
    assert (kd1.arm, kd1.init, kd1.arch, kd1.width, kd1.teacher) == ("kd", "random", p.student.arch,
                                                                     p.student.width, "models/teacher.pt")
    assert pd.isna(df[df.run == "raw-0"].iloc[0].teacher) and df[df.run == "teacher"].iloc[0].arm == "teacher"
    assert df.study.nunique() == 1 and len(df.study.iloc[0]) == 12
    # the CSV reads back as the same table, its accuracies in percent as the reports give them; the runs not trained
    # yet are named, not invented
    back = pd.read_csv(workspace.REPORTS / "results.csv")
    assert back.shape == df.shape and back.test_acc.tolist() == pytest.approx((100 * df.test_acc).round(2).tolist())
    assert back.val_acc.tolist() == pytest.approx((100 * df.val_acc).round(2).tolist())
    assert "not run yet" in capsys.readouterr().out
    assert df.attrs["missing"] == [str(workspace.run_files("kd_correct_only", 1)[1])]


def test_a_metrics_file_without_its_spec_is_refused_naming_it(in_tmp):
    """A metrics file written before runs carried their spec is not guessed at: one line names it and the script
    that adds the spec."""
    from kdlab.analysis import results
    from kdlab.infra.io import StageError

    p = params.from_dict({"study": {"seeds": [0]}})
    path = workspace.run_files("kd", 0)[1]
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"test_acc": 0.8}))
    with pytest.raises(StageError, match=r"metrics/students/kd-0.json carries no spec.*scripts/spec_outputs.py"):
        results.frame(p)


def test_kdlab_results_lists_the_named_studies_runs_too(in_tmp, capsys):
    """`kdlab results` (frame(named=True)): the default study's runs and the teachers and students of
    studies/q1 and studies/q23 (their shipped params), each under its own study key; the report stage's frame
    stays the default study's."""
    import shutil

    from conftest import REPO
    from kdlab.analysis import results
    from kdlab.infra import tracking
    from kdlab.infra.schema import flatten
    from kdlab.analysis import q1_design as q1
    from kdlab.analysis import q23_design as q23

    for name in ("q1", "q23"):
        (in_tmp / "studies" / name).mkdir(parents=True)
        shutil.copy(REPO / f"studies/{name}/params.yaml", in_tmp / f"studies/{name}/params.yaml")
    p = params.from_dict({"study": {"seeds": [0]}})
    a, b = q1.load(), q23.load()

    specs = {str(spec.files[1]): spec for *_, spec in results.runs(p, named=True)}

    def write(path, acc):
        _write_run(specs[str(path.relative_to(in_tmp))], acc, epochs=2)

    write(in_tmp / "metrics/teacher.json", 0.9)
    write(in_tmp / "metrics/q1/teachers/main.json", 0.88)
    write(in_tmp / f"metrics/q1/students/kd.main-w0.5-e{a.budgets[0]}-s0.json", 0.85)
    write(in_tmp / f"metrics/q1/students/raw-w0.5-e{a.budgets[-1]}-s2.json", 0.86)
    write(in_tmp / f"metrics/q23/students/kd.carved-e{b.epochs}-s1.json", 0.84)
    write(in_tmp / f"metrics/q23/students/kd.pruned-l1-it-x0.5-e{b.epochs}-s0.json", 0.83)
    df = results.run_results(p, in_tmp / "all.csv", named=True)
    by_run = df.set_index("run")
    assert set(by_run.index) == {"teacher", "q1/teacher.main", f"q1/kd.main-w0.5-e{a.budgets[0]}-s0",
                                 f"q1/raw-w0.5-e{a.budgets[-1]}-s2", f"q23/kd.carved-e{b.epochs}-s1",
                                 f"q23/kd.pruned-l1-it-x0.5-e{b.epochs}-s0"}
    kd = by_run.loc[f"q1/kd.main-w0.5-e{a.budgets[0]}-s0"]
    assert (kd.question, kd.method, kd.arm, kd.width, kd.seed, kd.test_acc) == (1, "kd", f"kd.main-e{a.budgets[0]}",
                                                                             0.5, 0, 0.85)
    assert kd.teacher == "models/q1/teachers/main/final.pt"
    raw = by_run.loc[f"q1/raw-w0.5-e{a.budgets[-1]}-s2"]
    assert pd.isna(raw.teacher) and (raw.width, raw.method) == (0.5, "raw")
    carved, pruned = by_run.loc[f"q23/kd.carved-e{b.epochs}-s1"], by_run.loc[f"q23/kd.pruned-l1-it-x0.5-e{b.epochs}-s0"]
    assert (carved.question, carved.init, carved.method, carved.teacher) == (2, "carved", "kd",
                                                                             f"models/q23/teachers/{b.teacher}/final.pt")
    assert (pruned.question, pruned.init, pruned.arm) == (3, "pruned", f"kd.pruned-l1-it-x0.5-e{b.epochs}")
    flat = flatten(p)
    assert by_run.loc["q1/teacher.main", "study"] == tracking.study_key({**flat, **q1.study_params(a)})
    assert carved.study == tracking.study_key({**flat, **q23.study_params(b)})
    assert df.study.nunique() == 3
    # the default study's teacher, student and budget describe its own rows only; data and loss are every study's
    assert by_run.loc["teacher", "student.epochs"] == p.student.epochs
    assert pd.isna(kd["student.epochs"]) and pd.isna(carved["teacher.arch"]) and kd["loss.alpha"] == p.loss.alpha
    assert f"metrics/q1/students/kd.main-w0.5-e{a.budgets[-1]}-s0.json" in df.attrs["missing"]
    assert "default: 1, q1: 3, q23: 2" in capsys.readouterr().out
    assert list(results.frame(p).run) == ["teacher"]  # the report stage's table: the default study alone


def test_findings_word_an_untestable_comparison():
    """One seed, or the same difference on every seed (a paired SD of 0 with no difference: no p), has no verdict:
    the findings say so instead of failing."""
    from kdlab.analysis import study_report

    same = study_report.family({"a_vs_b": stats.paired([0.5, 0.6], [0.5, 0.6])})["a_vs_b"]
    assert same["p_holm"] is None
    assert report._verdict(same) == "+0.00 points (the same difference on every seed: not testable)"
    single = study_report.family({"a_vs_b": stats.paired([0.5], [0.4])})["a_vs_b"]
    assert report._verdict(single) == "+10.00 points (one seed: not testable)"


def test_the_declared_effect_decides_equivalence(study):
    """study.effect (params) is the study's equivalence margin: a difference of +0.10 points whose paired interval
    spans zero is equivalent within the shipped +/-0.5 and inconclusive within a declared +/-0.1."""
    p, s, runs = study
    frame = pd.DataFrame([{"question": 1, "arm": g, "seed": seed, "test_acc": a + bump}
                          for g, bump in (("raw", 0.0), ("kd", 0.04), ("kd_correct_only", 0.0))
                          for seed, a in zip((0, 1, 2, 3, 4), (0.80, 0.81, 0.82, 0.815, 0.805))])
    frame.loc[frame.arm == "kd_correct_only", "test_acc"] += [0.003, -0.001, 0.002, -0.0005, 0.0015]
    shipped = params.from_dict({}).study.effect
    assert shipped == 0.5
    wide = report.paired_family(frame, s, shipped)["comparisons"]["kd_correct_only_vs_raw"]["test_acc"]
    narrow = report.paired_family(frame, s, 0.1)["comparisons"]["kd_correct_only_vs_raw"]["test_acc"]
    assert wide["verdict"] == "equivalent" and wide["margin"] == pytest.approx(0.005), wide
    assert narrow["verdict"] == "inconclusive" and narrow["margin"] == pytest.approx(0.001), narrow
    with pytest.raises(params.ParamsError, match="study.effect"):
        params.from_dict({"study": {"effect": 0}})


def test_a_brief_counts_what_the_seeds_decided_and_what_they_could_not():
    from kdlab.analysis.study_report import brief

    comparisons = [{"p_holm": 0.01, "verdict": "above", "diff": 0.0051},
                   {"p_holm": 0.4, "verdict": "inconclusive", "detectable": 0.012, "diff": 0.001},
                   {"p_holm": 0.6, "verdict": "inconclusive", "detectable": 0.02, "diff": -0.002},
                   {"p_holm": None, "diff": 0.0}]  # the same difference on every seed
    assert brief("Q?", comparisons, lambda c: "`a` - `b`") == (
        "- **Q?** `a` - `b` +0.51 **above**; 2 inconclusive (detectable: 1.20 to 2.00 points); 1 not testable.")
