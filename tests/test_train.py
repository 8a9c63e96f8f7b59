import torch

from kdlab import distill
from kdlab.core import models, views
from kdlab.core.loader import Normalize, TrainBatches
from kdlab.core.train import WeightAverage, accuracy, fit, make_schedule, predict
from kdlab.infra import runtime
from kdlab.pipeline import params


def _train_once(seed: int):
    p = params.from_dict({"train": {"batch_size": 32, "eval_batch_size": 64}})
    runtime.setup(p.train, seed)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (96, 1, 8, 8), dtype=torch.uint8, generator=g)
    labels = (images.float().mean(dim=(1, 2, 3)) > 127.5).long()
    norm = Normalize([0.5], [0.3], "cpu")
    table = views.view_table(96, 1, True, "all", 0)
    batches = TrainBatches(images, labels, norm, 32, 1, table, seed=seed)
    model = models.build("resnet8", 1, 2, 0.25)
    res = fit(model, distill.build("raw", p), batches, (images[:40], labels[:40]), 2, 0.05, p.train, "t")
    return res


def test_training_is_deterministic_on_cpu_for_a_seed():
    a, b, c = _train_once(3), _train_once(3), _train_once(4)
    for k in a.last_state:
        assert torch.equal(a.last_state[k], b.last_state[k]), k
    assert any(not torch.equal(a.last_state[k], c.last_state[k]) for k in a.last_state)
    assert a.history == [{**r, "seconds": a.history[i]["seconds"]} for i, r in enumerate(b.history)]
    assert a.best_epoch in (1, 2) and a.best_val_acc == max(r["val_acc"] for r in a.history)


def test_schedules_warm_up_then_decay():
    for schedule in ("onecycle", "cosine"):
        p = params.from_dict({"train": {"schedule": schedule, "warmup": 0.25}})
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = make_schedule(opt, 100, p.train)
        lrs = []
        for _ in range(100):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert lrs[0] < lrs[10] < lrs[24] == 1.0, schedule
        assert lrs[24] > lrs[60] > lrs[99] and lrs[99] < 0.05, schedule


def test_predict_and_accuracy():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]))
        model[1].bias.zero_()
    images = torch.tensor([[[[255, 0], [0, 0]]], [[[0, 0], [0, 0]]]], dtype=torch.uint8)
    logits = predict(model, images, torch.tensor([0, 1]), Normalize([0.5], [1.0], "cpu"), 1)
    assert logits.shape == (2, 2)
    assert accuracy(logits, torch.tensor([0, 1])) == 1.0


def _fitnet_run(tmp_path, interrupt_after: int | None, ema: float = 0.0):
    """A FitNet student (its regressor trained too) for 2 epochs, optionally stopped after an epoch and resumed:
    (student, method, the fit's result)."""
    p = params.from_dict({"train": {"batch_size": 32, "eval_batch_size": 64, "compile": False, "ema": ema},
                          "methods": {"fitnet": {"layers": ["layer2"], "kd": False}}})
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (96, 1, 8, 8), dtype=torch.uint8, generator=g)
    labels = (images.float().mean(dim=(1, 2, 3)) > 127.5).long()
    norm = Normalize([0.5], [0.3], "cpu")
    batches = TrainBatches(images, labels, norm, 32, 1, views.view_table(96, 1, True, "all", 0), seed=0)

    def build():
        runtime.setup(p.train, 0)
        teacher, student = models.build("resnet8", 1, 2, 0.5).eval(), models.build("resnet8", 1, 2, 0.25)
        method = distill.build("fitnet", p)
        method.attach(student, teacher, norm(images[:8]))
        return student, method

    ckpt = tmp_path / "fitnet.pt"

    def stop(row):
        if row["epoch"] == interrupt_after:
            raise KeyboardInterrupt

    student, method = build()
    try:
        res = fit(student, method, batches, (images[:40], labels[:40]), 2, 0.05, p.train, "t", stop, ckpt, "fp")
    except KeyboardInterrupt:
        student, method = build()  # a new process: fresh models, the checkpoint on disk
        res = fit(student, method, batches, (images[:40], labels[:40]), 2, 0.05, p.train, "t", None, ckpt, "fp")
    return student, method, res


def test_a_resumed_fitnet_run_equals_an_uninterrupted_one(tmp_path, capsys):
    """The method's own trainable parts (FitNet's regressor) are checkpointed and resumed with the student:
    a fresh regressor in epoch 2 would give other weights than the uninterrupted run."""
    a_student, a_method, _ = _fitnet_run(tmp_path / "a", None)
    assert "resuming" not in capsys.readouterr().out
    b_student, b_method, _ = _fitnet_run(tmp_path / "b", 1)
    assert "resuming after epoch 1" in capsys.readouterr().out
    for k, v in a_student.state_dict().items():
        assert torch.equal(v, b_student.state_dict()[k]), k
    for k, v in a_method.state_dict().items():
        assert torch.equal(v, b_method.state_dict()[k]), k
    assert any(k.startswith("regressors.") for k in a_method.state_dict())


def test_weight_average_lerps_weights_and_statistics_and_copies_counters():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    avg = WeightAverage(model, 0.75)
    before = {k: v.clone() for k, v in avg.model.state_dict().items()}
    model.train()(torch.randn(4, 1, 3, 3))  # BN statistics and its counter move
    with torch.no_grad():
        model[0].weight.add_(1.0)
    avg.update()
    for k, v in avg.model.state_dict().items():
        now = model.state_dict()[k]
        want = before[k] * 0.75 + now * 0.25 if v.is_floating_point() else now
        assert torch.allclose(v, want), k
    assert int(avg.model[1].num_batches_tracked) == 1 and not torch.equal(avg.model[0].weight, model[0].weight)


def test_train_ema_keeps_the_average_and_resumes_it(tmp_path, capsys):
    """With train.ema the average, not the live weights, is validated and returned, and an interrupted run
    resumes the average too: its result equals the uninterrupted run's."""
    student, _, a = _fitnet_run(tmp_path / "a", None, ema=0.9)
    assert any(not torch.equal(v, student.state_dict()[k]) for k, v in a.last_state.items() if v.is_floating_point())
    _, _, b = _fitnet_run(tmp_path / "b", 1, ema=0.9)
    assert "resuming after epoch 1" in capsys.readouterr().out
    for k, v in a.last_state.items():
        assert torch.equal(v, b.last_state[k]), k
    assert a.history[-1]["val_acc"] == b.last_val_acc
