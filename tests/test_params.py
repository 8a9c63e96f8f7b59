import pytest
import yaml

from conftest import REPO, shipped_with
from kdlab.infra import schema
from kdlab.pipeline import params
from kdlab.pipeline.params import ParamsError


def test_repo_params_yaml_is_valid():
    p = params.load(REPO / "params.yaml")
    assert p.data.name == "fashion_mnist"
    assert p.study.seeds == list(range(7))


def test_defaults_and_overrides():
    p = params.from_dict({}, ["loss.alpha=0.7", "study.seeds=[3, 4]", "cache.views=all"])
    assert p.loss.alpha == 0.7
    assert p.study.seeds == [3, 4]
    assert p.cache.views == "all"
    assert params.from_dict({"cache": {"views": 3}}).cache.views == 3


def test_flatten_has_dotted_keys():
    flat = schema.flatten(params.from_dict({}))
    assert flat["loss.alpha"] == 0.5
    assert flat["data.synthetic.classes"] == 4


BAD = [
    ({"trian": {}}, "trian", ["unknown key", "train"]),
    ({"train": {"lrr": 0.1}}, "train.lrr", ["unknown key", "batch_size"]),
    ({"data": {"name": "mnist"}}, "data.name", ["cifar10", "fashion_mnist", "synthetic"]),
    ({"teacher": {"arch": "vgg"}}, "teacher.arch", ["resnet20", "resnet50"]),
    ({"student": {"arch": "resnet7"}}, "student.arch", ["resnet8"]),
    ({"study": {"methods": ["kd", "fitnet9"]}}, "study.methods[1]", ["kd_correct_only"]),
    ({"study": {"methods": ["raw", "kd"]}}, "study.methods[0]", ["baseline"]),
    ({"study": {"methods": []}}, "study.methods", ["empty"]),
    ({"study": {"seeds": []}}, "study.seeds", ["empty"]),
    ({"study": {"seeds": [0, 0]}}, "study.seeds", ["duplicates"]),
    ({"study": {"seeds": [-1]}}, "study.seeds[0]", ["[0, 2**32)"]),
    ({"loss": {"alpha": 1.5}}, "loss.alpha", ["[0, 1]"]),
    ({"loss": {"alpha": -0.1}}, "loss.alpha", ["[0, 1]"]),
    ({"loss": {"temperature": 0}}, "loss.temperature", ["> 0"]),
    ({"loss": {"temperature": "hot"}}, "loss.temperature", ["number"]),
    ({"teacher": {"epochs": 0}}, "teacher.epochs", ["> 0"]),
    ({"student": {"epochs": 2.5}}, "student.epochs", ["integer"]),
    ({"train": {"batch_size": 0}}, "train.batch_size", ["> 0"]),
    ({"train": {"batch_size": -8}}, "train.batch_size", ["> 0"]),
    ({"train": {"schedule": "step"}}, "train.schedule", ["onecycle", "cosine"]),
    ({"train": {"device": "tpu"}}, "train.device", ["auto", "cpu", "cuda"]),
    ({"train": {"nesterov": "yes"}}, "train.nesterov", ["true or false"]),
    ({"cache": {"views": 0}}, "cache.views", ["all"]),
    ({"cache": {"views": 51}}, "cache.views", ["[1, 50]"]),
    ({"cache": {"views": "some"}}, "cache.views", ["all"]),
    ({"teacher": {"arch": "resnet50", "width": 0.5}}, "teacher.width", ["no width multiplier"]),
    ({"views": {"pad": -1}}, "views.pad", [">= 0"]),
    ({"data": {"synthetic": {"classes": 1}}}, "data.synthetic.classes", [">= 2"]),
    ({"study": {"seeds": list(range(21))}}, "study.seeds", ["at most 20"]),
    ({"data": {"val_size": 60000}}, "data.val_size", ["60000"]),
    ({"data": {"name": "cifar10", "val_size": 50000}}, "data.val_size", ["50000"]),
    ({"views": {"pad": 14}}, "views.pad", ["at most 13"]),
    ({"views": {"pad": 1, "flip": False}, "cache": {"views": 10}}, "cache.views", ["[1, 9]"]),
    ({"teacher": {"lr": 0}}, "teacher.lr", ["> 0"]),
    ({"teacher": {"channels_last": "yes"}}, "teacher.channels_last", ["auto"]),
    ({"train": {"momentum": 1.0}}, "train.momentum", ["[0, 1)"]),
    ({"train": {"label_smoothing": 1.0}}, "train.label_smoothing", ["[0, 1)"]),
    ({"train": {"threads": -1}}, "train.threads", [">= 0"]),
    ({"train": {"nproc": 0}}, "train.nproc", ["> 0"]),
    ({"data": {"synthetic": {"n_train": 0}}}, "data.synthetic.n_train", ["> 0"]),
    ({"study": "kd"}, "study", ["mapping"]),
    ({"study": {"seeds": "0,1"}}, "study.seeds", ["list"]),
    ({"methods": {"fitnett": {}}}, "methods.fitnett", ["fitnet", "dkd"]),
    ({"methods": {"fitnet": [1]}}, "methods.fitnet", ["mapping"]),
]


@pytest.mark.parametrize("raw, key, words", BAD)
def test_bad_params_name_the_key(raw, key, words):
    with pytest.raises(ParamsError) as e:
        params.from_dict(raw)
    assert e.value.key == key
    assert key in str(e.value)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_bad_override_syntax():
    with pytest.raises(ParamsError, match="key=value"):
        params.from_dict({}, ["loss.alpha"])


def test_load_rejects_non_mapping(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ParamsError, match="mapping"):
        params.load(f)


@pytest.mark.parametrize("raw, key, words", BAD)
def test_cli_refuses_each_bad_params_file_before_any_work(raw, key, words, in_tmp, capsys):
    """The catalogue through the command line: exit code 2, the key named, nothing written."""
    from kdlab import cli

    (in_tmp / "params.yaml").write_text(yaml.safe_dump(shipped_with(raw)))
    for stage in (["train", "teacher"], ["train", "students/kd-0"]):
        assert cli.main(stage) == 2
        assert key in capsys.readouterr().err
    assert sorted(p.name for p in in_tmp.iterdir()) == ["params.yaml"]


def test_bad_params_are_refused_without_importing_torch(tmp_path):
    """Validation needs only the registries' names, so a typo costs a fraction of a second, not torch's import."""
    import subprocess
    import sys

    code = ("import sys; from kdlab import cli; rc = cli.main(['train', 'teacher', '-S', 'teacher.arch=vgg']); "
            "print(rc, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == ["2", "False"], out.stdout + out.stderr
    assert "teacher.arch" in out.stderr


def test_every_method_file_registers_its_own_name():
    from kdlab import distill

    for name in distill.names():
        assert type(distill.build(name, params.from_dict({}))).name == name
