"""Nothing lost: kill and resume, SIGINT, NaN, corrupted files, a tracking server that is down."""
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import merge, study_dir, tiny
from kdlab.core import views
from kdlab.core.loader import Normalize
from kdlab.core.train import autocast
from kdlab.infra import io, tracking
from kdlab.pipeline import cache, params, workspace

TINY = tiny({"data": {"synthetic": {"n_train": 1600, "image_size": 12}}, "teacher": {"epochs": 4},
             "train": {"batch_size": 32, "compile": "auto"}})


def _study_dir(path: Path, extra: dict | None = None) -> dict:
    return study_dir(path, merge(TINY, extra or {}))


def _kdlab(path, env, *args, **kw):
    return subprocess.Popen([sys.executable, "-m", "kdlab", *args], cwd=path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _interrupt_after_first_epoch(path, env, sig) -> tuple[int, str]:
    proc = _kdlab(path, env, "train", "teacher")
    lines = []
    seen_first = False
    for line in proc.stdout:  # text mode: tqdm's carriage returns end lines too
        lines.append(line)
        seen_first = seen_first or "teacher epoch 1/4: loss" in line  # printed after epoch 1's checkpoint
        # epoch 2's progress bar: epoch 1 is checkpointed and logged, the step loop is running
        if seen_first and line.startswith("teacher epoch 2/4:"):
            proc.send_signal(sig)
            break
    rest = proc.stdout.read()
    return proc.wait(timeout=120), "".join(lines) + rest


def _without_times(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if "seconds" not in k}


def _run_status(path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("kdlab")
    return sorted(r.info.status for r in client.search_runs([exp.experiment_id], "tags.`kdlab.role` = 'teacher'"))


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_result(tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    env_w, env_b = _study_dir(whole), _study_dir(broken)
    ref = _kdlab(whole, env_w, "train", "teacher")
    out_ref = ref.communicate(timeout=300)[0]
    assert ref.returncode == 0, out_ref

    code, out = _interrupt_after_first_epoch(broken, env_b, signal.SIGKILL)
    assert code == -signal.SIGKILL, out
    assert (broken / "checkpoints/teacher.pt").exists(), "killed after the run ended: the test proved nothing"
    assert not (broken / "models/teacher.pt").exists() and not (broken / "metrics/teacher.json").exists()
    resumed = _kdlab(broken, env_b, "train", "teacher")
    out2 = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out2
    assert "resuming after epoch" in out2
    assert not (broken / "checkpoints/teacher.pt").exists()  # removed once the outputs are written

    m_ref = json.loads((whole / "metrics/teacher.json").read_text())
    m_res = json.loads((broken / "metrics/teacher.json").read_text())
    assert _without_times(m_res) == _without_times(m_ref)
    a = torch.load(whole / "models/teacher.pt", weights_only=False)
    b = torch.load(broken / "models/teacher.pt", weights_only=False)
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert [r["val_acc"] for r in a["history"]] == [r["val_acc"] for r in b["history"]]
    # the killed run had no chance to close itself; the resumed stage marks it KILLED
    assert _run_status(broken) == ["FINISHED", "KILLED"]


@pytest.mark.slow
def test_a_checkpoint_of_other_code_is_not_resumed(tmp_path):
    """Killed after epoch 1, then the training code changes: the rerun starts over instead of finishing with
    epochs the old code trained (and dvc.lock crediting the new code)."""
    from conftest import REPO

    src = tmp_path / "src"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    study = tmp_path / "study"
    env = dict(_study_dir(study), PYTHONPATH=str(src))
    code, out = _interrupt_after_first_epoch(study, env, signal.SIGKILL)
    assert code == -signal.SIGKILL and (study / "checkpoints/teacher.pt").exists(), out
    train = src / "kdlab/core/train.py"
    train.write_text(train.read_text().replace("return max(0.0, 1.0 - t)", "return max(0.0, 1.0 - t) ** 2"))
    resumed = _kdlab(study, env, "train", "teacher")
    out2 = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out2
    assert "belongs to other params, data or code; starting over" in out2 and "resuming" not in out2
    assert "teacher epoch 1/4: loss" in out2


def test_sigint_checkpoints_and_closes_the_run_as_killed(tmp_path):
    env = _study_dir(tmp_path)
    code, out = _interrupt_after_first_epoch(tmp_path, env, signal.SIGINT)
    assert code == 130, out
    assert "rerun the stage to resume" in out
    assert torch.load(tmp_path / "checkpoints/teacher.pt", weights_only=False)["epoch"] >= 1
    assert not (tmp_path / "metrics/teacher.json").exists()
    assert _run_status(tmp_path) == ["KILLED"]


def test_nan_loss_stops_with_epoch_step_and_terms(tmp_path):
    env = _study_dir(tmp_path, {"teacher": {"lr": 1e30}})
    proc = _kdlab(tmp_path, env, "train", "teacher")
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1, out
    assert "non-finite loss at epoch 1, step" in out and "'ce':" in out
    assert not (tmp_path / "metrics/teacher.json").exists() and not (tmp_path / "models/teacher.pt").exists()
    assert _run_status(tmp_path) == ["FAILED"]


def test_cache_resumes_from_saved_chunks(tmp_path):
    torch.manual_seed(0)
    from kdlab.core import models

    teacher = models.build("resnet8", 1, 3, 0.25).eval()
    images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    table = views.view_table(40, 1, True, 3, seed=0)
    norm = Normalize([0.5], [0.3], "cpu")
    ac = autocast(torch.device("cpu"))
    partial = tmp_path / "partial"
    first = cache.teacher_logits_for(teacher, images, table, norm, 1, 16, ac, partial, "fp-a", chunk_batches=2)
    chunks = sorted(partial.iterdir())
    assert len(chunks) == 4  # 120 (image, view) pairs in chunks of 32

    class Exploding(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("a saved chunk was recomputed")

    (partial / chunks[-1].name).unlink()  # as if killed during the last chunk
    calls = []

    class Counting(torch.nn.Module):
        def forward(self, x):
            calls.append(len(x))
            return teacher(x)

    again = cache.teacher_logits_for(Counting(), images, table, norm, 1, 16, ac, partial, "fp-a", chunk_batches=2)
    assert torch.equal(again, first) and sum(calls) == 120 - 96
    with pytest.raises(AssertionError, match="recomputed"):  # another fingerprint never reuses chunks
        cache.teacher_logits_for(Exploding(), images, table, norm, 1, 16, ac, partial, "fp-b", chunk_batches=2)


def _write_cache(p, teacher_sha="abc"):
    table = views.view_table(10, p.views.pad, p.views.flip, p.cache.views, p.cache.seed)
    io.save_torch({"view_ids": table, "logits": torch.zeros(10, table.shape[1], 4, dtype=torch.float16),
                   "teacher_sha256": teacher_sha, "pad": p.views.pad, "flip": p.views.flip,
                   "views": p.cache.views, "seed": p.cache.seed}, workspace.CACHE / "train.pt")


def test_corrupted_or_foreign_files_are_refused(in_tmp):
    p = params.from_dict({"cache": {"views": 3}})
    _write_cache(p)
    workspace.TEACHER.parent.mkdir(parents=True)
    workspace.TEACHER.write_bytes(b"the teacher")
    path, rebuild = workspace.CACHE / "train.pt", "dvc repro cache"
    with pytest.raises(io.StageError, match="not built from the current models/teacher.pt.*dvc repro cache"):
        workspace.read_cache(p, path, rebuild, workspace.TEACHER)
    with pytest.raises(RuntimeError, match="built with .*views.*dvc repro cache"):
        workspace.read_cache(params.from_dict({"cache": {"views": 4}}), path, rebuild, workspace.TEACHER)
    blob = (workspace.CACHE / "train.pt").read_bytes()
    (workspace.CACHE / "train.pt").write_bytes(blob[: len(blob) // 2])  # truncated
    with pytest.raises(RuntimeError, match=r"data/teacher_logits/train.pt is unreadable.*dvc repro cache"):
        workspace.read_cache(p, path, rebuild, workspace.TEACHER)
    ctx = workspace.Context(torch.device("cpu"), {}, {}, None)
    with pytest.raises(RuntimeError, match=r"models/teacher.pt is unreadable.*dvc repro teacher"):
        workspace.load_model(workspace.TEACHER, ctx, "dvc repro teacher")


def test_a_tracking_server_that_is_down_fails_fast_naming_the_uri(monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for k in tracking._HTTP_DEFAULTS:
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(tracking.TrackingError, match=f"cannot reach the MLflow tracking store {uri}"):
        with tracking.run("teacher", "teacher", {"loss.alpha": 0.5}):
            pass
