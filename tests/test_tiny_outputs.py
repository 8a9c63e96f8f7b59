"""scripts/tiny_outputs.py's fingerprints: blind to timings and input stamps, not to anything else."""
import json
import sys

import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import tiny_outputs  # noqa: E402


def test_a_fingerprint_ignores_timings_and_stamps_and_sees_weights_and_metrics(tmp_path):
    def model(w, seconds, stamp):
        path = tmp_path / f"m{len(list(tmp_path.iterdir()))}.pt"
        torch.save({"state_dict": {"w": w, "n": torch.tensor(3)}, "teacher_sha256": stamp,
                    "history": [{"epoch": 1, "val_acc": 0.5, "seconds": seconds}]}, path)
        return tiny_outputs.fingerprint(path)

    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    base = model(w, 1.0, "a")
    assert model(w.clone(), 2.5, "b") == base
    assert model(w.to(torch.bfloat16), 1.0, "a") != base
    w2 = w.clone()
    w2[1, 2] = torch.nextafter(w2[1, 2], torch.tensor(100.0))  # one float one ulp off
    assert model(w2, 1.0, "a") != base

    def metrics(**kv):
        path = tmp_path / f"j{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps(kv))
        return tiny_outputs.fingerprint(path)

    first = metrics(test_acc=0.9, train_seconds=3.0, images_per_second=100.0)
    assert metrics(test_acc=0.9, train_seconds=9.0, images_per_second=50.0) == first
    assert metrics(test_acc=0.91, train_seconds=3.0, images_per_second=100.0) != first
    assert tiny_outputs.compare({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "4"}) == [
        "b: differs", "c: missing in the first"]


def test_the_rename_of_outputs_changes_names_only_and_the_committed_ones_are_renamed(tmp_path):
    """scripts/rename_outputs.py (issue 27, item 6): old tags and keys become what the renamed code writes
    (kdlab.analysis.q1_design / q23_design, kdlab.pipeline.stages, kdlab.analysis.evaluate), weights and every
    other key untouched; a second pass finds nothing; and this repository's committed JSON outputs carry no old
    name (its model files are checked where they are pulled)."""
    import rename_outputs

    from kdlab.analysis import q1_design

    state = {"w": torch.arange(4.0)}
    old = {"default": {"variant": "kd"},
           "q1": {"variant": "kd", "q1_teacher": "main", "width": 0.5, "epochs": 30},
           "q23": {"variant": "fitnet_kd", "q23_arm": "fitnet_kd", "q23_group": "fitnet_kd.random-e30",
                   "method": "fitnet", "init": "random", "epochs": 30}}
    for study, tags in old.items():
        folder = tmp_path / rename_outputs.STUDENTS[study]
        folder.mkdir(parents=True)
        torch.save({"arch": "resnet8", "state_dict": state, "seed": 0, "data_sha256": "d", **tags}, folder / "s.pt")
    (tmp_path / "metrics/q1/tests").mkdir(parents=True)
    (tmp_path / "metrics/q1/tests/r.json").write_text(json.dumps({"variant": "ls", "teacher": None, "val_acc": 0.5}))
    (tmp_path / "metrics/runs.json").write_text(json.dumps({"teacher": {"test_acc": 0.9},
                                                            "kd-0": {"test_acc": 0.8, "variant": "kd", "seed": 0}}))
    (tmp_path / "metrics/summary.json").write_text(json.dumps({"variants": {"kd": {}}, "comparisons": {}}))
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots/accuracy.json").write_text(json.dumps([{"run": "kd-0", "variant": "kd", "seed": 0}]))
    assert rename_outputs.rename(tmp_path, check=True) == {"model files": 3, "q1 test records": 1,
                                                           "evaluation files": 3}
    rename_outputs.rename(tmp_path)
    assert rename_outputs.rename(tmp_path, check=True) == {"model files": 0, "q1 test records": 0,
                                                           "evaluation files": 0}
    new = {s: torch.load(tmp_path / rename_outputs.STUDENTS[s] / "s.pt", weights_only=True) for s in old}
    assert list(new["default"])[-2:] == ["method", "arm"] and new["default"]["arm"] == "kd"
    assert {k: new["q1"][k] for k in ("method", "arm", "q1_teacher", "width", "epochs")} == {
        "method": "kd", "arm": q1_design.arm_name("kd", "main", 30), "q1_teacher": "main", "width": 0.5, "epochs": 30}
    assert {k: v for k, v in new["q23"].items() if k in ("method", "arm", "q23_arm", "init", "variant", "q23_group")} \
        == {"method": "fitnet", "arm": "fitnet_kd.random-e30", "q23_arm": "fitnet_kd", "init": "random"}
    assert all(torch.equal(n["state_dict"]["w"], state["w"]) and n["data_sha256"] == "d" for n in new.values())
    assert json.loads((tmp_path / "metrics/q1/tests/r.json").read_text()) == {"method": "ls", "teacher": None,
                                                                              "val_acc": 0.5}
    assert json.loads((tmp_path / "metrics/runs.json").read_text())["kd-0"] == {"test_acc": 0.8, "method": "kd",
                                                                                 "seed": 0}
    assert "methods" in json.loads((tmp_path / "metrics/summary.json").read_text())
    assert rename_outputs.rename(REPO, check=True) == {"model files": 0, "q1 test records": 0, "evaluation files": 0}
