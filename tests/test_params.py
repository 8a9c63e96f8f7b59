import pytest
import yaml

from conftest import REPO
from kdlab import params
from kdlab.params import ParamsError


def test_repo_params_yaml_is_valid():
    p = params.load(REPO / "params.yaml")
    assert p.data.name == "fashion_mnist"
    assert p.study.seeds == [0, 1, 2]


def test_defaults_and_overrides():
    p = params.from_dict({}, ["loss.alpha=0.7", "study.seeds=[3, 4]", "cache.views=all"])
    assert p.loss.alpha == 0.7
    assert p.study.seeds == [3, 4]
    assert p.cache.views == "all"
    assert params.from_dict({"cache": {"views": 3}}).cache.views == 3


def test_flatten_has_dotted_keys():
    flat = params.flatten(params.from_dict({}))
    assert flat["loss.alpha"] == 0.5
    assert flat["data.synthetic.classes"] == 4


@pytest.mark.parametrize("raw, key, words", [
    ({"trian": {}}, "trian", ["unknown key", "train"]),
    ({"train": {"lrr": 0.1}}, "train.lrr", ["unknown key", "batch_size"]),
    ({"data": {"name": "mnist"}}, "data.name", ["cifar10", "fashion_mnist", "synthetic"]),
    ({"teacher": {"arch": "vgg"}}, "teacher.arch", ["resnet20", "resnet50"]),
    ({"student": {"arch": "resnet7"}}, "student.arch", ["resnet8"]),
    ({"study": {"variants": ["kd", "fitnet9"]}}, "study.variants[1]", ["kd_correct_only"]),
    ({"study": {"variants": ["raw", "kd"]}}, "study.variants[0]", ["baseline"]),
    ({"study": {"variants": []}}, "study.variants", ["empty"]),
    ({"study": {"seeds": []}}, "study.seeds", ["empty"]),
    ({"study": {"seeds": [0, 0]}}, "study.seeds", ["duplicates"]),
    ({"study": {"seeds": [-1]}}, "study.seeds[0]", [">= 0"]),
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
])
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


def test_cli_refuses_bad_params_before_work(tmp_path, capsys):
    from kdlab import cli

    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump({"loss": {"alpha": 2}}))
    assert cli.main(["teacher", "--params", str(f)]) == 2
    assert "loss.alpha" in capsys.readouterr().err
