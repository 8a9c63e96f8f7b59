"""Reports and tables describe runs with the params the runs recorded (dvc.lock), or refuse naming the keys
(issue 31, item 1). The end-to-end case, on a reproduced study, is in tests/test_pipeline.py."""
import pytest
import yaml

from conftest import shipped_with


def _lock(stages: dict) -> str:
    return yaml.safe_dump({"schema": "2.0", "stages": stages}, sort_keys=False)


@pytest.fixture
def study(in_tmp):
    """The shipped params and a lock whose students ran at the shipped alpha; the report's own entry is older."""
    params = shipped_with({})
    (in_tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    alpha = params["loss"]["alpha"]
    (in_tmp / "dvc.lock").write_text(_lock({
        "teacher": {"cmd": "kdlab train teacher", "params": {"params.yaml": {"teacher": params["teacher"]}}},
        "student@kd-0": {"cmd": "kdlab train students/kd-0", "params": {"params.yaml": {
            "loss": params["loss"], "cache.views": params["cache"]["views"]}}},
        "student@kd-1": {"cmd": "kdlab train students/kd-1", "params": {"params.yaml": {"loss": params["loss"]}}},
        "report": {"cmd": "kdlab report", "params": {"params.yaml": {"loss": {**params["loss"], "alpha": 0.123}}}},
    }))
    return in_tmp, alpha


@pytest.mark.parametrize("command", ["report", "results", "evaluate"])
def test_a_command_that_describes_runs_refuses_params_they_did_not_use(study, command, capsys):
    from kdlab import cli

    root, alpha = study
    other = round(alpha + 0.4, 3)
    assert cli.run([command, "-S", f"loss.alpha={other}"]) == 1
    err = capsys.readouterr().err
    assert f"loss.alpha is {other} here but the runs used {alpha}" in err, err
    assert "student@kd-0 and 1 more" in err and "dvc repro" in err, err
    # refused before any work: no report, no table, no MLflow study named for the other alpha
    assert not (root / "reports").exists() and not (root / "metrics").exists()
    assert not (root / "mlflow.db").exists()


def test_an_edited_params_file_is_refused_too_and_every_key_is_named(study, capsys):
    from kdlab import cli

    root, alpha = study
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["loss"]["temperature"] = raw["loss"]["temperature"] + 1
    raw["teacher"]["epochs"] = raw["teacher"]["epochs"] + 5
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert cli.run(["results"]) == 1
    err = capsys.readouterr().err
    assert "loss.temperature is" in err and "teacher.epochs is" in err and "(dvc.lock: teacher)" in err, err


def test_params_that_agree_pass_and_later_stages_are_not_held_against_a_command(study):
    from kdlab.pipeline import recorded

    recorded.check("report", "params.yaml", [])  # the report's own older entry (alpha 0.123) is not compared
    recorded.check("evaluate", "params.yaml", [])
    with pytest.raises(Exception, match="loss.alpha is 0.123 here"):
        recorded.check("report", "params.yaml", ["loss.alpha=0.123"])


def test_a_recorded_key_the_params_no_longer_set_is_named(study):
    from kdlab.pipeline import recorded

    root, _ = study
    raw = yaml.safe_load((root / "params.yaml").read_text())
    del raw["cache"]["views"]
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(Exception, match=r"cache.views is 'not set' here"):
        recorded.check("report", "params.yaml", [])


def test_a_named_study_is_held_to_its_own_lock_and_the_file_it_reads(in_tmp):
    from kdlab.pipeline import recorded

    (in_tmp / "params.yaml").write_text(yaml.safe_dump(shipped_with({}), sort_keys=False))
    (in_tmp / "studies/q1").mkdir(parents=True)
    (in_tmp / "studies/q1/params.yaml").write_text(yaml.safe_dump({"q1": {"effect": 0.5, "seeds": [0, 1]}}))
    (in_tmp / "studies/q1/dvc.lock").write_text(_lock({
        "q1_student@kd-0": {"cmd": "kdlab train", "params": {"studies/q1/params.yaml": {"q1.seeds": [0, 1]}}},
        "q1_report": {"cmd": "kdlab report --study studies/q1/params.yaml",
                      "params": {"studies/q1/params.yaml": {"q1.effect": 0.9}}}}))
    recorded.check("report", "params.yaml", [], study="studies/q1/params.yaml")
    (in_tmp / "other.yaml").write_text(yaml.safe_dump({"q1": {"effect": 0.5, "seeds": [0, 1, 2]}}))
    with pytest.raises(Exception, match=r"studies/q1/params.yaml:q1.seeds is \[0, 1, 2\] here but the runs used "
                                        r"\[0, 1\] \(studies/q1/dvc.lock: q1_student@kd-0\)"):
        recorded.check("report", "params.yaml", [], study="other.yaml")


def test_a_pipeline_never_reproduced_has_no_record_to_hold(in_tmp):
    from kdlab.pipeline import recorded

    (in_tmp / "params.yaml").write_text(yaml.safe_dump(shipped_with({}), sort_keys=False))
    recorded.check("report", "params.yaml", ["loss.alpha=0.9"])  # no dvc.lock: nothing recorded, nothing compared


def test_a_lock_entry_of_a_stage_since_removed_is_not_compared(study):
    """DVC keeps lock entries of stages no longer in dvc.yaml (the committed lock holds the old question-2 stages):
    they describe no run of this pipeline."""
    from kdlab.pipeline import recorded

    root, _ = study
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    lock["stages"]["parts"] = {"cmd": "kdlab parts", "params": {"params.yaml": {"parts.method": "fitnet"}}}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    with pytest.raises(Exception, match="parts.method is 'not set' here"):
        recorded.check("report", "params.yaml", [])
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {s: {"cmd": "true"} for s in
                                                              ("teacher", "student", "report")}}))
    recorded.check("report", "params.yaml", [])
