"""`kdlab bench --quick` on tiny sizes: every row of the table is measured (torchdistill included, installed by
the `bench` extra), and the GPU script's CPU smoke run completes."""
import json
import subprocess
import sys

import yaml

from conftest import REPO, shipped_with, tiny
from kdlab import cli
from kdlab.core import data
from kdlab.infra import runtime
from kdlab.pipeline import bench, params, workspace

TINY = tiny({"data": {"val_size": 40, "synthetic": {"n_train": 200, "n_test": 40}},
             "train": {"batch_size": 16, "eval_batch_size": 1024, "compile": "auto"}})


def test_bench_quick_measures_every_row(in_tmp, capsys):
    (in_tmp / "params.yaml").write_text(yaml.safe_dump(shipped_with(TINY)))
    assert cli.main(["bench", "--quick", "--workers", "0"]) == 0
    result = json.loads((in_tmp / workspace.BENCH_JSON).read_text())
    # every row measured, but for fp32 compiled steps on CPUs where they crash (said in the table)
    assert set(result["images_per_second"]) | set(result["skipped"]) == set(bench.ROWS), result
    assert set(result["skipped"]) <= {"kd_compiled"}
    assert bool(result["skipped"]) == (not runtime.bf16_cpu())
    assert all(v > 0 for v in result["images_per_second"].values())
    table = (in_tmp / workspace.BENCH_MD).read_text()
    for label in bench.ROWS.values():
        assert f"| {label} |" in table
    assert "not installed" not in table
    assert result["machine"]["cores"] >= 1 and result["student"] == "resnet8 x0.25"


def test_gpu_script_smoke_run_on_the_cpu(in_tmp):
    data.prepare(params.from_dict(TINY).data, workspace.PREPARED)  # data/prepared, as the GPU machine gets it carried over
    out = in_tmp / "gpu.json"
    # question 1's preset with the smoke run's architectures (resnet8 teacher, resnet14 the others)
    preset = yaml.safe_load((REPO / "studies/q1/params.gpu.yaml").read_text())
    for name, t in preset["q1"]["teachers"].items():
        t["arch"] = "resnet8" if name == "main" else "resnet14"
    (in_tmp / "q1.yaml").write_text(yaml.safe_dump(preset))
    res = subprocess.run([sys.executable, str(REPO / "scripts/gpu_bench.py"), "--smoke", "--no-compile",
                          "--prepared", str(in_tmp / "data/prepared"), "--out", str(out), "--q1", str(in_tmp / "q1.yaml")],
                         capture_output=True, text=True, env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"},
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    figures = json.loads(out.read_text())
    assert figures["warm_fork"]["ok"], res.stdout  # a child forked before any device use trained
    assert {"raw", "kd", "kd_online", "teacher_forward"} <= set(figures["throughput"])
    assert figures["projection"]["total_min"] > 0
    assert set(figures["throughput"]["train"]) == {"resnet8", "resnet14"}  # the teachers' measured steps
    q1 = figures["projection_q1"]
    # 5 seeds x (raw and ls 2 x (75+100); kd, kd_correct_only 2 x 175 + 3 teachers x 100 + 4 controls x 100;
    # kd_online 175) student epochs
    assert q1["student_epochs"] == 5 * (350 + 350 + 300 + 400 + 175) and q1["total_min"] > q1["students_min"] > 0
    run = figures["real_run"]
    assert 0 <= run["teacher"]["test_acc"] <= 1 and run["student_kd_online"]["seconds_per_epoch"] > 0


def test_gpu_train_check_smoke_run_on_the_cpu(tmp_path):
    """scripts/gpu_train_check.py (the one training path, every init, on the GPU machine) in its smoke mode:
    every run trains through kdlab.pipeline.train, and the teacher's snapshot is where its spec puts it."""
    out = tmp_path / "check.json"
    res = subprocess.run([sys.executable, str(REPO / "scripts/gpu_train_check.py"), "--smoke", "--work",
                          str(tmp_path / "work"), "--out", str(out)], capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    got = json.loads(out.read_text())
    # the default study's teacher and students; q23's teacher, a carved student, a pruned one and a pruned shape
    # from scratch at matched compute (e7: 2 x 2 epochs as the matched budget counts them, plus 3 pruning steps x
    # 2 KD steps = 3 epochs of 2 steps)
    assert set(got["runs"]) == {"teacher", "students/raw-0", "students/kd-0", "students/kd_online-0",
                                "q23 teachers/a", "q23 students/kd.carved-e2-s0",
                                "q23 students/kd.pruned-l1-x1.0-e2-s0", "q23 students/kd.shape-l1-it-x0.25-e7-s0"}
    assert all(0 <= r["test_acc"] <= 1 and r["best_epoch"] >= 1 for r in got["runs"].values())
    assert got["q23_teacher_files"] == ["e1.pt", "final.pt"]
