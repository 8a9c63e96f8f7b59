"""Every distillation method through the real student stage (in process, tiny data, real MLflow store):
the stage wires each one to what it reads (cache, teacher, views) and writes a loadable model."""
import pytest
import torch

from conftest import tiny
from kdlab import distill
from kdlab.core import data
from kdlab.pipeline import cache, params, stages, workspace
from kdlab.pipeline.train import train

TINY = tiny({"data": {"val_size": 40, "synthetic": {"n_train": 240, "n_test": 60}}, "teacher": {"epochs": 1},
             "train": {"batch_size": 32, "eval_batch_size": 100, "compile": "auto"},
             "methods": {"fitnet": {"layers": ["layer2", "layer3.0"]}}})


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    p = params.from_dict({**TINY, "study": {"methods": [m for m in distill.names() if m != "raw"], "seeds": [0]}})
    data.prepare(p.data, workspace.PREPARED)
    train(p, stages.teacher_spec(p))
    cache.run_cache(p)
    yield p
    mp.undo()


def _needs_question_1s_cache(name: str) -> bool:
    """kd_correct_clean reads the teacher's correctness per clean training image, which only studies/q1's cache
    records (kdlab cache --study studies/q1/params.yaml); its training is tested there (tests/test_pipeline.py)."""
    return getattr(distill.method_class(name), "reads_clean_correct", False)


@pytest.mark.parametrize("method", [m for m in distill.names() if m != "raw" and not _needs_question_1s_cache(m)])
def test_every_method_trains_through_the_student_stage(study, method):
    metrics = train(study, stages.student_spec(study, method, 0))
    assert 0 <= metrics["test_acc"] <= 1 and metrics["epochs"] == 1
    ctx = workspace.context(study, 0)
    path, _ = workspace.run_files(method, 0)
    model = workspace.load_model(path, ctx, "rerun")
    out = model(ctx.normalize(ctx.splits["test"]["images"][:4]))
    assert out.shape == (4, 3) and torch.isfinite(out).all()
    # a method changes the loss, never the student: the default study's student shape, not the teacher's
    student = workspace.build_model(study.student, ctx)
    assert [tuple(t.shape) for t in model.state_dict().values()] == [tuple(t.shape) for t in student.state_dict().values()]


def test_a_method_that_needs_question_1s_cache_is_refused_by_the_default_stage_before_training(study):
    from kdlab.infra.io import StageError

    names = [m for m in distill.names() if _needs_question_1s_cache(m)]
    assert names == ["kd_correct_clean"]
    with pytest.raises(StageError, match="only question 1's study records"):
        train(study, stages.student_spec(study, names[0], 0))
    assert not workspace.run_files(names[0], 0)[1].exists()
