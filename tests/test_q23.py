"""Questions 2 and 3 with controls (kdlab.pipeline.q23, kdlab.analysis.q23_report, kdlab.core.cka and the two method files it added):
the estimators against independent computations, the methods on tiny models, the params checks, and the
report's numbers from a hand-made study. The pipeline itself runs end to end in tests/test_pipeline.py."""
import copy
import itertools

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO
from torch import nn

# ---------------------------------------------------------------- CKA

def test_unbiased_cka_scores_unrelated_wide_features_near_zero_where_the_biased_one_says_near_one():
    from kdlab.core.cka import both

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 5000, generator=g), torch.randn(200, 5000, generator=g)
    unrelated = both(x, y)
    assert unrelated["biased"] > 0.9 and abs(unrelated["unbiased"]) < 0.05, unrelated
    q, _ = torch.linalg.qr(torch.randn(64, 64, generator=g).double())
    z = torch.randn(300, 64, generator=g).double()
    same = both(z, 3 * z @ q)  # a rotation and a scale of the same features
    assert same["biased"] == pytest.approx(1, abs=1e-9) and same["unbiased"] == pytest.approx(1, abs=1e-9)


def test_unbiased_hsic_is_the_u_statistic_over_distinct_quadruples():
    """Song et al. (2012): the mean over ordered distinct (i, j, q, r) of K_ij L_ij + K_ij L_qr - 2 K_ij L_iq."""
    from kdlab.core.cka import unbiased_hsic

    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(7, 3, generator=g).double(), torch.randn(7, 2, generator=g).double()
    k, l_ = a @ a.T, b @ b.T
    terms = [k[i, j] * l_[i, j] + k[i, j] * l_[q, r] - 2 * k[i, j] * l_[i, q]
             for i, j, q, r in itertools.permutations(range(7), 4)]
    assert float(unbiased_hsic(k, l_)) == pytest.approx(float(torch.stack(terms).mean()), rel=1e-10)


# ---------------------------------------------------------------- the methods

def test_rkd_potentials_and_loss_by_hand():
    from kdlab.distill.rkd import angle_potential, distance_potential, rkd_loss

    e = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])  # a 3-4-5 right triangle, the right angle at 0
    d = distance_potential(e)
    assert d[0, 1] == pytest.approx(3 / 4) and d[1, 2] == pytest.approx(5 / 4) and d[0, 0] == 0
    cos = angle_potential(e)
    assert cos[0, 1, 2] == pytest.approx(0, abs=1e-6)            # at vertex 0, between 1 and 2
    assert cos[1, 0, 2] == pytest.approx(3 / 5)                  # at vertex 1, between 0 and 2
    # relations are what it matches: a scaled, shifted copy costs nothing, other relations do
    assert float(rkd_loss(2 * e + 1, e, 25, 50)) == pytest.approx(0, abs=1e-6)
    assert float(rkd_loss(e.flip(0) * torch.tensor([1.0, 3.0]), e, 25, 50)) > 0.1


def test_fitnet_select_hints_on_the_chosen_channels_only():
    from kdlab.core import models
    from kdlab.distill.fitnet_select import FitNetSelect, channel_importance, choose
    from kdlab.pipeline.params import LossParams

    ft = torch.zeros(4, 4, 2, 2)
    for ch, level in enumerate([0.1, 5.0, 1.0, 3.0]):
        ft[:, ch] = level * torch.tensor([1.0, -1.0]).repeat(4, 2, 1)  # mean |activation| = level
    imp = channel_importance(ft)
    assert imp.tolist() == pytest.approx([0.1, 5.0, 1.0, 3.0])
    assert choose(imp, 0.5, "top").tolist() == [1, 3] and choose(imp, 0.5, "bottom").tolist() == [0, 2]
    torch.manual_seed(0)
    drawn = choose(imp, 0.5, "random")
    assert len(set(drawn.tolist())) == 2 and choose(imp, 0.01, "top").tolist() == [1]  # at least one channel

    torch.manual_seed(0)
    student, teacher = models.build("resnet8", 1, 3, 0.25), models.build("resnet8", 1, 3, 0.5)
    m = FitNetSelect(LossParams(), {"layers": ["layer3"], "beta": 1.0, "kd": False, "k": 0.25, "select": "top"})
    m.attach(student, teacher, torch.randn(16, 1, 10, 10))
    kept = m.kept(0)
    assert len(kept) == round(0.25 * 32) and m.regressors[0][0].out_channels == len(kept)
    _, fs, ft = m.tapped(torch.randn(8, 1, 10, 10))
    other = ft[0].clone()
    dropped = [c for c in range(32) if c not in kept.tolist()]
    other[:, dropped] = 100.0  # the channels not chosen do not enter the hint
    assert m.feature_loss(fs, [other]).item() == pytest.approx(m.feature_loss(fs, ft).item())
    other[:, kept[:1]] += 1.0
    assert m.feature_loss(fs, [other]).item() != pytest.approx(m.feature_loss(fs, ft).item())


def test_recalibrated_batchnorm_holds_the_pruned_networks_own_statistics():
    from kdlab.pipeline.q23 import recalibrate_bn

    torch.manual_seed(0)
    conv, bn = nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3)
    model = nn.Sequential(conv, bn).eval()
    bn.running_mean.fill_(7.0)  # stale: another network's statistics
    images = torch.randn(40, 1, 6, 6)
    fixed = recalibrate_bn(model, images, batch_size=40)
    with torch.no_grad():
        act = conv(images)
    assert torch.allclose(fixed[1].running_mean, act.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(fixed[1].running_var, act.var(dim=(0, 2, 3), unbiased=True), atol=1e-4)
    assert bn.running_mean.eq(7.0).all() and not fixed.training and fixed[1].momentum == bn.momentum


# ---------------------------------------------------------------- params

def _shipped() -> dict:
    return yaml.safe_load((REPO / "studies/q23/params.yaml").read_text())


def _load(tmp_path, raw):
    from kdlab.pipeline import q23

    path = tmp_path / "q23.yaml"
    path.write_text(yaml.safe_dump(raw))
    return q23.load(path)


@pytest.mark.parametrize("change, key", [
    (lambda q: q["arms"].update(x={"method": "nope"}), "q23.arms.x.method"),
    (lambda q: q.update(carved=["dkd"], transfer=["raw", "kd"]), "q23.carved"),
    (lambda q: q["teachers"]["b"].update(arch="resnet8"), "q23.reference"),
    (lambda q: q.update(snapshots=[0, 10]), "q23.snapshots"),
    (lambda q: q["prune"].update(criteria=["l1", "psychic"]), "q23.prune.criteria"),
    (lambda q: q.update(transfer=["kd", "dkd"], carved=["kd"], pruned=["kd"]), "q23.transfer"),
    # issue 31, item 3: a named study's params checked like the root's, one line naming the key
    (lambda q: q["teachers"]["a"].update(lr=0), "q23.teachers.a.lr"),
    (lambda q: q["teachers"]["a"].update(seed=-1), "q23.teachers.a.seed"),
    (lambda q: q["teachers"]["a"].update(seed=2 ** 64), "q23.teachers.a.seed"),
    (lambda q: q["student"].update(width=0), "q23.student.width"),
    (lambda q: q["student"].update(arch="resnet18", width=0.5), "q23.student.width"),
    (lambda q: q.update(calibration_images=0), "q23.calibration_images"),
    (lambda q: q.update(seeds=[0, -1]), r"q23.seeds\[1\]"),
    (lambda q: q["prune"].update(finetune_steps=-1), "q23.prune.finetune_steps"),
    (lambda q: q["prune"].update(recalibration_images=-1), "q23.prune.recalibration_images"),
    (lambda q: q["prune"].update(calibration_images=0), "q23.prune.calibration_images"),
    (lambda q: q["prune"].update(max_ratio=1.5), "q23.prune.max_ratio"),
])
def test_params_errors_name_the_key(tmp_path, change, key):
    from kdlab.infra.schema import ParamsError

    raw = _shipped()
    _load(tmp_path, raw)  # the shipped study loads
    change(raw["q23"])
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        _load(tmp_path, raw)


def test_every_student_group_once_with_the_shipped_params():
    from kdlab.pipeline import q23

    q = q23.load(REPO / "studies/q23/params.yaml")
    groups = q23.expected_students(q)
    assert len(groups) == len(set(groups)) == len(q.transfer) + len(q.selective) + len(q.carved) + 1 + 2 * len(q.pruned)
    assert ("kd", "random", q.matched_epochs) in groups and ("kd", "carved", q.epochs) in groups


# ---------------------------------------------------------------- the report's numbers

def _study(effects: dict, noise: dict) -> pd.DataFrame:
    """A hand-made study: every group of the shipped params over 3 seeds, accuracy 0.80 + effect + seed noise."""
    from kdlab.analysis.q23_report import group
    from kdlab.pipeline import q23

    q = q23.load(REPO / "studies/q23/params.yaml")
    rows = []
    for arm, init, epochs in q23.expected_students(q):
        g = group(arm, init, epochs)
        for i, seed in enumerate(q.seeds):
            rows.append({"group": g, "arm": arm, "init": init, "epochs": epochs, "seed": seed, "params": 19810,
                         "val_acc": 0.0, "test_acc": 0.80 + effects.get(g, 0.0) + noise.get(g, [0, 0, 0])[i]})
    return q, pd.DataFrame(rows)


def test_the_2x2_and_its_interaction_by_hand():
    from kdlab.analysis.q23_report import init

    effects = {"kd.carved-e10": 0.05, "raw.carved-e10": 0.03, "kd.random-e10": 0.01, "kd.random-e40": 0.02}
    noise = {"kd.carved-e10": [0.002, -0.001, 0.0], "raw.random-e10": [0.0, 0.003, -0.002]}
    q, df = _study(effects, noise)
    c = init(q, df)["comparisons"]
    ck, cr = 0.85 + np.array(noise["kd.carved-e10"]), np.full(3, 0.83)
    rk, rr = np.full(3, 0.81), 0.80 + np.array(noise["raw.random-e10"])
    assert c["weights_under_kd"]["diff"] == pytest.approx(np.mean(ck - rk))
    assert c["weights_under_labels"]["diff"] == pytest.approx(np.mean(cr - rr))
    assert c["interaction"]["diff"] == pytest.approx(np.mean((ck - rk) - (cr - rr)))
    assert c["carved_kd_vs_matched_kd"]["diff"] == pytest.approx(np.mean(ck - 0.82))
    d = (ck - rk) - (cr - rr)  # the interaction's paired t by hand
    t = d.mean() / (d.std(ddof=1) / np.sqrt(3))
    from scipy import stats as st

    assert c["interaction"]["p"] == pytest.approx(2 * st.t.sf(abs(t), 2))
    ps = {k: v["p"] for k, v in c.items()}
    finite = sorted((p, k) for k, p in ps.items() if p is not None)
    m = len(finite)  # Holm within exactly this family
    assert c[finite[0][1]]["p_holm"] == pytest.approx(min(1.0, m * finite[0][0]))


def test_verdicts_follow_holm_within_the_transfer_table():
    from kdlab.analysis.q23_report import said, transfer

    # dkd clearly above raw with little noise; at within noise
    q, df = _study({"dkd.random-e10": 0.04}, {"dkd.random-e10": [0.001, -0.001, 0.0005],
                                               "at.random-e10": [0.01, -0.02, 0.012]})
    t = transfer(q, df)
    c = t["comparisons"]
    assert said(c["dkd_vs_raw"]) == "above" and c["dkd_vs_raw"]["p_holm"] < 0.05
    assert said(c["at_vs_raw"]).startswith("inconclusive; detectable: ")
    assert set(c) == {f"{a}_vs_raw" for a in q.transfer if a != "raw"} | {
        f"{a}_vs_kd" for a in q.transfer if a not in ("raw", "kd")}
    assert t["acc"]["dkd.random-e10"]["mean"] == pytest.approx(0.84 + 0.0005 / 3)


def test_pruning_cuts_read_in_order():
    from kdlab.analysis.q23_report import cuts

    names = ["channels+blocks.l1", "teacher", "iterative.l1", "blocks+channels.l1", "channels.l1", "blocks",
             "channels.random"]
    assert list(cuts(dict.fromkeys(names, {}))) == ["teacher", "blocks", "channels.l1", "channels.random",
                                                    "iterative.l1", "blocks+channels.l1", "channels+blocks.l1"]


def test_snapshots_keep_the_students_weights_at_the_start_of_the_next_epoch(tmp_path):
    """A run's snapshots (kdlab.pipeline.train): epoch k's file is the model's state when epoch k + 1 begins
    (epoch 0: before training); as weights alone, or as a model file that loads like any other."""
    from kdlab.core import models
    from kdlab.pipeline.params import ModelParams
    from kdlab.pipeline.train import RunSpec, _snapshotter
    from kdlab.pipeline.workspace import Context, model_from_checkpoint

    ctx = Context(torch.device("cpu"), {"channels": 1, "classes": 3, "sha256": "d", "image_size": 10}, {}, None)
    student = models.build("resnet8", 1, 3, 0.25)
    start = copy.deepcopy(student.state_dict())
    for as_model in (False, True):
        out = tmp_path / str(as_model)
        spec = RunSpec("s", "student", ModelParams("resnet8", 0.25), 0, (out / "m.pt", out / "m.json"),
                       snapshots=(0, 2), snapshot_dir=out, snapshot_as_model=as_model)
        save = _snapshotter(spec, ctx, student)
        student.load_state_dict(start)
        for epoch in (1, 2, 3):
            save(epoch)
            with torch.no_grad():
                student.fc.weight.add_(1.0)  # "training"
        assert sorted(x.name for x in out.iterdir()) == ["e0.pt", "e2.pt"]
        saved = {e: torch.load(out / f"e{e}.pt", weights_only=True) for e in (0, 2)}
        assert torch.equal(saved[0]["state_dict"]["fc.weight"], start["fc.weight"])
        assert torch.allclose(saved[2]["state_dict"]["fc.weight"], start["fc.weight"] + 2.0)
        assert saved[2]["epoch"] == 2 and ("arch" in saved[2]) == as_model
    rebuilt = model_from_checkpoint(saved[2], ctx)
    assert torch.equal(rebuilt.fc.weight, saved[2]["state_dict"]["fc.weight"])
    assert _snapshotter(RunSpec("s", "student", ModelParams(), 0, (out, out)), ctx, student) is None
