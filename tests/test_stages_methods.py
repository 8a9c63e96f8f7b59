"""Every distillation method through the real student stage (in process, tiny data, real MLflow store):
the stage wires each one to what it reads (cache, teacher, views) and writes a loadable model."""
import pytest
import torch

from conftest import merge, tiny
from kdlab import distill
from kdlab.core import data
from kdlab.pipeline import cache, params, stages, workspace
from kdlab.pipeline.train import train

TINY = tiny({"data": {"val_size": 40, "synthetic": {"n_train": 240, "n_test": 60}}, "teacher": {"epochs": 1},
             "train": {"batch_size": 32, "eval_batch_size": 100, "compile": "auto"},
             "methods": {"fitnet": {"layers": ["layer2", "layer3.0"]}, "init_teacher": {"keep": [[0], [0], [0]]}}})


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    p = params.from_dict({**TINY, "study": {"variants": [m for m in distill.names() if m != "raw"], "seeds": [0]}})
    data.prepare(p.data, workspace.PREPARED)
    train(p, stages.teacher_spec(p))
    cache.run_cache(p)
    yield p
    mp.undo()


def _needs_question_1s_cache(name: str) -> bool:
    """kd_correct_clean reads the teacher's correctness per clean training image, which only studies/q1's cache
    records (kdlab q1_cache); its training is tested there (tests/test_pipeline.py)."""
    return getattr(distill.method_class(name), "reads_clean_correct", False)


@pytest.mark.parametrize("variant", [m for m in distill.names() if m != "raw" and not _needs_question_1s_cache(m)])
def test_every_method_trains_through_the_student_stage(study, variant):
    metrics = train(study, stages.student_spec(study, variant, 0))
    assert 0 <= metrics["test_acc"] <= 1 and metrics["epochs"] == 1
    ctx = workspace.context(study, 0)
    path, _ = workspace.run_files(variant, 0)
    model = workspace.load_model(path, ctx, "rerun")
    out = model(ctx.normalize(ctx.splits["test"]["images"][:4]))
    assert out.shape == (4, 3) and torch.isfinite(out).all()
    carved = distill.method_class(variant).builds_from_teacher
    teacher = workspace.load_model(workspace.TEACHER, ctx, "rerun")
    # a carved student has the teacher's width (one block per stage of a resnet8: the teacher's shape)
    assert (sum(t.numel() for t in model.parameters()) == sum(t.numel() for t in teacher.parameters())) == carved


def test_a_method_that_needs_question_1s_cache_is_refused_by_the_default_stage_before_training(study):
    from kdlab.infra.io import StageError

    names = [m for m in distill.names() if _needs_question_1s_cache(m)]
    assert names == ["kd_correct_clean"]
    with pytest.raises(StageError, match="only question 1's study records"):
        train(study, stages.student_spec(study, names[0], 0))
    assert not workspace.run_files(names[0], 0)[1].exists()


def test_question_3_prunes_the_teacher_trains_every_arm_and_gathers_them(study):
    """kdlab prune_teacher -> kdlab train pruned/... (every arm and criterion) -> kdlab pruning, in process: the pruned teachers
    meet their targets and reload from their history, and the study has every group and comparison."""
    from kdlab.analysis import pruning as gathered
    from kdlab.pipeline import pruning

    p = params.from_dict(merge(TINY, {"train": {"compile": False}, "study": {"seeds": [0, 1]},
                          "prune": {"compare": ["random"], "sizes": [1.0, 0.5], "steps": 2, "finetune_steps": 3,
                                    "calibration_images": 32}}))
    made = pruning.run_prune_teacher(p)
    assert set(made["models"]) == {"activation.x1.0", "activation.x0.5", "random.x1.0"}
    ctx = workspace.context(p, 0)
    for name, e in made["models"].items():
        assert e["params"] <= e["target_params"] == round(e["size"] * made["student_params"])
        model = workspace.load_model(workspace.PRUNED_TEACHERS / f"{name}.pt", ctx, "rerun")
        assert sum(t.numel() for t in model.parameters()) == e["params"]
        assert set(e["stages"]) == {"stem", "layer1", "layer2", "layer3"}
    for criterion, size, init, variant in stages.groups(p):
        for seed in p.study.seeds:
            train(p, stages.pruned_spec(p, size, criterion, init, variant, seed))
    summary = gathered.run_pruning(p)
    assert len(summary["groups"]) == 2 * 4 + 1
    pruned_kd, fresh_kd = "prune.activation.x1.0.kd", "shape.activation.x1.0.kd"
    assert summary["groups"][pruned_kd]["params"] == summary["groups"][fresh_kd]["params"] == \
        made["models"]["activation.x1.0"]["params"]
    assert f"{pruned_kd}_vs_{fresh_kd}" in summary["comparisons"]
    assert f"{pruned_kd}_vs_prune.random.x1.0.kd" in summary["comparisons"]
    assert summary["groups"][pruned_kd]["test_acc"]["n"] == 2
    from pathlib import Path

    assert "| x0.5 | shape | raw | activation |" in Path(workspace.PRUNING_MD).read_text()
    # the fresh-weights control has exactly the pruned shape
    pruned_first = workspace.load_model(workspace.PRUNED_TEACHERS / "activation.x1.0.pt", ctx, "rerun")
    shape = workspace.load_model(workspace.run_files(fresh_kd, 0, "pruned")[0], ctx, "rerun")
    assert [t.shape for t in shape.parameters()] == [t.shape for t in pruned_first.parameters()]
