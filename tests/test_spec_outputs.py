"""scripts/spec_outputs.py: a metrics file written before runs carried their spec gets exactly the spec kdlab
train writes now, and nothing else changes; a file whose spec is not the params' is named."""
import json
import subprocess
import sys

import yaml
from conftest import REPO, shipped_with

from kdlab.analysis import results
from kdlab.pipeline import params
from kdlab.pipeline.spec import record


def _script(*args):
    return subprocess.run([sys.executable, str(REPO / "scripts/spec_outputs.py"), *args], capture_output=True,
                          text=True, timeout=300)


def test_the_spec_is_added_once_and_a_foreign_one_is_named(in_tmp):
    (in_tmp / "params.yaml").write_text(yaml.safe_dump(shipped_with({"study": {"seeds": [0]}})))
    p = params.load(in_tmp / "params.yaml")
    specs = {spec.name: spec for *_, spec in results.runs(p)}
    old = {"test_acc": 0.8125, "val_acc": 0.8, "epochs": 3, "wall_seconds": 1.5}
    for name in ("teacher", "kd-0"):
        path = specs[name].files[1]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(old))
    assert _script("--check").returncode == 1  # two files lack their spec
    res = _script()
    assert res.returncode == 0 and "spec added to 2 metrics files" in res.stdout, res.stdout + res.stderr
    kd = json.loads(specs["kd-0"].files[1].read_text())
    assert kd == {**old, "spec": json.loads(json.dumps(record(specs["kd-0"])))}
    assert kd["spec"]["method"] == "kd" and kd["spec"]["model_file"] == "models/students/kd-0.pt"
    assert _script().stdout.startswith("spec added to 0 metrics files") and _script("--check").returncode == 0
    # a file that says it is another run (here: another seed) is not overwritten but named
    kd["spec"]["seed"] = 1
    specs["kd-0"].files[1].write_text(json.dumps(kd))
    res = _script()
    assert res.returncode == 1 and "metrics/students/kd-0.json: carries another spec" in res.stderr
    assert json.loads(specs["kd-0"].files[1].read_text())["spec"]["seed"] == 1
