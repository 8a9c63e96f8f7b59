"""The command line: per-command help, "did you mean" for typos, and `kdlab results`' table and CSV in percent."""
import subprocess
import sys

import pandas as pd
import pytest

from kdlab import cli
from kdlab.analysis import results


def _kdlab(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "kdlab", *args], capture_output=True, text=True, cwd=cwd,
                          env={**__import__("os").environ, "KDLAB_WARM": "0"})


@pytest.mark.parametrize("typo,meant", [("studnet", "train"), ("trian", "train"), ("reprot", "report"),
                                        ("resluts", "results"), ("evaluation", "evaluate")])
def test_a_typo_is_answered_with_the_closest_commands(typo, meant, capsys):
    assert cli.run([typo]) == 2
    err = capsys.readouterr().err
    assert f"no command {typo!r}" in err and f"`kdlab {meant}`" in err and "Traceback" not in err


def test_nothing_close_still_names_the_help():
    assert "did you mean" not in cli.did_you_mean("zzzzzz") and "kdlab --help" in cli.did_you_mean("zzzzzz")


def test_each_command_has_its_own_help():
    top = _kdlab("--help")
    assert top.returncode == 0 and all(c in top.stdout for c in cli.STAGES)
    train = _kdlab("train", "--help")
    assert train.returncode == 0 and "--study" in train.stdout and "--quick" not in train.stdout
    bench = _kdlab("bench", "--help")
    assert "--quick" in bench.stdout and "--study" not in bench.stdout
    wrong = _kdlab("bench", "--study", "x")  # an option of another command is refused by this one's parser
    assert wrong.returncode == 2 and "usage: kdlab bench" in wrong.stderr


@pytest.mark.parametrize("argv,said", [
    (["prune"], "prune is a named study's stage: kdlab prune --study studies/<name>/params.yaml"),
    (["cache", "--teacher", "main"], "--teacher is a named study's"),
    (["cache", "--study", "studies/q1/params.yaml", "--teacher", "nope"],
     "--teacher 'nope' is not one of studies/q1/params.yaml's cached teachers ['big', 'main', 'self', 'small']"),
    (["cache", "--study", "studies/q23/params.yaml", "--teacher", "a"], "studies/q23/params.yaml caches one teacher"),
    (["cka", "--study", "studies/q1/params.yaml"], "studies/q1/params.yaml has no cka stage (its stages: train, cache, "
                                                   "report)"),
    (["cka", "--study", "q1"], "studies/q1/params.yaml has no cka stage"),  # a study's name for its file
    (["report", "--study", "params.yaml"], "a named study's params file holds one section, the study's name"),
    (["prune", "--study", "studies/q9/params.yaml"], "no such file"),
])
def test_a_named_study_stage_refuses_wrong_arguments_in_one_line(argv, said, capsys, monkeypatch):
    """A stage of a named study (``--study``) is dispatched by the study's design (kdlab.analysis.<name>_design);
    a stage it lacks, a teacher it does not cache, or a file that is no named study's is refused before anything
    runs, exit 2."""
    from conftest import REPO

    monkeypatch.chdir(REPO)
    assert cli.run(argv) == 2
    err = capsys.readouterr().err
    assert said in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_the_old_study_commands_point_to_the_generic_ones():
    for old, new in (("q1_report", "report"), ("q23_prune", "prune"), ("q1_cache", "cache")):
        assert f"`kdlab {new}`" in cli.did_you_mean(old)


def test_results_prints_a_table_and_writes_percent():
    df = pd.DataFrame({"run": ["teacher", "raw-0", "raw-1", "q1/teacher.main", "q1/kd.main-e30-s0"],
                       "arm": ["teacher", "raw", "raw", "teacher", "kd.main-e30"],
                       "method": ["teacher", "raw", "raw", "teacher", "kd"],
                       "test_acc": [0.928, 0.88, 0.89, 0.8776, 0.86414], "ece": [0.01, 0.02, 0.03, 0.02, 0.02]})
    pct = results.in_percent(df)
    assert list(pct.test_acc) == [92.8, 88.0, 89.0, 87.76, 86.41] and list(df.test_acc)[0] == 0.928  # a copy
    table = results.summary_table(df).splitlines()
    assert table[0].split() == ["study", "arm", "runs", "test", "acc", "(%)", "SD", "(points)"]
    rows = [line.split() for line in table[1:]]
    assert rows[1] == ["default", "raw", "2", "88.50", "0.71"]  # seeds grouped: mean and SD in points
    assert rows[2][:3] == ["q1", "teacher.main", "1"]  # each teacher its own row
