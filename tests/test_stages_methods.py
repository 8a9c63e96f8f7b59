"""Every distillation method through the real student stage (in process, tiny data, real MLflow store):
the stage wires each one to what it reads (cache, teacher, views) and writes a loadable model."""
import pytest
import torch

from kdlab import cache, data, distill, params, stages

TINY = {
    "data": {"name": "synthetic", "val_size": 40,
             "synthetic": {"n_train": 240, "n_test": 60, "image_size": 10, "channels": 1, "classes": 3}},
    "views": {"pad": 1},
    "teacher": {"arch": "resnet8", "width": 0.5, "epochs": 1, "lr": 0.05},
    "student": {"arch": "resnet8", "width": 0.25, "epochs": 1, "lr": 0.05},
    "train": {"batch_size": 32, "eval_batch_size": 100, "threads": 1},
    "cache": {"views": 2},
    "methods": {"fitnet": {"stages": ["layer2", "layer3.0"]}, "init_teacher": {"keep": [[0], [0], [0]]}},
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    p = params.from_dict({**TINY, "study": {"variants": [m for m in distill.names() if m != "raw"], "seeds": [0]}})
    data.prepare(p.data)
    stages.run_teacher(p)
    cache.run_cache(p)
    yield p
    mp.undo()


@pytest.mark.parametrize("variant", [m for m in distill.names() if m != "raw"])
def test_every_method_trains_through_the_student_stage(study, variant):
    metrics = stages.run_student(study, variant, 0)
    assert 0 <= metrics["test_acc"] <= 1 and metrics["epochs"] == 1
    ctx = stages.context(study, 0)
    path, _ = stages.student_paths(variant, 0)
    model = stages.load_model(path, ctx, "rerun")
    out = model(ctx.normalize(ctx.splits["test"]["images"][:4]))
    assert out.shape == (4, 3) and torch.isfinite(out).all()
    carved = distill.method_class(variant).builds_from_teacher
    teacher = stages.load_model(stages.TEACHER, ctx, "rerun")
    # a carved student has the teacher's width (one block per stage of a resnet8: the teacher's shape)
    assert (sum(t.numel() for t in model.parameters()) == sum(t.numel() for t in teacher.parameters())) == carved
