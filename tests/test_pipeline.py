"""End to end: the real dvc.yaml in a temp git repo on tiny synthetic data, with a real MLflow store. The study
is reproduced once per session (``studied``); the experiment and queue tests work on copies of it."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, shipped_with, tiny

sys.path.insert(0, str(REPO / "scripts"))
import stage_deps  # noqa: E402

TINY = tiny({
    "data": {"synthetic": {"n_train": 400}},
    "views": {"flip": True},
    # 8 epochs of 6 steps: the teacher learns the 3 classes (test 0.99 in fp32 and bf16 on an AVX512-BF16 EPYC);
    # at 2 epochs it was at 0.50-0.54, where the above-chance bound below failed on that CPU
    "teacher": {"epochs": 8, "lr": 0.1},
    "student": {"lr": 0.1},
    "train": {"batch_size": 64},
    "cache": {"views": 3},
    "study": {"seeds": [0, 1]},   # two seeds: the paired comparisons get an interval and a verdict
})
STUDENTS = {f"{v}-{s}" for v in ("raw", "kd", "kd_correct_only") for s in (0, 1)}
PROBE = Path(__file__).resolve().parent / "probe"

# one fixture (the reproduced study) for all: the whole module runs in one xdist worker
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("e2e")]


def _run(cmd, cwd, env):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return res.stdout + res.stderr


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def _env(root: Path) -> dict:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t", PYTHONPATH=f"{root / 'src'}{os.pathsep}{PROBE}",
               KDLAB_IMPORTS_LOG=str(root.parent / "imports.jsonl"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DVC_ROOT", None)
    return env


@pytest.fixture(scope="session")
def studied(tmp_path_factory):
    """The tiny study in a git + DVC repo, reproduced once: (root, env, dvc repro's output). Session-scoped:
    a worker that runs other modules' tests between this module's would tear a module fixture down and
    reproduce the study again (seen: twice 300 s)."""
    root = tmp_path_factory.mktemp("e2e") / "study"
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for f in ("dvc.yaml", "pyproject.toml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / f, root / f)
    shutil.copytree(REPO / "web/templates", root / "web/templates")  # the plots' vega-lite templates
    (root / "params.yaml").write_text(yaml.safe_dump(shipped_with(TINY), sort_keys=False))
    env = _env(root)
    _run(["git", "init", "-q", "-b", "main"], root, env)
    _run(["dvc", "init", "-q"], root, env)
    _run(["dvc", "config", "core.autostage", "true"], root, env)
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "tiny study"], root, env)
    return root, env, _run(["dvc", "repro"], root, env)


@pytest.fixture
def repo(studied, tmp_path):
    """A copy of the reproduced study (its MLflow store moves with it), results committed."""
    root = tmp_path / "study"
    shutil.copytree(studied[0], root, symlinks=True)
    env = _env(root)
    env.pop("KDLAB_IMPORTS_LOG")  # so the stages run through kdlab's warm server (kdlab.warm; the suite opts in, conftest)
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "baseline results"], root, env)
    return root, env


def test_repro_runs_every_stage_into_metrics_report_and_mlflow(studied):
    root, env, out = studied
    assert _ran(out) == {"check", "prepare", "teacher", "cache", "evaluate", "report",
                         *(f"baseline@{r}" for r in STUDENTS if r.startswith("raw")),
                         *(f"student@{r}" for r in STUDENTS if not r.startswith("raw"))}
    for name in STUDENTS:
        m = json.loads((root / f"metrics/students/{name}.json").read_text())
        assert 0 <= m["test_acc"] <= 1 and m["epochs"] == 1 and m["best_epoch"] == 1
        # the file says which run it measures: the spec kdlab train ran
        method, seed = name.rsplit("-", 1)
        assert {k: m["spec"][k] for k in ("name", "role", "method", "seed", "init", "model_file", "epochs")} == {
            "name": name, "role": "student", "method": method, "seed": int(seed), "init": "random",
            "model_file": f"models/students/{name}.pt", "epochs": 1}, m["spec"]
    teacher = json.loads((root / "metrics/teacher.json").read_text())
    assert teacher["test_acc"] > 0.5, teacher  # 3 separable classes: far above chance (1/3)
    summary = json.loads((root / "metrics/summary.json").read_text())
    assert set(summary["methods"]) == {"raw", "kd", "kd_correct_only"}
    assert summary["methods"]["kd"]["test_acc"]["n"] == 2
    assert "Distilled (kd)" in (root / "metrics/summary.md").read_text()
    report = (root / "reports/report.md").read_text()
    assert "KD alpha 0.5," in report and "| Distilled (kd) | resnet8 |" in report
    assert (root / "predictions/kd-0.pt").exists() and (root / "plots/curves/teacher.json").exists()
    plots = _run(["dvc", "plots", "show", "--json"], root, env)
    assert "plots/learning_curves.json" in plots and "plots/accuracy.json" in plots
    assert "failed to load" not in plots.lower()
    curves = json.loads((root / "plots/learning_curves.json").read_text())
    assert {r["run"] for r in curves} == STUDENTS and {r["epoch"] for r in curves} == {1}

    # the headline DVC metrics and the tidy table of every run; the findings give each comparison its verdict
    headline = json.loads((root / "metrics/headline.json").read_text())
    assert set(headline) == {"teacher", "raw", "kd", "kd_correct_only", "q1"}
    assert headline["kd"]["acc"] == round(100 * summary["methods"]["kd"]["test_acc"]["mean"], 2)
    assert set(headline["q1"]) == {"kd_vs_raw", "kd_correct_only_vs_raw", "kd_correct_only_vs_kd"}
    found = (root / "reports/findings.md").read_text()
    # (a tiny arm can equal another on every seed: no spread, so that comparison says it is not testable)
    worded = r"Holm p (< )?[0-9.]+: \*\*(above|below|equivalent within|inconclusive)|same difference on every seed: not testable"
    assert len(re.findall(worded, found)) == 3, found
    import pandas as pd

    df = pd.read_csv(root / "reports/results.csv")
    assert df.groupby("question").size().to_dict() == {1: 1 + len(STUDENTS)}
    assert set(df.run) == {"teacher"} | STUDENTS
    kd_runs = df.set_index("run").loc[["kd-0", "kd-1"], "test_acc"]
    # the CSV in percent, as the reports give it (rounded to 0.01 points)
    assert kd_runs.mean() == pytest.approx(100 * summary["methods"]["kd"]["test_acc"]["mean"], abs=0.01)

    # MLflow: one study parent with teacher, students and evaluate as children, in the repo's sqlite store
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("kdlab")
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    runs = client.search_runs([exp.experiment_id])
    by_role = {}
    for r in runs:
        by_role.setdefault(r.data.tags["kdlab.role"], []).append(r)
    assert len(by_role["study"]) == 1
    parent = by_role["study"][0].info.run_id
    assert {r.info.run_name for r in by_role["student"]} == STUDENTS
    assert set(by_role) == {"study", "teacher", "student", "evaluate", "report"}, set(by_role)
    for r in by_role["student"] + by_role["teacher"] + by_role["evaluate"]:
        assert r.data.tags["mlflow.parentRunId"] == parent
        assert r.info.status == "FINISHED"
    # the parent: named after the study, RUNNING no longer, its duration its children's, the headline numbers
    study = by_role["study"][0]
    children = [r for r in runs if r.info.run_id != parent]
    assert study.info.run_name.startswith("synthetic resnet8->resnet8 alpha 0.5 T 4.0 (")
    assert study.info.status == "FINISHED" and study.info.end_time == max(r.info.end_time for r in children)
    assert study.info.end_time - study.info.start_time >= 1000 * 10  # the whole study, not the parent's creation
    assert study.data.metrics["kd.acc"] == headline["kd"]["acc"] and "q1.kd_vs_raw.gain" in study.data.metrics
    assert "kdlab study" in study.data.tags["mlflow.note.content"]
    # the report as one HTML page with its pictures inlined (MLflow's artifact viewer shows it), on the parent too
    assert {a.path for a in client.list_artifacts(parent)} == {"report.html"}
    report_run = by_role["report"][0].info.run_id
    assert {a.path for a in client.list_artifacts(report_run)} == {"report.html", "report.md", "pictures"}
    page = Path(client.download_artifacts(report_run, "report.html", str(root.parent / "dl"))).read_text()
    assert page.count('src="data:image/png;base64,') == 3 and "<table>" in page
    # MLflow's conventions on every training run: commit, description, datasets; metadata as tags, not metrics;
    # one metrics.json under the same name in each; the per-step loss; a model for the teacher and question 1
    commit = _run(["git", "rev-parse", "HEAD"], root, env).strip()
    models = {m.source_run_id for m in client.search_logged_models(experiment_ids=[exp.experiment_id])}
    for r in by_role["student"] + by_role["teacher"]:
        tags, name = r.data.tags, r.info.run_name
        assert tags["mlflow.source.git.commit"] == commit and tags["mlflow.note.content"].startswith(
            ("Student `", "Teacher `")), name
        assert "dvc.exp_name" not in tags and tags["best_epoch"].isdigit() and int(tags["model_params"]) > 0, name
        assert not {"best_epoch", "epochs", "params"} & set(r.data.metrics), name
        assert {d.dataset.name: d.tags[0].value for d in r.inputs.dataset_inputs} == {
            "synthetic-train": "training", "synthetic-val": "validation", "synthetic-test": "testing"}, name
        assert [a.path for a in client.list_artifacts(r.info.run_id)] == ["metrics.json"], name
        assert len(client.get_metric_history(r.info.run_id, "train_loss")) > 1, name
        assert r.info.run_id in models, name  # a model for the teacher and every student
    # the best student on validation (never test) is registered, and the test-split fidelity is in its row
    # (tiny students can tie on validation: the one registered is one of the best, the only version)
    val = {n: json.loads((root / f"metrics/students/{n}.json").read_text())["val_acc"] for n in STUDENTS}
    best = {n for n, v in val.items() if v == max(val.values())}
    versions = client.search_model_versions("name = 'kdlab-synthetic-resnet8'")
    assert len(versions) == 1 and next(r.info.run_name for r in runs if r.info.run_id == versions[0].run_id) in best
    assert all("agreement" in r.data.metrics for r in by_role["student"] if r.info.run_name in ("raw-0", "kd-0"))
    kd_run = next(r for r in by_role["student"] if r.info.run_name == "kd-0")
    assert {"loss/ce", "loss/kd", "val_acc", "test_acc"} <= set(kd_run.data.metrics)
    assert kd_run.data.params["loss.alpha"] == "0.5"
    assert kd_run.data.tags["dvc.stage"] == "student@kd-0"
    curve = client.get_metric_history(by_role["teacher"][0].info.run_id, "val_acc")
    assert sorted(m.step for m in curve) == list(range(1, TINY["teacher"]["epochs"] + 1))
    assert by_role["teacher"][0].data.metrics["best_val_acc"] == max(m.value for m in curve)



def test_stages_list_every_source_file_they_run(studied):
    """Each stage's src/ deps in dvc.yaml are exactly the kdlab files its process imported (recorded by
    tests/probe): none missing, none extra, the launcher (kdlab.warm, kdlab.warm_server) not among them."""
    root, _, _ = studied
    records = stage_deps.read_records([root.parent / "imports.jsonl"], root)
    assert {r["stage"] for r in records} >= {"check", "prepare", "teacher", "cache", "baseline", "student",
                                             "evaluate", "report"}, records
    _assert_exact_deps((REPO / "dvc.yaml").read_text(), "dvc.yaml", records)


def _assert_exact_deps(text: str, pipeline: str, records: list[dict]) -> None:
    res = stage_deps.check(text, pipeline, records)
    assert not res["missing"], f"stages run src/ files their deps do not list: {res['missing']}"
    assert not res["extra"], f"stages list src/ files they never import (or the launcher): {res['extra']}"
    assert not res["unrun"], f"no stage of {res['unrun']} ran: their deps are not checked"
    assert not any(f in text for f in stage_deps.LAUNCHER)


#: question 1 in depth at its smallest: one seed, one budget, a teacher with one snapshot, one control
def _run_named_study(root: Path, env: dict, tmp_path: Path, name: str, params: dict, stages: set[str]) -> None:
    """studies/<name>/dvc.yaml (this checkout's, not its lock) with ``params`` on the default study's prepared data:
    the default `dvc repro` runs none of it; its own repro runs exactly ``stages``, and every src/ file a stage
    imported (the KDLAB_IMPORTS_LOG file) is one its deps list."""
    dvc_yaml = REPO / f"studies/{name}/dvc.yaml"
    (root / f"studies/{name}").mkdir(parents=True)
    shutil.copy(dvc_yaml, root / f"studies/{name}/dvc.yaml")
    (root / f"studies/{name}/params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert not _ran(_run(["dvc", "repro"], root, env))
    imports = tmp_path / f"{name}_imports.jsonl"
    out = _run(["dvc", "repro", f"studies/{name}/dvc.yaml"], root, dict(env, KDLAB_IMPORTS_LOG=str(imports)))
    assert _ran(out) == {f"studies/{name}/dvc.yaml:{s}" for s in stages}, out[-3000:]
    records = stage_deps.read_records([imports], root)
    assert len(records) == len(stages)
    _assert_exact_deps(dvc_yaml.read_text(), f"studies/{name}/dvc.yaml", records)


Q1_TINY = {"q1": {
    "train_images": 200, "val_images": 60, "subset_seed": 0, "seeds": [0],
    "recipe": {"lr": 0.1, "schedule": "cosine", "warmup": 0.1, "batch_size": 50, "ema": 0.9, "views": 3, "compile": False},
    "teachers": {"main": {"arch": "resnet8", "width": 0.5, "epochs": 2, "lr": 0.1, "seed": 0},
                 "small": {"arch": "resnet8", "width": 0.25, "epochs": 1, "lr": 0.1, "seed": 0, "train_images": 300}},
    "teacher": "main", "cached": {"main": "main", "small": "small"}, "student": {"arch": "resnet8", "width": 0.25, "lr": 0.1},
    "budgets": [1], "labels": ["ls"], "methods": ["kd", "kd_online"], "quality": ["small"], "quality_epochs": 1,
    "long": {"budgets": [2], "epochs": 2, "labels": ["ls"], "methods": ["kd"]},
    "control_teacher": "small", "controls": ["kd_correct_clean"],
    "families": {"kd_vs_labels": ["kd.main-e1 - raw-e1", "kd.main-e1 - ls-e1"], "cap": ["kd.small-e1 - teacher"],
                 "kd_vs_labels_long": ["kd.main-e2 - raw-e2"]},
    "collapse": 1.0,  # the tiny runs reach 20-40% on validation: none of them has collapsed
    "pilot": {"teacher": {"arch": "resnet8", "width": 0.5, "seed": 0}, "student": {"arch": "resnet8", "width": 0.25},
              "seeds": [0, 1], "epochs": 2, "arms": ["raw", "kd"], "val_images": 60, "max_sd": 50.0, "max_drop": 100.0,
              "effect": 0.5, "recipes": {
                  "a": {"lr": 0.1, "schedule": "cosine", "warmup": 0.1, "batch_size": 50, "ema": 0.0, "views": 3, "compile": False},
                  "b": {"lr": 0.05, "schedule": "onecycle", "warmup": 0.2, "batch_size": 64, "ema": 0.9, "views": "all", "compile": False}}}}}
Q1_STAGES = {"q1_pilot", "q1_teacher@main", "q1_teacher@small", "q1_cache@main", "q1_cache@small", "q1_raw@1-0",
             "q1_labels@ls-1-0", "q1_kd@kd-1-0", "q1_kd@kd_online-1-0", "q1_quality@small-0",
             "q1_controls@kd_correct_clean-0", "q1_long_raw@2-0", "q1_long_labels@ls-0", "q1_long_kd@kd-0",
             "q1_report"}


def test_question_1_in_depth_is_its_own_pipeline(repo, tmp_path):
    """studies/q1/dvc.yaml on the default study's prepared data: `dvc repro` (the default) never runs it;
    `dvc repro studies/q1/dvc.yaml` runs every stage of it and none of the default's, each stage listing the src/
    files it ran; its report, headline metrics and MLflow study come out, and a second repro has nothing to do."""
    root, env = repo
    _run_named_study(root, env, tmp_path, "q1", Q1_TINY, Q1_STAGES)
    head = json.loads((root / "metrics/q1/headline.json").read_text())
    assert {"teacher_acc", "kd_vs_labels", "cap"} <= set(head)  # one value a comparison; the arms in analysis.json
    assert all(isinstance(v, (int, float)) for fam in head.values() for v in fam.values())
    arms = json.loads((root / "metrics/q1/analysis.json").read_text())["arms"]
    assert {a for a, r in arms.items() if r["test"]} == {"raw-e1", "ls-e1", "kd.main-e1", "kd_online.main-e1",
                                                         "kd.small-e1", "kd_correct_clean.small-e1", "raw-e2", "ls-e2",
                                                         "kd.main-e2"}
    cache = json.loads((root / "metrics/q1/caches/small.json").read_text())
    assert 0 <= cache["train_views_wrong"] <= 1 and 0 <= cache["train_images_wrong"] <= 1
    report = (root / "reports/q1/report.md").read_text()
    assert "## Inherited errors" in report and "kd_correct_clean.small-e1" in report
    assert "Does KD cap the student at its teacher?" in (root / "reports/q1/findings.md").read_text()
    shown = json.loads(_run(["dvc", "metrics", "show", "--json"], root, env))
    assert any("metrics/q1/headline.json" in str(v) for v in shown.values()), shown
    assert not _ran(_run(["dvc", "repro", "studies/q1/dvc.yaml"], root, env))
    # the recipe pilot: every run's curve, measured on validation and never tested; the table, the rule's pick
    pilot = json.loads((root / "metrics/q1/pilot.json").read_text())
    assert set(pilot["recipes"]) == {"a", "b"} and pilot["adopted"] in ("a", "b")  # the tiny rule admits both
    for name, r in pilot["recipes"].items():
        assert r["steps"] == 2 * 4 and set(r["arms"]) == {"raw", "kd"}  # 200 images: 4 batches of 50 or 64
        assert r["arms"]["kd"]["n"] == 2 and r["arms"]["kd"]["paired_sd_vs_raw"] is not None
    runs_b = sorted((root / "metrics/q1/pilot/b").glob("*.json"))
    assert len(runs_b) == 2 * (1 + 2 * 2)  # teacher and 2 x 2 students: metrics and curve each
    assert all("test_acc" not in json.loads(f.read_text()) for f in runs_b)
    assert json.loads((root / "metrics/q1/pilot/b/kd-s1.json").read_text())["spec"]["overrides"]["train"][
        "batch_size"] == 64  # the recipe the run trained with, in its spec
    # `kdlab results` lists the study's runs, each named by the spec its metrics file carries
    listed = _run(["kdlab", "results", "-o", str(tmp_path / "all.csv")], root, env)
    import pandas as pd

    df = pd.read_csv(tmp_path / "all.csv").set_index("run")
    q1_rows = df[df.index.str.startswith("q1/")]
    assert len(q1_rows) == 11 and "q1/teacher.main" in q1_rows.index, listed
    kd = q1_rows.loc["q1/kd.main-w0.25-e1-s0"]
    assert (kd.arm, kd.method, kd.question, kd.teacher) == ("kd.main-e1", "kd", 1, "models/q1/teachers/main/final.pt")
    assert pilot["power"]["seeds_needed"]["0.5"]["1"] >= 2
    assert "| `b` | 0.05 | onecycle (0.2) | 64 | 0.9 | all |" in (root / "reports/q1/pilot.md").read_text()
    # its runs form their own MLflow study (the q1 params are part of the key), apart from the default study's
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("kdlab").experiment_id], max_results=500)
    q1_runs = [r for r in runs if "q1.budgets" in r.data.params]
    parents = {r.data.tags.get("mlflow.parentRunId") for r in q1_runs if r.data.tags.get("kdlab.role") != "study"}
    # 11 training runs (2 teachers, 9 students) and the report's, under one parent: the caches log no run
    assert len(parents) == 1 and len(q1_runs) == 11 + 1 + 1, [r.info.run_name for r in q1_runs]


Q23_TINY = {"q23": {
    "train_images": 200, "val_images": 60, "subset_seed": 0,
    "recipe": {"lr": 0.1, "schedule": "cosine", "warmup": 0.1, "batch_size": 100, "ema": 0.0, "views": 4, "compile": False},
    "seeds": [0], "curve_seeds": [0, 1],
    "teachers": {"a": {"arch": "resnet14", "width": 0.25, "epochs": 2, "lr": 0.1, "seed": 0},
                 "b": {"arch": "resnet14", "width": 0.25, "epochs": 2, "lr": 0.1, "seed": 1}},
    "teacher": "a", "reference": "b", "student": {"arch": "resnet8", "width": 0.25, "lr": 0.1}, "epochs": 2,
    "arms": {"raw": {"method": "raw"}, "kd": {"method": "kd"}, "fitnet": {"method": "fitnet", "options": {"kd": True}},
             "top_k": {"method": "fitnet_select", "options": {"select": "top", "k": 0.25, "importance": "loss"}},
             "random_k": {"method": "fitnet_select", "options": {"select": "random", "k": 0.25}}},
    "transfer": ["raw", "kd", "fitnet"], "selective": ["top_k", "random_k"], "carved": ["kd", "raw"],
    "keep": [[0], [0], [0]],
    "prune": {"sizes": [1.5], "criteria_size": 1.5, "criteria": ["l1", "random"], "small": 0.95, "iterative": "l1",
              "steps": 2, "finetune_steps": 2, "calibration_images": 32, "recalibration_images": 100,
              "max_ratio": 0.95},
    "matched": {"carved": 4, "pruned": 5},  # 2 teacher epochs (+ 2 KD steps between 2 pruning steps: 1 epoch) + 2
    "effect": 0.5, "collapse": {"below_median": 10.0, "floor": 0.0},  # the tiny runs reach 20-40%: none collapses
    "families": {"vs_labels": ["kd.random-e2 - raw.random-e2", "fitnet.random-e2 - raw.random-e2"],
                 "weights": ["kd.carved-e2 - kd.random-e2", "kd.carved-e2 - kd.random-e4"],
                 "selective": ["top_k.random-e2 - random_k.random-e2"],
                 "criteria": ["kd.pruned-l1-x1.5-e2 - kd.pruned-random-x1.5-e2"],
                 "curve": ["kd.pruned-l1-it-x1.5-e2 - kd.shape-l1-it-x1.5-e5",
                           "kd.shape-l1-it-x1.5-e5 - raw.shape-l1-it-x1.5-e5"]},
    "cka_images": 40, "calibration_images": 32}}
Q23_STAGES = {"q23_teacher@a", "q23_teacher@b", "q23_cache", "q23_prune",
              *(f"q23_transfer@{a}-0" for a in ("raw", "kd", "fitnet")), "q23_selective@top_k-0", "q23_selective@random_k-0",
              "q23_carved@kd-0", "q23_carved@raw-0", "q23_matched@kd-0", "q23_matched@raw-0", "q23_criteria@l1-0",
              "q23_criteria@random-0", *(f"q23_curve@1.5-{s}" for s in (0, 1)),
              *(f"q23_curve_shape@{a}-1.5-{s}" for a in ("kd", "raw") for s in (0, 1)), "q23_shape@0", "q23_shape@1",
              "q23_cka", "q23_report"}


def test_questions_2_and_3_with_controls_are_their_own_pipeline(repo, tmp_path):
    """studies/q23/dvc.yaml on the default study's prepared data: the default repro runs none of it; its repro
    runs exactly its stages, each listing the src/ files it ran; the carved student has the student's shape, the
    matched arms train the declared epochs, every pruned teacher the students start from is saved (recalibrated),
    CKA covers the students from random and carved weights, the report states every family and the trade-off,
    and a second repro has nothing to do."""
    root, env = repo
    _run_named_study(root, env, tmp_path, "q23", Q23_TINY, Q23_STAGES)
    students = root / "metrics/q23/students"
    carved = json.loads((students / "kd.carved-e2-s0.json").read_text())
    scratch = json.loads((students / "kd.random-e2-s0.json").read_text())
    assert carved["params"] == scratch["params"]  # resnet14 with one block a layer is resnet8
    assert json.loads((students / "kd.random-e4-s0.json").read_text())["epochs"] == 4
    assert json.loads((students / "raw.shape-l1-it-x1.5-e5-s1.json").read_text())["epochs"] == 5
    pruned = json.loads((students / "kd.pruned-l1-it-x1.5-e2-s0.json").read_text())
    shape = json.loads((students / "kd.shape-l1-it-x1.5-e5-s0.json").read_text())
    assert pruned["params"] == shape["params"] != scratch["params"]
    prune = json.loads((root / "metrics/q23/prune.json").read_text())
    assert sorted(p.name for p in (root / "models/q23/pruned").iterdir()) == [
        "l1-it-x1.5.pt", "l1-x1.5.pt", "random-x1.5.pt"]
    assert {"teacher", "blocks", "l1-it-x1.5", "l1-x1.5", "random-x1.5", "blocks+channels.l1-x0.95",
            "channels+blocks.random-x0.95"} <= set(prune["models"])
    assert prune["models"]["l1-it-x1.5"]["params"] <= prune["targets"]["x1.5"]
    cka = json.loads((root / "metrics/q23/cka.json").read_text())
    assert {"kd.carved-e2-s0", "kd.random-e2-s0", "top_k.random-e2-s0"} <= set(cka["students"])
    assert not any("pruned" in n or "shape" in n or "-e4-" in n for n in cka["students"])
    assert set(cka["reference"]) == {"layer1", "layer2", "layer3"} and all(
        set(v) == {"biased", "unbiased"} and -1.01 <= v["unbiased"] <= 1.01 for v in cka["reference"].values())
    head = json.loads((root / "metrics/q23/headline.json").read_text())
    assert set(head) == {"collapsed", *Q23_TINY["q23"]["families"]} and head["collapsed"] == 0
    acc = {arm: [json.loads((students / f"{arm}.shape-l1-it-x1.5-e5-s{s}.json").read_text())["test_acc"]
                 for s in (0, 1)] for arm in ("kd", "raw")}  # the headline's value: the paired mean difference
    assert head["curve"]["kd.shape-l1-it-x1.5-e5 - raw.shape-l1-it-x1.5-e5"] == pytest.approx(
        50 * (sum(acc["kd"]) - sum(acc["raw"])), abs=0.006)
    report = (root / "reports/q23/report.md").read_text()
    assert "## The pruning trade-off" in report and "| 1.5 |" in report and "(`criteria`)" in report
    assert "`kd.shape-l1-it-x1.5-e5` - `raw.shape-l1-it-x1.5-e5`" in (root / "reports/q23/findings.md").read_text()
    assert (root / "reports/q23/curve.png").stat().st_size > 5000
    assert not _ran(_run(["dvc", "repro", "studies/q23/dvc.yaml"], root, env))


def test_a_report_of_params_the_runs_did_not_use_is_refused(repo):
    """Issue 31, item 1: `kdlab report -S loss.alpha=0.9` on a study reproduced at 0.5, or `kdlab results` after
    params.yaml was edited without dvc repro, exited 0 and labelled alpha-0.5 numbers 0.9 (report, CSV, a new
    MLflow study). Both are refused, naming the key, and write nothing. (That the report stage itself passes the
    same check inside dvc repro and dvc exp run is the reproduced study and the queue test below.)"""
    root, env = repo
    files = {f: (root / f).read_bytes() for f in ("reports/report.md", "reports/results.csv", "metrics/headline.json")}
    res = subprocess.run(["kdlab", "report", "-S", "loss.alpha=0.9"], cwd=root, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 1 and "loss.alpha is 0.9 here but the runs used 0.5" in res.stderr, res.stderr
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["loss"]["alpha"] = 0.9
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    res = subprocess.run(["kdlab", "results"], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 1 and "loss.alpha is 0.9 here" in res.stderr and "dvc repro" in res.stderr, res.stderr
    assert {f: (root / f).read_bytes() for f in files} == files
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("kdlab").experiment_id
    assert not client.search_runs([exp], "params.`loss.alpha` = '0.9'")
    # item 4: a report of a study with a run's metrics missing was a KeyError traceback
    raw["loss"]["alpha"] = 0.5
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (root / "metrics/students/kd-1.json").unlink()
    res = subprocess.run(["kdlab", "report"], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert "1 of the study's runs have no metrics file (metrics/students/kd-1.json)" in res.stderr, res.stderr
    assert {f: (root / f).read_bytes() for f in files} == files


def test_alpha_experiments_in_a_parallel_queue(repo):
    """dvc exp run --queue -S loss.alpha=... x2, dvc queue start -j 2: each experiment re-runs only what reads
    loss, every run lands in the repo's sqlite store once, and the sweep gathers them with the baseline."""
    root, env = repo
    alphas = ["0.3", "0.9"]
    for a in alphas:
        _run(["dvc", "exp", "run", "--queue", "--name", f"alpha{a[-1]}", "-S", f"loss.alpha={a}"], root, env)
    _run(["dvc", "queue", "start", "-j", "2"], root, env)
    deadline = time.time() + 1500
    while True:
        status = _run(["dvc", "queue", "status"], root, env)
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        assert time.time() < deadline, status
        time.sleep(3)
    assert status.count("Success") == len(alphas), status
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("kdlab")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    for a in alphas:
        study = [r for r in runs if r.data.params.get("loss.alpha") == a and r.data.tags["kdlab.role"] == "study"]
        assert len(study) == 1, [r.info.run_name for r in runs]
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == study[0].info.run_id]
        ran = [r for r in children if "kdlab.reused_from" not in r.data.tags]
        assert sorted(r.info.run_name for r in ran) == sorted(["evaluate", "report", *(
            r for r in STUDENTS if not r.startswith("raw"))])
        # what DVC reused (the teacher, the labels-only students) is linked in, so raw and kd compare in one
        # study: a copy of the original run, its params the original's; each name once
        reused = {r.info.run_name: r for r in children if "kdlab.reused_from" in r.data.tags}
        assert set(reused) == {"teacher", "raw-0", "raw-1"}, sorted(reused)
        assert reused["raw-0"].data.params["loss.alpha"] == "0.5" and "val_acc" in reused["raw-0"].data.metrics
        # with its metrics.json, so that MLflow's compare view lists both runs' files (it fails on a run with none)
        assert [a.path for a in client.list_artifacts(reused["raw-0"].info.run_id)] == ["metrics.json"]
        assert len({r.info.run_name for r in children}) == len(children)
        # the parent is named after the DVC experiment its children ran in
        assert {r.data.tags["dvc.exp_name"] for r in ran} == {study[0].info.run_name}
        assert all(r.info.status == "FINISHED" for r in children + study), [(r.info.run_name, r.info.status)
                                                                           for r in children + study]
        # an experiment on loss.alpha re-runs only the distilled students, what gathers them, and the check
        # (check re-runs on any param, and its stamp is the same); not the labels-only students
        log = _run(["dvc", "queue", "logs", f"alpha{a[-1]}"], root, env)
        assert _ran(log) == {"check", "evaluate", "report", *(f"student@{r}" for r in STUDENTS
                                                               if not r.startswith("raw"))}, log[-3000:]
    _run(["dvc", "queue", "stop"], root, env)
    _run(["dvc", "exp", "apply", "alpha9"], root, env)
    assert "KD alpha 0.9," in (root / "reports/report.md").read_text()
    # the sweep command gathers the committed baseline (alpha 0.5) and the experiments
    out = _run([sys.executable, "-m", "kdlab", "sweep", "--param", "loss.alpha"], root, env)
    rows = [line for line in (root / "reports/sweep_loss.alpha.md").read_text().splitlines()
            if line.startswith("| 0.")]
    assert [r.split("|")[1].strip() for r in rows] == ["0.3", "0.5", "0.9"], out



def _charts(dom: str) -> dict[str, str]:
    """The chart divs of DVC's plots page (after the scripts ran): id -> inner HTML."""
    parts = re.split(r'<div id="', dom)[1:]
    return {p.split('"', 1)[0]: p for p in parts}


def test_plots_page_draws_every_chart_offline(repo, tmp_path):
    """make plots' page (scripts/plots_html.py) in headless Chromium with no network: every declared plot is a
    chart with marks drawn from data; a screenshot is kept with the test's files."""
    root, env = repo
    (root / "web").mkdir(exist_ok=True)
    os.symlink(REPO / "web/node_modules", root / "web/node_modules")
    out = _run([sys.executable, str(REPO / "scripts/plots_html.py")], root, env)
    assert "open reports/plots/index.html" in out, out
    page = root / "reports/plots/index.html"
    assert "cdn.jsdelivr" not in page.read_text()  # nothing to fetch
    browser = ["chromium-headless-shell", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--virtual-time-budget=20000", "--window-size=1100,2300"]
    dom = subprocess.run([*browser, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    charts = {k: v for k, v in _charts(dom).items() if "<svg" in v}
    declared = yaml.safe_load((root / "dvc.yaml").read_text())["plots"]
    assert len(charts) == len(declared) == 3, list(charts)
    for cid, html in charts.items():
        assert 'data-kdlab-drawn="1"' in dom.split(f'<div id="{cid}"', 1)[1].split(">", 1)[0], cid
        marks = re.findall(r'class="mark-(line|rect|symbol) role-mark[^"]*"[^>]*>(.*?)</g>', html, re.S)
        drawn = [m for kind, body in marks for m in re.findall(r'<path[^>]* d="M[^"]+"', body)]
        assert drawn, f"chart {cid} has no marks"
    shot = tmp_path / "plots.png"
    subprocess.run([*browser, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    assert shot.stat().st_size > 20_000  # three charts, not a blank page

    # dvc plots diff: an alpha experiment's results in the workspace against the committed ones
    _run(["dvc", "exp", "run", "-S", "loss.alpha=0.9"], root, env)
    # the same experiment in dvc's terminal views: one metrics file of a few headline numbers, rows that fit
    shown = json.loads(_run(["dvc", "metrics", "show", "--json"], root, env))
    assert [list(r["data"]) for r in shown.values()] == [["metrics/headline.json"]], shown
    diff = _run(["dvc", "metrics", "diff", "HEAD"], root, env).splitlines()
    assert 5 < len(diff) < 50 and max(map(len, diff)) <= 120, "\n".join(diff)
    assert any(line.split()[1:2] == ["q1.kd_vs_raw.gain"] for line in diff), diff
    _run([sys.executable, str(REPO / "scripts/plots_html.py"), "--diff", "HEAD"], root, env)
    dom = subprocess.run([*browser, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    charts = {k: v for k, v in _charts(dom).items() if "<svg" in v}
    assert len(charts) == len(declared)
    for cid, html in charts.items():  # both revisions in every chart's legend
        assert ">HEAD<" in html and ">workspace<" in html, cid


def _make_dvc_commands(target: str) -> list[list[str]]:
    """The dvc commands of a Makefile target's recipe, as the user's `make <target>` runs them."""
    recipe = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), re.M).group(1)
    return [line.split() for line in (raw.strip() for raw in recipe.splitlines()) if line.startswith("dvc ")]


def test_a_fresh_clone_pulls_from_the_in_repo_remote_instead_of_retraining(repo, tmp_path):
    """The shipped DVC remote is a directory inside the repo (.dvc/config: dvc-remote/). `make repro`'s dvc
    commands (dvc pull, dvc repro, dvc push) fill it; committed, a fresh git clone's `make repro` pulls every output,
    rebuilds only the prepared data (push: false, byte-identical from its source), trains nothing and leaves
    git status clean; scripts/shipped.py finds every output in the remote, and names one that is taken away."""
    root, env = repo
    shutil.copy(REPO / ".dvc/config", root / ".dvc/config")
    commands = _make_dvc_commands("repro")
    # one pull of the study (what the remote lacks, such as the prepared data, is left to the repro), then repro
    assert commands[:2] == [["dvc", "pull", "-q", "--allow-missing", "dvc.yaml"], ["dvc", "repro"]], commands
    assert any(c[:2] == ["dvc", "push"] for c in commands), commands
    for cmd in commands:
        _run(cmd, root, env)
    remote = root / "dvc-remote"
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    prepared = lock["prepare"]["outs"][0]["md5"]
    teacher = next(o["md5"] for o in lock["teacher"]["outs"] if o["path"] == "models/teacher.pt")
    assert (remote / "files/md5" / teacher[:2] / teacher[2:]).is_file()
    assert not (remote / "files/md5" / prepared[:2] / prepared[2:]).exists(), "the prepared data was pushed"
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "results and their outputs, in the repo"], root, env)
    assert not _run(["git", "status", "--porcelain"], root, env).strip()

    colleague = tmp_path / "colleague"
    _run(["git", "clone", "-q", str(root), str(colleague)], tmp_path, env)
    shipped = [sys.executable, str(REPO / "scripts/shipped.py"), "--repo", str(colleague), "dvc.yaml"]
    assert "0 missing" in _run(shipped, colleague, env)
    for cmd in commands:
        out = _run(cmd, colleague, env)
        assert _ran(out) <= {"prepare"}, _ran(out)
    for rel in ("models/teacher.pt", "models/students/kd-0.pt", "data/prepared/meta.json", "data/prepared/train.pt"):
        assert (colleague / rel).read_bytes() == (root / rel).read_bytes(), rel
    assert any((colleague / "data/teacher_logits").iterdir())
    assert "up to date" in _run(["dvc", "status"], colleague, env)
    assert not _run(["git", "status", "--porcelain"], colleague, env).strip()

    (colleague / "dvc-remote/files/md5" / teacher[:2] / teacher[2:]).unlink()
    res = subprocess.run(shipped, cwd=colleague, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and "missing models/teacher.pt" in res.stdout, res.stdout + res.stderr
