"""Nothing wrong goes unnoticed (issue 14): no code from data files, a stage that refuses files and params that
do not match, tracking failures that lose nothing, a copied repository that logs into itself, downloads that
give up, and one line, not a traceback, for every expected failure."""
import errno
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, merge, shipped_with, study_dir, tiny
from kdlab import cli
from kdlab.core import data as data_mod
from kdlab.infra import io, schema, tracking
from kdlab.pipeline import check, params

TINY = tiny()


def _kdlab(path: Path, env: dict, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdlab", *args], cwd=path, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _one_line_failure(res: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """The stage failed with ``code`` and a message holding every needle, and printed no traceback."""
    assert res.returncode == code, res.stdout[-2000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    # progress bars end with a carriage return, not a newline: the message may share their line
    found = re.search(r"kdlab( \w+)?: [^\r\n]*", res.stderr)
    line = found.group(0) if found else ""
    for needle in needles:
        assert needle in line, (needle, res.stderr[-3000:])
    return line


class _Boom:
    """A pickle that runs a shell command when loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _hostile(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"fingerprint": "x", "epoch": 1, "model": _Boom(marker)}, path)


# ---------------------------------------------------------------- 2: no code from data files

def test_a_hostile_checkpoint_is_refused_and_never_run(tmp_path):
    env = study_dir(tmp_path, TINY)
    marker = tmp_path / "pwned"
    _hostile(tmp_path / "checkpoints/teacher.pt", marker)
    res = _kdlab(tmp_path, env, "train", "teacher")
    _one_line_failure(res, 1, "checkpoints/teacher.pt", "objects other than tensors")
    assert not marker.exists(), "the checkpoint's pickle ran its command"
    assert not (tmp_path / "models/teacher.pt").exists()


@pytest.mark.parametrize("name", ["data/prepared/train.pt", "models/teacher.pt", "data/teacher_logits/train.pt",
                                  "data/teacher_logits.partial/chunk_00000.pt", "models/q23/pruned/l1-it-x1.0.pt"])
def test_every_loaded_file_refuses_pickled_code(tmp_path, name):
    marker = tmp_path / "pwned"
    _hostile(tmp_path / name, marker)
    with pytest.raises(io.StageError, match="objects other than tensors.*rebuild it with `dvc repro"):
        io.load_torch(tmp_path / name, "dvc repro x")
    assert not marker.exists()


# ---------------------------------------------------------------- 3: params and files that must agree

def test_an_incomplete_params_file_is_refused_before_any_work(tmp_path):
    env = study_dir(tmp_path, TINY)
    (tmp_path / "params.yaml").write_text("")
    res = _kdlab(tmp_path, env, "train", "teacher")
    _one_line_failure(res, 2, "params.yaml", "does not set data, views, teacher", "git checkout -- params.yaml")
    raw = shipped_with(TINY)
    del raw["teacher"]["epochs"], raw["methods"]["dkd"]["warmup"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    _one_line_failure(_kdlab(tmp_path, env, "train", "teacher"), 2, "does not set teacher.epochs")
    raw["teacher"]["epochs"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    _one_line_failure(_kdlab(tmp_path, env, "check"), 2, "does not set methods.dkd.warmup")
    assert not (tmp_path / "models/teacher.pt").exists() and not (tmp_path / "data/checked.json").exists()


def test_the_check_stage_refuses_what_only_other_stages_would_build(tmp_path):
    """`kdlab check` (dvc.yaml's first stage) checks the options of methods that study.methods does not list
    and the architectures; it writes its stamp only when all of params.yaml passed."""
    env = study_dir(tmp_path, {**TINY, "study": {"methods": ["kd"], "seeds": [0]},
                               "methods": {"fitnet": {"layers": ["layer4"]}}})
    _one_line_failure(_kdlab(tmp_path, env, "check"), 2, "methods.fitnet.layers[0]", "has no layer 'layer4'")
    assert not (tmp_path / "data/checked.json").exists()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(shipped_with(TINY)))
    res = _kdlab(tmp_path, env, "check")
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "data/checked.json").exists()


def test_prepared_data_of_other_params_are_refused(tmp_path):
    env = study_dir(tmp_path, TINY)
    other = merge(TINY, {"data": {"synthetic": {"classes": 4}}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(other))
    res = _kdlab(tmp_path, env, "train", "teacher")
    _one_line_failure(res, 1, "data/prepared was prepared from other data params", "classes 3 (params.data: 4)",
                      "dvc repro prepare")


def test_a_teacher_of_other_params_is_refused(tmp_path):
    env = study_dir(tmp_path, TINY)
    assert _kdlab(tmp_path, env, "train", "teacher").returncode == 0
    wider = merge(TINY, {"teacher": {"width": 0.75}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(wider))
    res = _kdlab(tmp_path, env, "cache")
    _one_line_failure(res, 1, "models/teacher.pt was trained with width 0.5 (now 0.75)", "dvc repro teacher")


# ---------------------------------------------------------------- 4: every key checked before any work

def _load(tmp_path, over: dict):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(shipped_with(over)))
    return check.check_all(params.load(path), path)


BAD = [
    ({"loss": {"temperature": float("nan")}}, "loss.temperature", "finite"),
    ({"teacher": {"lr": float("inf")}}, "teacher.lr", "finite"),
    ({"train": {"weight_decay": float("nan")}}, "train.weight_decay", "finite"),
    ({"methods": {"dkd": {"beta": float("-inf")}}}, "methods.dkd.beta", "finite"),
    # stages the architectures lack
    ({"methods": {"at": {"layers": ["layer4"]}}}, "methods.at.layers[0]", "has no layer 'layer4'"),
    ({"methods": {"rkd": {"layers": ["layer3.5"]}}}, "methods.rkd.layers[0]", "has no layer 'layer3.5'"),
    # options of methods other stages build, though not in study.methods
    ({"study": {"methods": ["kd"]}, "methods": {"fitnet": {"layers": ["layer4"]}}}, "methods.fitnet.layers[0]",
     "no layer"),
    ({"study": {"methods": ["kd"]}, "methods": {"dkd": {"beta": -1.0}}}, "methods.dkd.beta", ">= 0"),
    ({"study": {"methods": ["kd"]}, "methods": {"at": {"layers": []}}}, "methods.at.layers", "empty"),
    # seeds the generators cannot tell apart (-1 draws what 2**64 - 1 draws)
    ({"teacher": {"seed": -1}}, "teacher.seed", "[0, 2**32)"),
    ({"study": {"seeds": [0, 2 ** 64]}}, "study.seeds[1]", "[0, 2**32)"),
    ({"cache": {"seed": 2 ** 40}}, "cache.seed", "[0, 2**32)"),
    ({"data": {"split_seed": -3}}, "data.split_seed", "[0, 2**32)"),
    ({"student": {"epochs": 2_000_000}}, "student.epochs", "more than"),
    # splits that leave no validation images
    ({"data": {"name": "synthetic", "synthetic": {"n_train": 4}}}, "data.synthetic.n_train", "no validation"),
    # data-parallel batches that cannot be split
    ({"train": {"nproc": 2, "batch_size": 33}}, "train.batch_size", "does not divide by train.nproc=2"),
]


@pytest.mark.parametrize("over,key,message", BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_values_are_refused_naming_the_key(tmp_path, over, key, message):
    with pytest.raises(schema.ParamsError) as e:
        _load(tmp_path, over)
    assert e.value.key == key, str(e.value)
    assert message in str(e.value)


def test_the_shipped_params_and_a_valid_change_pass(tmp_path):
    assert check.check_all(params.load(REPO / "params.yaml"), REPO / "params.yaml").study.seeds == list(range(7))
    p = _load(tmp_path, {"teacher": {"arch": "resnet32"}, "methods": {"fitnet": {"layers": ["layer2.0"]}}})
    assert p.teacher.arch == "resnet32" and p.methods["fitnet"]["layers"] == ["layer2.0"]


# ---------------------------------------------------------------- 5: a tracking failure loses no epoch

def _statuses(path: Path) -> list[str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("kdlab")
    return sorted(r.info.status for r in client.search_runs([exp.experiment_id], "tags.`kdlab.role` = 'teacher'"))


def test_an_artifact_store_failure_keeps_the_checkpoint_and_closes_the_run(tmp_path):
    env = study_dir(tmp_path, TINY)
    (tmp_path / "mlartifacts").write_text("a file where the artifact directory should be")
    res = _kdlab(tmp_path, env, "train", "teacher")
    _one_line_failure(res, 1, "MLflow could not log", "resumes from its checkpoint")
    assert (tmp_path / "models/teacher.pt").exists() and (tmp_path / "checkpoints/teacher.pt").exists()
    assert _statuses(tmp_path) == ["FAILED"]
    (tmp_path / "mlartifacts").unlink()
    res = _kdlab(tmp_path, env, "train", "teacher")
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "resuming after epoch 2" in out and "epoch 1/2: loss" not in out  # no epoch trained again
    assert not (tmp_path / "checkpoints/teacher.pt").exists()
    assert _statuses(tmp_path) == ["FAILED", "FINISHED"]


def test_a_rerun_supersedes_the_finished_run_and_keeps_the_failed_attempt_by_name(in_tmp):
    """A study shows each run once: a finished re-run deletes (restorably) the earlier finished run of its name,
    a failed attempt stays under its own name, and the study's status follows the last attempts."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    from kdlab.infra import tracking

    with pytest.raises(RuntimeError):
        with tracking.run("teacher", "teacher", {"loss.alpha": 0.5}):
            raise RuntimeError("the first attempt fails")
    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    exp = client.get_experiment_by_name("kdlab").experiment_id
    study = lambda: client.search_runs([exp], "tags.`kdlab.role` = 'study'")[0]  # noqa: E731
    assert study().info.status == "FAILED"
    ids = []
    for _ in range(2):
        with tracking.run("teacher", "teacher", {"loss.alpha": 0.5}) as run:
            ids.append(run.run_id)
    active = client.search_runs([exp], "tags.`kdlab.role` = 'teacher'")
    assert sorted((r.info.run_name, r.info.status) for r in active) == [
        ("teacher", "FINISHED"), ("teacher (failed attempt)", "FAILED")]
    assert next(r for r in active if r.info.status == "FINISHED").info.run_id == ids[1]
    deleted = client.search_runs([exp], "tags.`kdlab.role` = 'teacher'", run_view_type=ViewType.DELETED_ONLY)
    assert [(r.info.run_id, r.data.tags["kdlab.superseded_by"]) for r in deleted] == [(ids[0], ids[1])]
    assert study().info.status == "FINISHED" and study().info.end_time == max(r.info.end_time for r in active)


@pytest.mark.parametrize("failing_call", [1, 2], ids=["study's params", "run's params"])
def test_a_failure_while_logging_params_leaves_no_run_running(in_tmp, monkeypatch, failing_call):
    from mlflow.tracking import MlflowClient

    log_batch, calls = MlflowClient.log_batch, []

    def flaky(self, run_id, metrics=(), params=(), tags=(), **kw):
        calls.append(run_id)
        if params and len(calls) == failing_call:
            raise OSError("the store went away")
        return log_batch(self, run_id, metrics=metrics, params=params, tags=tags, **kw)

    monkeypatch.setattr(MlflowClient, "log_batch", flaky)
    with pytest.raises(tracking.TrackingError, match="MLflow could not log .*the store went away"):
        with tracking.run("teacher", "teacher", {"loss.alpha": 0.5}):
            raise AssertionError("the run opened although its params could not be logged")
    monkeypatch.setattr(MlflowClient, "log_batch", log_batch)

    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    exp = client.get_experiment_by_name("kdlab")
    assert {r.info.status for r in client.search_runs([exp.experiment_id])} <= {"FAILED", "FINISHED"}


# ---------------------------------------------------------------- 6: a copied repository logs into itself

def test_a_copied_repository_logs_its_artifacts_into_itself(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    first, copy = tmp_path / "first", tmp_path / "copy"
    first.mkdir()
    monkeypatch.chdir(first)
    Path("note.txt").write_text("first")
    with tracking.run("teacher", "teacher", {"x": 1}) as run:
        run.log_artifact("note.txt")
    shutil.copytree(first, copy, symlinks=True)
    monkeypatch.chdir(copy)
    Path("note.txt").write_text("copy")
    with tracking.run("student", "kd-0", {"x": 1}) as run:
        run.log_artifact("note.txt")
    logged = lambda root: sorted(p.read_text() for p in (root / "mlartifacts").rglob("note.txt"))
    assert logged(first) == ["first"]
    assert logged(copy) == ["copy", "first"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    for r in client.search_runs([client.get_experiment_by_name("kdlab").experiment_id]):
        assert r.info.artifact_uri.startswith((copy / "mlartifacts").as_uri()), r.info.artifact_uri


# ---------------------------------------------------------------- 7: a stalled network

def test_a_stalled_download_gives_up_and_says_what_to_copy_where(tmp_path):
    env = study_dir(tmp_path, TINY)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []
    threading.Thread(target=lambda: [held.append(server.accept()) for _ in range(8)], daemon=True).start()
    proxy = f"http://127.0.0.1:{server.getsockname()[1]}"
    env = {**env, "KDLAB_DOWNLOAD_TIMEOUT": "1", "NO_PROXY": "", "no_proxy": "",
           **{k: proxy for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}}
    cifar = shipped_with({**TINY, "data": {**TINY["data"], "name": "cifar10", "root": str(tmp_path / "raw"),
                                           "val_size": 5000}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cifar))
    try:
        res = _kdlab(tmp_path, env, "prepare", timeout=240)
    finally:
        server.close()
    _one_line_failure(res, 1, "could not download CIFAR-10", "Copy cifar-10-python.tar.gz into")


# ---------------------------------------------------------------- 8: one line for each expected failure

def test_expected_failures_are_one_line_naming_the_file(tmp_path):
    env = study_dir(tmp_path, TINY)
    _one_line_failure(_kdlab(tmp_path, env, "train", "teacher", "--params", "nope.yaml"), 2, "nope.yaml", "not found")
    meta = tmp_path / "data/prepared/meta.json"
    good = meta.read_text()
    meta.write_text("{not json")
    _one_line_failure(_kdlab(tmp_path, env, "train", "teacher"), 1, "data/prepared/meta.json is not valid JSON",
                      "dvc repro prepare")
    meta.write_text(good)
    assert _kdlab(tmp_path, env, "train", "teacher").returncode == 0
    partial = tmp_path / "data/teacher_logits.partial"
    partial.mkdir(parents=True)
    (partial / "chunk_00000.pt").write_bytes(b"half a chunk")
    _one_line_failure(_kdlab(tmp_path, env, "cache"), 1, "chunk_00000.pt is unreadable", "rm -r")
    shutil.rmtree(partial)
    assert _kdlab(tmp_path, env, "cache").returncode == 0
    teacher = tmp_path / "models/teacher.pt"
    teacher.write_bytes(teacher.read_bytes()[:1000])  # damaged
    _one_line_failure(_kdlab(tmp_path, env, "train", "students/kd-0"), 1,
                      "teacher_logits/train.pt was not built from the current models/teacher.pt", "damaged")
    _one_line_failure(_kdlab(tmp_path, env, "cache"), 1, "models/teacher.pt is unreadable", "dvc repro teacher")
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"not a database" * 100)
    _one_line_failure(_kdlab(tmp_path, env, "train", "students/raw-0"), 1, "mlflow.db")


def _idx(path: Path, array) -> None:
    """An MNIST-format idx file of bytes, gzipped, as the Debian package ships them."""
    import gzip

    import numpy as np

    a = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    path.write_bytes(gzip.compress(header + a.tobytes()))


def _fashion_copy(root: Path, n: int = 300, labels=None) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n), ("t10k", 100)):
        _idx(root / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28)))
        _idx(root / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, count) if labels is None or split == "t10k"
             else labels)
    return root


@pytest.mark.parametrize("damage, needles", [
    ("truncated", ("train-images-idx3-ubyte.gz cannot be read (EOFError", "truncated or corrupt copy", "reinstall")),
    ("corrupt", ("train-images-idx3-ubyte.gz cannot be read", "truncated or corrupt copy", "reinstall")),
    ("short", ("train-images-idx3-ubyte.gz holds", "where its header (300 x 28 x 28) needs", "reinstall")),
    ("labels out of range", ("the training split's labels run from 0 to 12, outside the 10 classes 0-9",)),
    ("too few labels", ("the training split has 300 images but 100 labels",)),
])
def test_a_damaged_fashion_mnist_copy_is_one_line_naming_it(in_tmp, monkeypatch, capsys, damage, needles):
    """Issue 31, item 4: a truncated or corrupt gz gave EOFError and zlib.error tracebacks; labels out of range passed
    prepare and failed the teacher with an IndexError; 100 labels for all the images was blamed on data.val_size."""
    import gzip

    (in_tmp / "params.yaml").write_text(yaml.safe_dump(shipped_with({}), sort_keys=False))  # fashion_mnist
    import numpy as np

    labels = {"labels out of range": np.r_[np.zeros(299), 12], "too few labels": np.zeros(100)}.get(damage)
    deb = _fashion_copy(in_tmp / "deb", labels=labels)
    images = deb / "train-images-idx3-ubyte.gz"
    if damage == "truncated":
        images.write_bytes(images.read_bytes()[: len(images.read_bytes()) // 2])
    elif damage == "corrupt":
        blob = bytearray(images.read_bytes())
        blob[len(blob) // 2: len(blob) // 2 + 64] = bytes(64)
        images.write_bytes(bytes(blob))
    elif damage == "short":  # a whole gzip stream of a cut file: the header promises more images than it holds
        images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-784]))
    monkeypatch.setattr(data_mod, "FASHION_MNIST_DEB_DIR", deb)
    assert cli.main(["prepare"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not (in_tmp / "data/prepared/meta.json").exists()


def test_a_read_only_store_is_one_line_with_its_cause(in_tmp, monkeypatch, caplog):
    """Issue 31, item 4: a read-only mlflow.db gave 91 lines (MLflow's two logged tracebacks) ending in SQLAlchemy's
    advice about autoflush; the one line now says the database is read-only."""
    db = in_tmp / "store.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    with tracking.run("student", "kd-0", {"loss.alpha": 0.5}, {"method": "kd", "seed": 0}) as run:
        run.log({"test_acc": 0.5})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///file:{db}?mode=ro&uri=true")
    caplog.clear()
    with pytest.raises(tracking.TrackingError, match="attempt to write a readonly database"):
        with tracking.run("student", "kd-1", {"loss.alpha": 0.5}, {"method": "kd", "seed": 1}) as run:
            run.log({"test_acc": 0.5})
    assert not [r for r in caplog.records if r.levelno >= 40], [r.getMessage()[:200] for r in caplog.records]


def test_a_full_disk_is_one_line_naming_the_file(in_tmp, monkeypatch, capsys):
    raw = shipped_with(TINY)
    (in_tmp / "params.yaml").write_text(yaml.safe_dump(raw))

    def full(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    assert cli.main(["prepare"]) == 1
    err = capsys.readouterr().err
    assert "cannot write data/prepared/train.pt (No space left on device)" in err, err
    assert not list((in_tmp / "data/prepared").glob("*.tmp")) and not list((in_tmp / "data/prepared").glob(".*"))


def test_ctrl_c_while_a_file_is_written_lands_after_it_is_complete(tmp_path):
    """A SIGINT (or SIGTERM) inside an atomic write takes effect once the file is written and in place: the
    checkpoint an interrupted stage resumes from is whole, and the stage stops with KeyboardInterrupt ("rerun the
    stage to resume"), not with torch's zip-writer error (seen in a fresh-clone CI run, SIGINT during
    torch.save of the epoch's checkpoint)."""
    import os
    import signal

    import torch

    from kdlab.infra import io

    path = tmp_path / "ckpt.pt"
    state = {"w": torch.arange(1000.0)}

    def write(f):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C half way through
        torch.save(state, f)

    with pytest.raises(KeyboardInterrupt):
        io._atomic(path, write)
    assert torch.equal(torch.load(path, weights_only=True)["w"], state["w"])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    assert not list(tmp_path.glob(".*.tmp"))
