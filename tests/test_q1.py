"""Question 1 in depth (src/kdlab/pipeline/q1.py, q1_report.py): its params, the paired statistics against hand-computed
values, the per-class / confidence / teacher-right breakdown on hand-made predictions, and the report from a
hand-made study's files. The stages themselves run under `dvc repro studies/q1/dvc.yaml` in tests/test_pipeline.py."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, shipped_with
from kdlab.analysis import q1_report, stats
from kdlab.infra.schema import ParamsError
from kdlab.pipeline import params, q1

#: a small study: one teacher run with a snapshot, two budgets, two seeds
SMALL = {"q1": {
    "train_images": 100, "val_images": 50, "subset_seed": 0, "seeds": [0, 1],
    "teachers": {"main": {"arch": "resnet8", "width": 0.5, "epochs": 3, "lr": 0.1, "seed": 0, "snapshots": [1]}},
    "teacher": "main", "cached": {"main": "main", "main_e1": "main"}, "student": {"arch": "resnet8", "width": 0.25, "lr": 0.1},
    "budgets": [1, 2], "variants": ["kd", "kd_correct_only"], "converged": 2, "widths": [0.5],
    "quality": ["main_e1"], "quality_epochs": 1, "control_teacher": "main_e1",
    "controls": ["kd_correct_clean", "kd_wrong_only"]}}


def _write(path, raw):
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_the_shipped_study_params_load_and_name_every_arm():
    q = q1.load(REPO / "studies/q1/params.yaml")
    arms = q1_report.expected_runs(q)
    assert len(arms) == len(set(arms))
    assert ("raw", None, q.student.width, q.budgets[-1]) in arms
    assert ("kd", q.teacher, q.teachers[q.teacher].width, q.converged) in arms  # born-again
    assert q1.teacher_file("main_e3", q).as_posix() == "models/q1/teachers/main/e3.pt"
    assert q1.student_name("kd", "main", 1.0, 15, 2) == "kd.main-w1.0-e15-s2"
    assert q1.student_name("raw", None, 0.5, 2, 0) == "raw-w0.5-e2-s0"


@pytest.mark.parametrize("change, key", [
    ({"cached": {"main": "main", "main_e2": "main"}}, "q1.cached"),   # no such snapshot
    ({"cached": {"main": "main", "main_e1": "other"}}, "q1.cached.main_e1"),   # not its run
    ({"quality": ["main"]}, "q1.quality"),                     # the converged teacher's arms are the budget arms
    ({"converged": 3}, "q1.converged"),                        # not a budget
    ({"controls": ["no_such_method"]}, "q1.controls"),
    ({"widths": [0.25]}, "q1.widths"),                         # the student's own width, trained at every budget
    # issue 31, item 3: a named study's params checked like the root's, one line naming the key
    ({"widths": [0]}, "q1.widths"),                            # an 89-parameter "w0.0" student
    ({"widths": [-0.5]}, "q1.widths"),
    ({"widths": [0.5, 0.5]}, "q1.widths"),                     # DVC would collapse the duplicate silently
    ({"budgets": [1, 1, 2]}, "q1.budgets"),
    ({"variants": ["kd", "kd"]}, "q1.variants"),
    ({"variants": ["raw"]}, "q1.variants"),                    # raw is the baseline at every budget already
    ({"controls": ["kd_correct_clean", "kd_correct_clean"]}, "q1.controls"),
    ({"seeds": [0, -1]}, r"q1.seeds\[1\]"),
    ({"teachers": {"main": {**SMALL["q1"]["teachers"]["main"], "lr": 0}}}, "q1.teachers.main.lr"),
    ({"teachers": {"main": {**SMALL["q1"]["teachers"]["main"], "lr": -0.1}}}, "q1.teachers.main.lr"),
    ({"teachers": {"main": {**SMALL["q1"]["teachers"]["main"], "seed": 2 ** 64}}}, "q1.teachers.main.seed"),
    ({"teachers": {"main": {**SMALL["q1"]["teachers"]["main"], "arch": "resnet18"}}}, "q1.teachers.main.width"),
    ({"teachers": {"main": {**SMALL["q1"]["teachers"]["main"], "train_images": -5}}}, "q1.teachers.main.train_images"),
    ({"student": {"arch": "resnet8", "width": 0.25, "lr": 0}}, "q1.student.lr"),
])
def test_bad_study_params_are_refused_naming_the_key(tmp_path, change, key):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        q1.load(_write(tmp_path / "p.yaml", {"q1": {**SMALL["q1"], **change}}))


def test_a_recipe_a_teacher_on_more_data_and_an_online_teacher_reach_the_run_specs(tmp_path):
    """q1.recipe sets train.* and cache.views of every run (its lr is every run's); a teacher may train on its
    own, larger subset; kd_online reads the teacher model (its architecture checked), not a cache."""
    recipe = {"lr": 0.1, "schedule": "cosine", "warmup": 0.05, "batch_size": 50, "ema": 0.9, "views": "all"}
    teachers = {"main": {**SMALL["q1"]["teachers"]["main"], "train_images": 300}}
    q = q1.load(_write(tmp_path / "p.yaml", {"q1": {**SMALL["q1"], "recipe": recipe, "teachers": teachers,
                                                    "variants": ["kd", "kd_online"]}}))
    p = params.from_dict(shipped_with({}))
    want = {"train": {"schedule": "cosine", "warmup": 0.05, "batch_size": 50, "ema": 0.9, "compile": "auto"},
            "cache": {"views": "all"}}
    runs = q1.runs(p, q)
    teacher = runs["teachers/main"]()
    assert teacher.overrides == want and teacher.subset.train_images == 300 and teacher.model.lr == 0.1
    online = runs["students/kd_online.main-w0.25-e1-s0"]()
    assert online.overrides == want and online.subset.train_images == 100
    assert online.cache is None and online.teacher.path.as_posix() == "models/q1/teachers/main/final.pt"
    assert (online.teacher_model.arch, online.teacher_model.width) == ("resnet8", 0.5)
    kd = runs["students/kd.main-w0.25-e1-s0"]()
    assert kd.cache.path.as_posix() == "data/q1/logits/main.pt" and kd.teacher_model is None
    pr = params.with_overrides(p, kd.overrides)
    assert (pr.train.batch_size, pr.train.ema, pr.cache.views, pr.train.momentum) == (50, 0.9, "all", p.train.momentum)
    with pytest.raises(ParamsError, match=r"q1\.student\.lr"):  # the recipe's lr is every run's
        q1.load(_write(tmp_path / "p.yaml", {"q1": {**SMALL["q1"], "recipe": recipe, "teachers": teachers,
                                                    "student": {**SMALL["q1"]["student"], "lr": 0.2}}}))
    with pytest.raises(ParamsError, match=r"q1\.recipe\.ema"):
        q1.load(_write(tmp_path / "p.yaml", {"q1": {**SMALL["q1"], "recipe": {**recipe, "ema": 1.0},
                                                    "teachers": teachers}}))


def test_paired_t_against_hand_computed_values():
    # d = (0.010, 0.020, 0.005): mean 0.0116667, sd 0.0076376, se 0.0044096, t = 2.645751 on 2 df
    r = stats.paired([0.80, 0.82, 0.81], [0.79, 0.80, 0.805])
    assert r["diff"] == pytest.approx(0.0116667, rel=1e-5)
    assert r["p"] == pytest.approx(0.1180829, rel=1e-5)
    half = 4.302653 * 0.0076376 / 3 ** 0.5
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((0.0116667 - half, 0.0116667 + half), rel=1e-4)
    # pairing matters: Welch on the same numbers ignores that seed 1 is high in both arms
    assert stats.welch([0.80, 0.82, 0.81], [0.79, 0.80, 0.805])["p"] > r["p"]
    assert stats.paired([0.5], [0.4])["p"] is None
    # the table form pairs on the seed, whatever the row order
    df = pd.DataFrame({"arm": ["a", "a", "a", "b", "b", "b"], "seed": [0, 1, 2, 2, 0, 1],
                       "acc": [0.80, 0.82, 0.81, 0.805, 0.79, 0.80]})
    assert stats.paired_pairs(df, "arm", "acc", [("a", "b")])["a_vs_b"]["p"] == pytest.approx(r["p"])


def test_holm_within_a_family_of_paired_comparisons():
    fam = q1_report.family({"x": {"diff": 0.01, "p": 0.01}, "y": {"diff": 0.02, "p": 0.04},
                            "z": {"diff": 0.0, "p": None}})
    assert fam["x"]["p_holm"] == pytest.approx(0.02) and fam["y"]["p_holm"] == pytest.approx(0.04)
    assert fam["z"]["p_holm"] is None and fam["x"]["verdict"] == "above"
    assert "**above**" in q1_report.call("a", "b", {**fam["x"], "ci_low": 0.005, "ci_high": 0.015})


def test_four_word_verdicts_with_equivalence_and_the_detectable_effect():
    """A family's comparisons: above/below where the Holm-adjusted paired t rejects; equivalent where it does not
    and TOST within +/-0.5 points does (Holm over the family); else inconclusive, quoting what the seeds detect."""
    from kdlab.analysis.study_report import family, said

    base = np.array([0.880, 0.884, 0.878, 0.882, 0.881, 0.879, 0.883, 0.880])
    arms = {"tight": base + np.array([1, -1, 2, -2, 1, 0, -1, 0]) * 1e-4,     # 0.00 +/- 0.01 points
            "up": base + 0.02 + np.array([1, -1, 2, -2, 1, 0, -1, 0]) * 1e-3,  # +2 points
            "noisy": base + np.array([15, -12, 9, -18, 11, -7, 16, -14]) * 1e-3}
    fam = family({k: stats.paired(v, base) for k, v in arms.items()})
    assert [fam[k]["verdict"] for k in ("tight", "up", "noisy")] == ["equivalent", "above", "inconclusive"]
    assert said(fam["tight"]) == "equivalent within +/-0.50"
    sd = float(np.std(arms["noisy"] - base, ddof=1))
    assert fam["noisy"]["detectable"] == pytest.approx(stats.detectable(sd, 8, 0.05 / 3), rel=1e-6)
    assert said(fam["noisy"]) == f"inconclusive; detectable: {100 * fam['noisy']['detectable']:.2f} points"
    assert fam["tight"]["p_tost_holm"] < 0.05 < fam["noisy"]["p_tost_holm"]
    wide = family({k: stats.paired(v, base) for k, v in arms.items()}, margin=0.0001)  # a margin too tight to meet
    assert wide["tight"]["verdict"] == "inconclusive"


def _frame(preds: dict, labels: np.ndarray) -> pd.DataFrame:
    rows = [{"arm": arm, "variant": arm.split(".")[0], "width": 0.25, "epochs": 2, "seed": s,
             "test_acc": float((p == labels).mean()), "pred": p} for (arm, s), p in preds.items()]
    return pd.DataFrame(rows)


def test_breakdown_per_class_confidence_and_teacher_right_on_hand_made_predictions(tmp_path):
    """Ten test images of two classes. The teacher is wrong on images 8 and 9 and unsure on 0 and 1. With two
    seeds, kd gains exactly the images listed below over raw, so every subset's gain is known by hand."""
    q = q1.load(_write(tmp_path / "p.yaml", SMALL))
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    teacher = {"labels": labels, "pred": np.array([0, 0, 0, 0, 0, 1, 1, 1, 0, 0]),
               "confidence": np.array([0.5, 0.55, 0.95, 0.999, 0.995, 0.97, 0.98, 0.999, 0.7, 0.8])}
    raw = np.array([0, 0, 0, 1, 1, 1, 1, 1, 0, 0])   # wrong on 3, 4 (class 0) and 8, 9 (class 1)
    kd0 = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0, 0])   # seed 0: also right on 3
    kd1 = np.array([0, 0, 0, 0, 0, 1, 1, 1, 0, 1])   # seed 1: also right on 3, 4 and 9
    df = _frame({("raw", 0): raw, ("raw", 1): raw, ("kd.main", 0): kd0, ("kd.main", 1): kd1}, labels)
    br = q1_report.breakdown(q, df, teacher, ["zero", "one"])
    # class 0 (5 images): raw 3/5; kd 4/5 and 5/5: gains 0.2 and 0.4, mean 0.3
    assert br["class"]["zero"]["diff"] == pytest.approx(0.3) and br["class"]["zero"]["images"] == 5
    # class 1: raw 3/5; kd 3/5 and 4/5: gains 0 and 0.2
    assert br["class"]["one"]["diff"] == pytest.approx(0.1)
    # confidence bins [0, .6): images 0, 1 (no change); [.6, .9): 8, 9 (seed 1 gains 9: 0 and 0.5);
    # [.9, .99): 2, 5, 6 (no change); [.99, 1]: 3, 4, 7 (raw 1/3; kd 2/3 and 3/3)
    conf = br["confidence"]
    assert [c["images"] for c in conf.values()] == [2, 2, 3, 3]
    assert [c["diff"] for c in conf.values()] == pytest.approx([0.0, 0.25, 0.0, 0.5])
    # teacher wrong on 8, 9: gain (0 + 0.5) / 2; right on the other 8: (1/8 + 2/8) / 2
    assert br["teacher"]["teacher wrong"]["diff"] == pytest.approx(0.25)
    assert br["teacher"]["teacher right"]["diff"] == pytest.approx(0.1875)
    assert br["teacher"]["teacher right"]["raw_acc"] == pytest.approx(6 / 8)
    # each table is its own Holm family (a subset where no seed changes has no p, and no adjusted p)
    assert all("p_holm" in c for kind in br.values() for c in kind.values())


def fake_study(root, q, teacher_acc=0.9, kd_gain=0.02, seed=0):
    """The files a trained study leaves (q1_cache and q1_student), with made-up predictions: kd and its kin are
    right on ``kd_gain`` more of the test images than raw."""
    rng = np.random.default_rng(seed)
    n, classes = 400, 10
    labels = rng.integers(0, classes, n)
    digits = lambda a: "".join(map(str, a.tolist()))  # noqa: E731

    def noisy(acc, rs):
        pred = labels.copy()
        wrong = rs.random(n) > acc
        pred[wrong] = (labels[wrong] + 1) % classes
        return pred

    def dump(path, obj):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj))

    for name in q.cached:
        acc = teacher_acc if name == q.teacher else teacher_acc - 0.2
        pred = noisy(acc, rng)
        dump(root / q1.CACHE_METRICS / f"{name}.json", {
            "teacher": name, "val_acc": acc, "test_acc": float((pred == labels).mean()), "train_view_acc": acc,
            "train_clean_acc": acc, "train_views_wrong": 1 - acc, "train_images_wrong": 1 - acc,
            "train_images_any_view_wrong": 1.5 * (1 - acc), "train_views_wrong_clean_right": 0.01})
        dump(root / q1.TESTS / f"teacher.{name}.json", {
            "teacher": name, "test_acc": float((pred == labels).mean()), "pred": digits(pred),
            "labels": digits(labels), "confidence": rng.uniform(0.3, 1.0, n).round(4).tolist()})
    for name, t in q.teachers.items():
        dump(root / q1.METRICS / "teachers" / f"{name}.curve.json",
             {"teacher": name, "val_curve": np.linspace(0.5, teacher_acc, t.epochs).tolist()})
    for variant, teacher, width, epochs in q1_report.expected_runs(q):
        for s in q.seeds:
            rs = np.random.default_rng([seed, s, epochs, int(100 * width)])
            acc = 0.8 + 0.01 * epochs + (kd_gain if variant != "raw" else 0.0) + rs.normal(0, 0.002)
            pred = noisy(acc, rs)
            name = q1.student_name(variant, teacher, width, epochs, s)
            test_acc = float((pred == labels).mean())
            dump(root / q1.METRICS / "students" / f"{name}.json", {"test_acc": test_acc, "params": int(1e4 * width)})
            dump(root / q1.TESTS / f"{name}.json", {
                "variant": variant, "teacher": teacher, "arch": "resnet8", "width": width, "epochs": epochs,
                "seed": s, "test_acc": test_acc, "val_acc": acc, "val_curve": np.linspace(0.5, acc, epochs).tolist(),
                "pred": digits(pred)})


def test_report_from_a_hand_made_study(in_tmp):
    raw = {**SMALL["q1"], "seeds": [0, 1, 2, 3]}
    q = q1.load(_write(in_tmp / "p.yaml", {"q1": raw}))
    p = params.from_dict(shipped_with({}))
    fake_study(in_tmp, q, kd_gain=0.05)
    a = q1_report.run_q1_report(p, q)
    head = json.loads((in_tmp / q1_report.HEADLINE_JSON).read_text())
    # every budget's comparisons, Holm-adjusted over the 2 budgets x 3 comparisons
    assert set(head["budget"]) == {"e1", "e2"}
    assert set(head["budget"]["e2"]) == {"raw", "kd_vs_raw", "kd_correct_only_vs_raw", "kd_correct_only_vs_kd"}
    comps = a["budget"]["comparisons"]
    assert len(comps) == 6
    assert stats.holm({k: c["p"] for k, c in comps.items()}) == {k: c["p_holm"] for k, c in comps.items()}
    # the made-up kd gain of 5 points on 400 images shows, and is worded from the adjusted p
    assert head["budget"]["e2"]["kd_vs_raw"]["gain"] == pytest.approx(5, abs=3)
    assert set(head["capacity"]) == {"w0.25", "w0.5"} and set(head["quality"]) == {"main_e1", "main"}
    assert set(head["controls"]) == {"kd_correct_clean_vs_kd", "kd_correct_clean_vs_raw", "kd_wrong_only_vs_kd",
                                     "kd_wrong_only_vs_raw"}
    report = (in_tmp / q1_report.REPORT_MD).read_text()
    for picture in ("gain_vs_budget.png", "gain_vs_teacher.png", "student_vs_teacher.png", "curves.png"):
        assert f"]({picture})" in report and (in_tmp / "reports/q1" / picture).stat().st_size > 1000
    # accuracy intervals stay within [0, 100]
    for s in (x for e in a["budget"]["acc"].values() for x in e.values()):
        assert 0 <= s["ci_low"] <= s["mean"] <= s["ci_high"] <= 1
    findings = (in_tmp / q1_report.FINDINGS_MD).read_text()
    assert "Does the KD gain survive a converged student?" in findings
    assert "Holm" in findings and "match or beat its teacher" in findings
    analysis = json.loads((in_tmp / q1_report.ANALYSIS_JSON).read_text())
    assert set(analysis["breakdown"]) == {"class", "confidence", "teacher"}
