"""Question 1 in depth (src/kdlab/analysis/q1_design.py, q1_report.py): its params, the paired statistics against hand-computed
values, the per-class / confidence / teacher-right breakdown on hand-made predictions, and the report from a
hand-made study's files. The stages themselves run under `dvc repro studies/q1/dvc.yaml` in tests/test_pipeline.py."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, shipped_with
from kdlab.analysis import q1_design as q1
from kdlab.analysis import q1_report, stats
from kdlab.infra.schema import ParamsError
from kdlab.pipeline import params

#: a small study: two teachers, two budgets, two seeds, three declared families
SMALL = {"q1": {
    "train_images": 100, "val_images": 50, "subset_seed": 0, "seeds": [0, 1],
    "teachers": {"main": {"arch": "resnet8", "width": 0.5, "epochs": 3, "lr": 0.1, "seed": 0},
                 "small": {"arch": "resnet8", "width": 0.25, "epochs": 3, "lr": 0.1, "seed": 0}},
    "teacher": "main", "cached": {"main": "main", "small": "small"}, "student": {"arch": "resnet8", "width": 0.25, "lr": 0.1},
    "budgets": [1, 2], "labels": ["ls"], "methods": ["kd", "kd_correct_only"],
    "quality": ["small"], "quality_epochs": 1, "control_teacher": "small",
    "controls": ["kd_correct_clean", "kd_wrong_only"],
    "families": {"kd_vs_labels": ["kd.main-e2 - raw-e2", "kd.main-e2 - ls-e2", "kd_correct_only.main-e2 - kd.main-e2"],
                 "cap": ["kd.main-e1 - teacher", "kd.small-e1 - teacher"],
                 "controls": ["kd_correct_clean.small-e1 - kd.small-e1", "kd_wrong_only.small-e1 - kd.small-e1"]}}}


def _write(path, raw):
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_the_shipped_study_params_load_and_name_every_arm():
    """The shipped design: every arm once; raw and ls at every budget; born-again (a teacher of the student's
    shape) among the cap's teachers; every declared comparison names arms the study trains."""
    q = q1.load(REPO / "studies/q1/params.yaml")
    arms = q1.students(q)
    assert len(arms) == len(set(arms))
    names = {q1.arm_name(v, t, e) for v, t, _, e in arms}
    assert {q1.arm_name(m, None, e) for m in ("raw", "ls") for e in q.budgets} <= names
    assert any(q.teachers[t].arch == q.student.arch and q.teachers[t].width == q.student.width for t in q.quality)
    assert all(c.split(" - ")[0] in names for fam in q.families.values() for c in fam)
    assert q1.teacher_file("main", q).as_posix() == "models/q1/teachers/main/final.pt"
    assert q1.student_name("kd", "main", 1.0, 15, 2) == "kd.main-w1.0-e15-s2"
    assert q1.student_name("raw", None, 0.5, 2, 0) == "raw-w0.5-e2-s0"
    assert (q1.arm_teacher("kd_online.main-e30"), q1.arm_teacher("ls-e40")) == ("main", None)
    # the longer budgets: raw at each, the long arms at the last alone, and none of the other methods there
    last = q.long.epochs
    assert last == q.long.budgets[-1] and q.long.budgets[0] > q.budgets[-1]
    assert {q1.arm_name("raw", None, e) for e in q.long.budgets} <= names
    assert {a for a in names if a.endswith(f"-e{last}")} == (
        {q1.arm_name(m, None, last) for m in ("raw", *q.long.labels)}
        | {q1.arm_name(v, q.teacher, last) for v in q.long.methods})


@pytest.mark.parametrize("change, key", [
    ({"cached": {"main": "main", "main_e2": "main"}}, "q1.cached"),   # no such snapshot
    ({"cached": {"main": "main", "small": "main"}}, "q1.cached.small"),   # not its run
    ({"quality": ["main"]}, "q1.quality"),                     # the teacher's arms are the budget arms
    ({"controls": ["no_such_method"]}, "q1.controls"),
    ({"labels": ["raw"]}, "q1.labels"),                        # the baseline, at every budget already
    ({"labels": ["kd"]}, "q1.labels"),                         # reads a teacher
    ({"labels": ["ls", "ls"]}, "q1.labels"),
    ({"families": {"x": ["kd.main-e3 - raw-e2"]}}, "q1.families.x"),    # no such arm (budget)
    ({"families": {"x": ["kd.main-e2 minus raw-e2"]}}, "q1.families.x"),
    ({"families": {"x": ["raw-e2 - teacher"]}}, "q1.families.x"),       # raw has no teacher
    ({"families": {"x": ["raw-e2 - raw-e2"]}}, "q1.families.x"),
    ({"families": {"x": []}}, "q1.families.x"),
    ({"effect": 0}, "q1.effect"),
    ({"collapse": -1}, "q1.collapse"),
    # issue 31, item 3: a named study's params checked like the root's, one line naming the key
    ({"budgets": [1, 1, 2]}, "q1.budgets"),
    # the longer budgets (q1.long): longer than q1.budgets, its arms at the last, from the study's own lists
    ({"long": {"budgets": [2, 3], "epochs": 3, "labels": ["ls"], "methods": []}}, "q1.long.budgets"),
    ({"long": {"budgets": [4, 3], "epochs": 4, "labels": [], "methods": ["kd"]}}, "q1.long.budgets"),
    ({"long": {"budgets": [3, 4], "epochs": 3, "labels": ["ls"], "methods": []}}, "q1.long.epochs"),
    ({"long": {"budgets": [], "epochs": 4, "labels": [], "methods": ["kd"]}}, "q1.long.epochs"),
    ({"long": {"budgets": [3, 4], "epochs": 4, "labels": ["ls"], "methods": ["kd_online"]}}, "q1.long.methods"),
    ({"long": {"budgets": [3, 4], "epochs": 4, "labels": ["ls", "ls"], "methods": []}}, "q1.long.labels"),
    ({"methods": ["kd", "kd"]}, "q1.methods"),
    ({"methods": ["raw"]}, "q1.methods"),                    # raw is the baseline at every budget already
    ({"controls": ["kd_correct_clean", "kd_correct_clean"]}, "q1.controls"),
    ({"seeds": [0, -1]}, r"q1.seeds\[1\]"),
    ({"teachers": {**SMALL["q1"]["teachers"], "main": {**SMALL["q1"]["teachers"]["main"], "lr": 0}}}, "q1.teachers.main.lr"),
    ({"teachers": {**SMALL["q1"]["teachers"], "main": {**SMALL["q1"]["teachers"]["main"], "lr": -0.1}}}, "q1.teachers.main.lr"),
    ({"teachers": {**SMALL["q1"]["teachers"], "main": {**SMALL["q1"]["teachers"]["main"], "seed": 2 ** 64}}},
     "q1.teachers.main.seed"),
    ({"teachers": {**SMALL["q1"]["teachers"], "main": {**SMALL["q1"]["teachers"]["main"], "arch": "resnet18"}}},
     "q1.teachers.main.width"),
    ({"teachers": {**SMALL["q1"]["teachers"], "main": {**SMALL["q1"]["teachers"]["main"], "train_images": -5}}},
     "q1.teachers.main.train_images"),
    ({"student": {"arch": "resnet8", "width": 0.25, "lr": 0}}, "q1.student.lr"),
])
def test_bad_study_params_are_refused_naming_the_key(tmp_path, change, key):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        q1.load(_write(tmp_path / "p.yaml", {"q1": {**SMALL["q1"], **change}}))


def test_a_recipe_a_teacher_on_more_data_and_an_online_teacher_reach_the_run_specs(tmp_path):
    """q1.recipe sets train.* and cache.views of every run (its lr is every run's); a teacher may train on its
    own, larger subset; kd_online reads the teacher model (its architecture checked), not a cache."""
    recipe = {"lr": 0.1, "schedule": "cosine", "warmup": 0.05, "batch_size": 50, "ema": 0.9, "views": "all"}
    ls = q1.runs(params.from_dict(shipped_with({})), q1.load(_write(tmp_path / "p.yaml", SMALL)))["students/ls-w0.25-e2-s1"]()
    assert ls.method == "ls" and ls.teacher is None and ls.cache is None
    teachers = {**SMALL["q1"]["teachers"], "main": {**SMALL["q1"]["teachers"]["main"], "train_images": 300}}
    q = q1.load(_write(tmp_path / "p.yaml", {"q1": {**SMALL["q1"], "recipe": recipe, "teachers": teachers,
                                                    "methods": ["kd", "kd_online"], "families": {}}}))
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


def _frame(preds: dict, labels: np.ndarray, val: dict | None = None) -> pd.DataFrame:
    rows = [{"arm": arm, "seed": s, "test_acc": float((p == labels).mean()), "pred": p,
             "val_acc": (val or {}).get((arm, s), 0.9), "collapsed": (val or {}).get((arm, s), 0.9) < 0.5}
            for (arm, s), p in preds.items()]
    return pd.DataFrame(rows)


def test_inherited_errors_collapse_and_the_cap_on_hand_made_predictions(tmp_path):
    """Ten test images. Teacher main is wrong on images 8 and 9. Every number below is counted by hand: a
    student's agreement with the teacher, its accuracy where the teacher is right and wrong; a run below
    q1.collapse is left out of its arm's pairs and counted; the cap is the student minus its teacher."""
    q = q1.load(_write(tmp_path / "p.yaml", SMALL))
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    teachers = {"main": {"labels": labels, "pred": np.array([0, 0, 0, 0, 0, 1, 1, 1, 0, 0]), "test_acc": 0.8},
                "small": {"labels": labels, "pred": labels.copy(), "test_acc": 1.0}}
    raw = np.array([0, 0, 0, 1, 1, 1, 1, 1, 0, 0])   # = teacher on 8 of 10; right 6 of the teacher's right 8
    kd0 = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0, 0])   # seed 0: agrees on 9; right on 7 of 8, 0 of 2
    kd1 = np.array([0, 0, 0, 0, 0, 1, 1, 1, 0, 1])   # seed 1: agrees on 9; right on 8 of 8, 1 of 2
    kd2 = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])   # seed 2: collapsed (validation 0.3)
    preds = {("raw-e1", 0): raw, ("raw-e1", 1): raw, ("raw-e1", 2): raw,
             ("kd.main-e1", 0): kd0, ("kd.main-e1", 1): kd1, ("kd.main-e1", 2): kd2}
    df = _frame(preds, labels, {("kd.main-e1", 2): 0.3})
    inh = q1_report.inherited(q, df, teachers)
    assert inh["raw-e1"]["teacher"] == "main" and inh["raw-e1"]["teacher_wrong"] == 2
    assert inh["raw-e1"]["agreement"]["mean"] == pytest.approx(0.8)
    assert inh["raw-e1"]["teacher_right"]["mean"] == pytest.approx(6 / 8)
    assert inh["kd.main-e1"]["agreement"]["mean"] == pytest.approx(0.9) and inh["kd.main-e1"]["agreement"]["n"] == 2
    assert inh["kd.main-e1"]["teacher_right"]["mean"] == pytest.approx((7 / 8 + 1) / 2)
    assert inh["kd.main-e1"]["teacher_wrong_acc"]["mean"] == pytest.approx(0.25)
    rows = q1_report.arm_rows(q, df)
    assert (rows["kd.main-e1"]["collapsed"], rows["kd.main-e1"]["runs"], rows["raw-e1"]["collapsed"]) == (1, 3, 0)
    c = q1_report.compare(df, teachers, "kd.main-e1 - raw-e1")  # seeds 0 and 1: gains 0.1 and 0.3
    assert (c["n"], c["diff"]) == (2, pytest.approx(0.2))
    cap = q1_report.compare(df, teachers, "kd.main-e1 - teacher")  # 0.7 and 0.9 against the teacher's 0.8
    assert (cap["n"], cap["diff"], cap["b"]) == (2, pytest.approx(0.0, abs=1e-12), "teacher")
    assert (cap["ci_low"], cap["ci_high"]) == pytest.approx((-0.1 * 12.7062, 0.1 * 12.7062), rel=1e-4)  # t(1)


def fake_study(root, q, teacher_acc=0.9, kd_gain=0.02, seed=0):
    """The files a trained study and its pilot leave, with made-up predictions: the students reading a teacher are
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

    from kdlab.pipeline.spec import record

    runs = q1.runs(params.from_dict({}), q)
    spec = lambda run: record(runs[run]())  # noqa: E731  (a metrics file carries its run's spec)

    dump(root / q1_report.PILOT_JSON, {"adopted": "r", "power": {"sd": 0.4}})
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
        dump(root / q1.METRICS / "teachers" / f"{name}.json", {"test_acc": teacher_acc, "val_acc": teacher_acc,
                                                              "wall_seconds": 600.0, "spec": spec(f"teachers/{name}")})
    for method, teacher, width, epochs in q1.students(q):
        for s in q.seeds:
            rs = np.random.default_rng([seed, s, epochs, int(100 * width)])
            acc = 0.8 + 0.01 * epochs + (kd_gain if teacher else 0.0) + rs.normal(0, 0.002)
            pred = noisy(acc, rs)
            name = q1.student_name(method, teacher, width, epochs, s)
            test_acc = float((pred == labels).mean())
            dump(root / q1.METRICS / "students" / f"{name}.json", {
                "test_acc": test_acc, "val_acc": acc, "epochs": epochs, "params": int(1e4 * width),
                "wall_seconds": 30.0 * epochs, "spec": spec(f"students/{name}")})
            dump(root / q1.TESTS / f"{name}.json", {
                "method": method, "teacher": teacher, "arch": "resnet8", "width": width, "epochs": epochs,
                "seed": s, "test_acc": test_acc, "val_acc": acc, "val_curve": np.linspace(0.5, acc, epochs).tolist(),
                "pred": digits(pred)})


def test_report_from_a_hand_made_study(in_tmp):
    """Every declared family Holm-adjusted over exactly its comparisons and worded with a verdict; the seeds the
    pilot's SD asks for per family; the plateau rule; the inherited errors; pictures, findings and headline."""
    raw = {**SMALL["q1"], "seeds": [0, 1, 2, 3],
           "long": {"budgets": [3, 5], "epochs": 5, "labels": ["ls"], "methods": ["kd"]}}
    q = q1.load(_write(in_tmp / "p.yaml", {"q1": raw}))
    p = params.from_dict(shipped_with({}))
    fake_study(in_tmp, q, kd_gain=0.05)
    a = q1_report.run_q1_report(p, q)
    head = json.loads((in_tmp / q1_report.HEADLINE_JSON).read_text())
    assert set(a["families"]) == set(head) - {"teacher_acc", "raw_val_gain"} == set(q.families)
    assert head["teacher_acc"] == {t: round(100 * r["test_acc"], 2) for t, r in a["teachers"].items()}
    for name, comparisons in q.families.items():
        fam = a["families"][name]
        assert list(fam) == comparisons
        assert stats.holm({k: c["p"] for k, c in fam.items()}) == {k: c["p_holm"] for k, c in fam.items()}
        assert all(c["verdict"] in ("above", "below", "equivalent", "inconclusive") for c in fam.values())
    # the made-up kd gain of 5 points on 400 images shows, and is worded from the adjusted p
    assert head["kd_vs_labels"]["kd.main-e2-raw-e2"] == pytest.approx(5, abs=3)
    assert a["families"]["kd_vs_labels"]["kd.main-e2 - raw-e2"]["verdict"] == "above"
    assert a["families"]["kd_vs_labels"]["kd.main-e2 - raw-e2"]["margin"] == pytest.approx(q.effect / 100)
    # seeds from the pilot's SD (0.4 points) for each family's Holm level, and what the 4 seeds detect
    pw = a["power"]["families"]
    assert pw["kd_vs_labels"]["needed"] == stats.seeds_for(0.4, q.effect, 0.05 / 3, 0.8)
    assert pw["cap"]["detectable"] == pytest.approx(stats.detectable(0.4, 4, 0.05 / 2, 0.8))
    # the plateau rule at the last two of q1.budgets and of q1.long.budgets: the made-up raw gains a point an epoch
    checks = a["plateau"]["checks"]
    assert [(c["from"], c["to"]) for c in checks] == [(1, 2), (3, 5)]
    for c in checks:
        v = a["arms"][f"raw-e{c['to']}"]["val"] - a["arms"][f"raw-e{c['from']}"]["val"]
        assert c["gain"] == pytest.approx(v) and c["gain"] == pytest.approx(0.01 * (c["to"] - c["from"]), abs=0.005)
        assert c["plateaued"] is False
    assert head["raw_val_gain"] == {"1-2": round(100 * checks[0]["gain"], 2), "3-5": round(100 * checks[1]["gain"], 2)}
    assert set(a["arms"]) >= {"raw-e3", "raw-e5", "ls-e5", "kd.main-e5"} and "ls-e3" not in a["arms"]
    # the wall time the runs recorded: every student, each teacher run once
    runs = [(e, 4) for *_, e in q1.students(q)]
    assert a["compute"] == {"students": sum(30.0 * e * n for e, n in runs), "teachers": 1200.0,
                            "student_runs": 4 * len(runs), "teacher_runs": 2}
    assert set(a["inherited"]) == {q1.arm_name(v, t, e) for v, t, _, e in q1.students(q)}
    report = (in_tmp / q1_report.REPORT_MD).read_text()
    for picture in ("arms.png", "student_vs_teacher.png", "curves.png"):
        assert f"]({picture})" in report and (in_tmp / "reports/q1" / picture).stat().st_size > 1000
    assert "## Inherited errors" in report
    assert "from 1 to 2 epochs" in report and "from 3 to 5 epochs" in report and "(not plateaued)" in report
    hours = round((a["compute"]["students"] + 1200) / 60)
    assert f"Compute: {hours // 60} h {hours % 60} min of training wall time" in report
    for s in (r["test"] for r in a["arms"].values()):
        assert 0 <= s["ci_low"] <= s["mean"] <= s["ci_high"] <= 1
    findings = (in_tmp / q1_report.FINDINGS_MD).read_text()
    assert "Does KD cap the student at its teacher?" in findings and "Holm" in findings and "**above**" in findings
