"""Questions 2 and 3 with controls (kdlab.analysis.q23_design, kdlab.analysis.q23_report, kdlab.core.cka and the two method files it added):
the estimators against independent computations, the methods on tiny models, the params checks, and the
report's numbers from a hand-made study. The pipeline itself runs end to end in tests/test_pipeline.py."""
import copy
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import REPO
from torch import nn

from kdlab.infra.schema import ParamsError

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


def test_loss_importance_is_the_teachers_loss_rise_when_a_channel_is_zeroed():
    """fitnet_select's ``importance: loss``: a teacher whose head reads only channel 1 of its tapped layer (and
    channel 2 a little) ranks 1 first, 2 second, and the unused channels 0 and 3 at exactly no rise."""
    from kdlab.distill.fitnet_select import FitNetSelect, choose, loss_importance
    from kdlab.pipeline.params import LossParams

    head = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[:, 1] = torch.tensor([3.0, -1.0, -2.0])
        head.weight[:, 2] = torch.tensor([0.5, 0.0, -0.5])
    teacher = nn.Sequential()
    teacher.add_module("layer3", nn.Conv2d(1, 4, 1, bias=False))
    teacher.add_module("pool", nn.AdaptiveAvgPool2d(1))
    teacher.add_module("flat", nn.Flatten())
    teacher.add_module("fc", head)
    with torch.no_grad():
        teacher.layer3.weight.fill_(1.0)
    teacher.eval()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(50, 1, 4, 4, generator=g) + 0.5
    labels = torch.zeros(50, dtype=torch.long)  # class 0: channel 1 helps it most
    rises = loss_importance(teacher, "layer3", images, labels, batch_size=16)
    with torch.no_grad():
        pooled = teacher.pool(teacher.layer3(images)).flatten(1)
        base = F.cross_entropy(head(pooled), labels).item()
        pooled[:, 1] = 0
        by_hand = F.cross_entropy(head(pooled), labels).item() - base
    assert rises[1].item() == pytest.approx(by_hand, rel=1e-5) and by_hand > 0.5
    assert rises[0].item() == 0.0 and rises[3].item() == 0.0 and 0 < rises[2].item() < rises[1].item()
    assert choose(rises, 0.5, "top").tolist() == [1, 2]
    # the method measures it on the example batch attach() gets, and refuses without labels
    m = FitNetSelect(LossParams(), {"layers": ["layer3"], "beta": 1.0, "kd": False, "k": 0.25, "select": "top",
                                    "importance": "loss"})
    m._teacher, m._calibration = [teacher], (images, labels)
    torch.testing.assert_close(m.importance(0, torch.zeros(1, 4, 1, 1)), rises)
    m._calibration = (images, None)
    with pytest.raises(ParamsError, match="methods.fitnet_select.importance"):
        m.importance(0, torch.zeros(1, 4, 1, 1))


def test_recalibrated_batchnorm_holds_the_pruned_networks_own_statistics():
    from kdlab.pipeline.cuts import recalibrate_bn

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
    from kdlab.analysis import q23_design as q23

    path = tmp_path / "q23.yaml"
    path.write_text(yaml.safe_dump(raw))
    return q23.load(path)


@pytest.mark.parametrize("change, key", [
    (lambda q: q["arms"].update(x={"method": "nope"}), "q23.arms.x.method"),
    (lambda q: q.update(carved=["dkd"], transfer=["raw", "kd"]), "q23.carved"),
    (lambda q: q["teachers"]["b"].update(arch="resnet8"), "q23.reference"),
    (lambda q: q["prune"].update(criteria=["l1", "psychic"]), "q23.prune.criteria"),
    (lambda q: q.update(transfer=["kd", "dkd"], carved=["kd"]), "q23.transfer"),
    # issue 30: the recipe's lr is every run's; the matched budgets are the teacher's (and pruning's) steps plus the
    # student's; families name groups the study trains; the collapse rule and the curve seeds are declared
    (lambda q: q["student"].update(lr=0.2), "q23.student.lr"),
    (lambda q: q["recipe"].update(batch_size=0), "q23.recipe.batch_size"),
    (lambda q: q["matched"].update(carved=40), "q23.matched.carved"),
    (lambda q: q["matched"].update(pruned=60), "q23.matched.pruned"),
    (lambda q: q["prune"].update(steps=2), "q23.matched.pruned"),       # 100 KD steps between 2 steps: 2 epochs
    (lambda q: q["families"].update(x=["kd.random-e30 - kd.random-e99"]), "q23.families.x"),
    (lambda q: q["families"].update(x=[]), "q23.families.x"),
    (lambda q: q["collapse"].update(below_median=0), "q23.collapse.below_median"),
    (lambda q: q.update(curve_seeds=[0]), "q23.curve_seeds"),
    (lambda q: q["prune"].update(sizes=[]), "q23.prune.sizes"),
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
    raw = _shipped()
    _load(tmp_path, raw)  # the shipped study loads
    change(raw["q23"])
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        _load(tmp_path, raw)


def test_the_shipped_study_declares_its_groups_budgets_and_families():
    """Every group once; the matched budgets are 1,500 teacher steps (+ 300 pruning KD steps) + the student's
    1,500 at 50 steps an epoch; every family names groups the study trains, and the families over the curve's seeds
    only compare groups trained on them; each family's comparisons are distinct; DKD at its paper's closest pair."""
    from kdlab.analysis import q23_design as q23

    q = q23.load(REPO / "studies/q23/params.yaml")
    groups = {g.name: g for g in q23.groups(q)}
    assert len(groups) == len(q23.groups(q))
    assert q23.steps_per_epoch(q) == 50 and q23.matched_epochs(q, "carved") == 60 == q.matched.carved
    assert q23.matched_epochs(q, "pruned") == 30 + 6 + 30 == q.matched.pruned
    for fam, comparisons in q.families.items():
        for c in comparisons:
            a, b = c.split(" - ")
            assert set(groups[a].seeds) & set(groups[b].seeds), (fam, c)
    assert set(groups["kd.pruned-l1-it-x1.0-e30"].seeds) == set(q.curve_seeds)
    assert {groups[f"kd.pruned-{c}-x1.0-e30"].seeds for c in q.prune.criteria} == {tuple(q.seeds)}
    assert q.arms["dkd"].options == {"alpha": 1.0, "beta": 2.0, "warmup": 2.5}
    assert sum(len(g.seeds) for g in groups.values()) == 154
    specs = q23.runs(__import__("kdlab.pipeline.params", fromlist=["load"]).load(REPO / "params.yaml"), q)
    spec = specs["students/kd.shape-l1-it-x0.5-e66-s2"]()
    assert spec.init == "shape" and spec.pruned.path.name == "l1-it-x0.5.pt" and spec.model.epochs == 66
    assert spec.overrides["train"]["batch_size"] == 100 and spec.model.lr == 0.05
    assert specs["students/raw.carved-e30-s4"]().pruned is None


# ---------------------------------------------------------------- the report's numbers

def _study(effects: dict, noise: dict, collapsed: dict | None = None):
    """A hand-made study: every run of the shipped params, its metrics file as kdlab train writes it (its spec
    included), test accuracy 0.80 + effect + seed noise, final validation accuracy 0.80 unless ``collapsed`` sets
    it (group -> {seed: val}); read back as the report reads it (kdlab results' table of the study)."""
    import shutil

    from kdlab.analysis import q23_design as q23
    from kdlab.analysis import results
    from kdlab.analysis.q23_report import load_runs
    from kdlab.pipeline import params
    from kdlab.pipeline.spec import record

    Path("studies/q23").mkdir(parents=True)
    shutil.copy(REPO / "studies/q23/params.yaml", "studies/q23/params.yaml")
    q = q23.load(Path("studies/q23/params.yaml"))
    p = params.from_dict({})
    for *_, spec in results.runs(p, only=("q23", q)):
        group, seed = spec.tags.get("arm", "teacher"), spec.seed
        val = (collapsed or {}).get(group, {}).get(seed, 0.80)
        path = spec.files[1]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "params": 19810, "val_acc": val, "val_acc_last": val, "wall_seconds": 1.0, "epochs": spec.model.epochs,
            "test_acc": 0.80 + effects.get(group, 0.0) + noise.get(group, {}).get(seed, 0.0), "spec": record(spec)}))
    return q, load_runs(q, results.frame(p, only=("q23", q)))


def test_families_are_paired_holm_within_each_and_worded_in_four_verdicts(in_tmp):
    from scipy import stats as st

    from kdlab.analysis.q23_report import families, said

    noise = {"dkd.random-e30": {0: 0.001, 1: -0.001, 2: 0.0005, 3: 0.0, 4: -0.0005},
             "at.random-e30": {0: 0.01, 1: -0.02, 2: 0.012, 3: 0.003, 4: -0.006},
             "rkd.random-e30": {0: 0.0004, 1: -0.0003, 2: 0.0002, 3: -0.0001, 4: 0.0}}
    q, df = _study({"dkd.random-e30": 0.04, "fitnet.random-e30": -0.03}, noise)
    fams = families(q, df)
    assert set(fams) == set(q.families)
    c = fams["vs_labels"]["comparisons"]
    assert said(c["dkd.random-e30 - raw.random-e30"]) == "above"
    assert c["dkd.random-e30 - raw.random-e30"]["diff"] == pytest.approx(0.04)
    assert said(c["fitnet.random-e30 - raw.random-e30"]) == "below"  # no noise at all: p 0, below
    assert said(c["at.random-e30 - raw.random-e30"]).startswith("inconclusive; detectable: ")
    assert said(c["rkd.random-e30 - raw.random-e30"]) == "equivalent within +/-0.50"
    # at's paired t by hand, and Holm over exactly this family's eight p-values
    d = np.array([noise["at.random-e30"][s] for s in q.seeds])
    p_at = 2 * st.t.sf(abs(d.mean() / (d.std(ddof=1) / np.sqrt(5))), 4)
    assert c["at.random-e30 - raw.random-e30"]["p"] == pytest.approx(p_at)
    ps = sorted(v["p"] for v in c.values() if v["p"] is not None)
    rank = ps.index(c["at.random-e30 - raw.random-e30"]["p"])
    holm = max(min(1.0, (len(ps) - i) * ps[i]) for i in range(rank + 1))
    assert c["at.random-e30 - raw.random-e30"]["p_holm"] == pytest.approx(holm)
    # the curve family is paired over the curve's seeds only
    assert {v["n"] for v in fams["curve"]["comparisons"].values()} == {len(q.curve_seeds)}


def test_collapsed_runs_are_counted_and_left_out_never_averaged(in_tmp):
    from kdlab.analysis.q23_report import families, group_rows

    # seed 1 of dkd collapsed (val 0.30: 50 points under the median, under the floor too), with a test accuracy
    # that would drag the mean down 10 points; seed 3 of at is 12 points under its median (the relative rule alone)
    q, df = _study({"dkd.random-e30": 0.02}, {"dkd.random-e30": {1: -0.5}},
                   {"dkd.random-e30": {1: 0.30}, "at.random-e30": {3: 0.68}})
    rows = group_rows(df)
    assert rows["dkd.random-e30"]["collapsed"] == 1 and rows["dkd.random-e30"]["collapsed_val"] == [30.0]
    assert rows["at.random-e30"]["collapsed"] == 1 and rows["raw.random-e30"]["collapsed"] == 0
    assert rows["dkd.random-e30"]["test"]["mean"] == pytest.approx(0.82)  # the four that did not collapse
    c = families(q, df)["vs_labels"]["comparisons"]["dkd.random-e30 - raw.random-e30"]
    assert c["n"] == 4 and c["diff"] == pytest.approx(0.02)
    assert int(df.collapsed.sum()) == 2


def test_cka_separates_only_where_the_reference_is_outside_the_interval(in_tmp):
    from kdlab.analysis.q23_report import cka_summary, compute

    q, df = _study({}, {})
    names = list(df[df.group.isin(["kd.random-e30", "raw.random-e30"])].name)
    students = {}
    for n in names:  # kd students sit on the reference at layer1, raw students far below it at layer3
        seed = int(n.rsplit("-s", 1)[1])
        low = n.startswith("raw.")
        students[n] = {"layer1": {"unbiased": 0.9 + 0.01 * (seed - 2), "biased": 0.9},
                       "layer3": {"unbiased": (0.5 if low else 0.9) + 0.01 * (seed - 2), "biased": 0.9}}
    ref = {"layer1": {"unbiased": 0.9, "biased": 0.95}, "layer3": {"unbiased": 0.9, "biased": 0.95}}
    ck = cka_summary(q, df, {"images": 10, "stages": ["layer1", "layer3"], "reference": ref, "students": students})
    assert ck["separating"] == ["raw.random-e30"]
    assert not ck["groups"]["kd.random-e30"]["layer3"]["separates"]
    assert ck["groups"]["raw.random-e30"]["layer3"]["separates"]
    assert not ck["groups"]["raw.random-e30"]["layer1"]["separates"]
    comp = compute(df, {"a": {"wall_seconds": 100.0}, "b": {"wall_seconds": 50.0}})
    assert comp == {"students_seconds": float(len(df)), "teachers_seconds": 150.0, "seconds": len(df) + 150.0,
                    "student_runs": len(df), "teacher_runs": 2}


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


def test_the_report_states_every_family_the_curve_and_the_collapse_count(tmp_path, in_tmp):
    """The words and pictures of a hand-made study: every declared family in the report and the README block with
    its verdicts, the trade-off table at every size, the collapsed run counted, CKA's sentence, the headline."""
    from kdlab.analysis.q23_report import analyse, findings, headline, pictures, render
    from kdlab.pipeline.params import load

    q, df = _study({"kd.random-e30": 0.01}, {"kd.random-e30": {s: 0.001 * s for s in range(5)}},
                   {"dkd.random-e30": {4: 0.2}})
    students = {n: {"layer3": {"unbiased": 0.8, "biased": 0.9}} for n in df.name}
    cka = {"images": 10, "stages": ["layer3"], "reference": {"layer3": {"unbiased": 0.95, "biased": 0.97}},
           "students": students}
    prune = {"models": {"teacher": {"route": "none", "scored_on": None, "params": 44226, "val_acc": 0.88,
                                    "val_acc_recalibrated": 0.88}}}
    a = analyse(q, df, {"test_acc": 0.9}, {"a": {"wall_seconds": 60.0}, "b": {"wall_seconds": 60.0}}, prune, cka)
    p = load(REPO / "params.yaml")
    text, found = render(p, q, a), findings(p, q, a)
    for name, comparisons in q.families.items():
        assert f"(`{name}`)" in text
        for c in comparisons:
            left, right = c.split(" - ")
            assert f"`{left}` - `{right}`" in text and f"`{left}` - `{right}`" in found
    assert "1 of 154 runs" in text and "1 of 154 runs collapsed" in found
    assert "| 0.25 | 19,810 |" in text and "| 1.5 | 19,810 |" in text
    assert "**above**" in found  # kd - raw: +1 point with tiny noise
    assert "CKA separates" in found and "`kd.random-e30`" in found  # 0.8 everywhere, the reference 0.95
    head = headline(q, a)
    assert head["collapsed"] == 1 and head["vs_labels"]["kd.random-e30 - raw.random-e30"] == pytest.approx(1.2)
    assert 1 + sum(len(c) for c in q.families.values()) == 1 + sum(len(v) for k, v in head.items() if k != "collapsed")
    assert 1 + sum(len(c) for c in q.families.values()) <= 40  # a terminal's worth (issue 32)
    for name, draw in pictures(q, a).items():
        draw(tmp_path / name)
        assert (tmp_path / name).stat().st_size > 5000


def test_each_familys_power_line_comes_from_its_own_pairs_sd(in_tmp):
    from kdlab.analysis import stats
    from kdlab.analysis.q23_report import compare, families

    noise = {"at.random-e30": {0: 0.01, 1: -0.02, 2: 0.012, 3: 0.003, 4: -0.006}}
    q, df = _study({}, noise)
    c = compare(df, "at.random-e30 - raw.random-e30")
    assert c["sd"] == pytest.approx(np.std([noise["at.random-e30"][s] for s in q.seeds], ddof=1))
    fam = families(q, df)["vs_labels"]
    sds = [v["sd"] for v in fam["comparisons"].values()]
    assert fam["median_pair_sd"] == pytest.approx(float(np.median(sds)))
    assert fam["seeds_for_effect"] == stats.seeds_for(fam["median_pair_sd"], 0.005, 0.05 / 8, 0.8)
