"""The methods of the plug-in interface, each against a hand computation on fixed tensors; feature taps,
block surgery and CKA."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlab import distill
from kdlab.core import models
from kdlab.core.features import OUTPUT, Taps, extractor, linear_cka, tap_paths
from kdlab.core.loader import Batch
from kdlab.core.surgery import keep_blocks
from kdlab.distill.dkd import tckd_nckd
from kdlab.distill.kd import kl_per_sample
from kdlab.pipeline import params
from kdlab.pipeline.params import ParamsError


def _p(**methods):
    return params.from_dict({"loss": {"alpha": 0.5, "temperature": 2.0}, "methods": methods})


def _softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


class Scale(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.a = a

    def forward(self, x):
        return self.a * x


class Toy(nn.Module):
    """A 'network' with one stage: features = a * x (B, C, H, W); logits = the features' spatial mean."""
    def __init__(self, a):
        super().__init__()
        self.layer1 = nn.Sequential(Scale(a))

    def forward(self, x):
        return self.layer1(x).mean(dim=(2, 3))


def _identity_regressors(method):
    """1x1 conv = identity and BN with running var 1 - eps, in eval mode: the regressor maps f to f."""
    for reg in method.regressors:
        conv, bn = reg
        with torch.no_grad():
            conv.weight.copy_(torch.eye(conv.weight.shape[0]).view_as(conv.weight))
            bn.running_var.fill_(1 - bn.eps)
    method.eval()


# ---------------------------------------------------------------- logits methods

def test_label_smoothing_is_cross_entropy_against_the_smoothed_target():
    """ls: -sum(q log p) with q = (1 - s) one-hot + s / classes, by hand; its option is checked."""
    m = distill.build("ls", _p(ls={"smoothing": 0.2}))
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    labels = torch.tensor([0, 2])
    _, terms = m(lambda x: logits, Batch(torch.zeros(2, 1, 2, 2), labels))
    logp = F.log_softmax(logits, dim=1)
    q = torch.full((2, 3), 0.2 / 3)
    q[0, 0] += 0.8
    q[1, 2] += 0.8
    assert set(terms) == {"ce"} and torch.allclose(terms["ce"], -(q * logp).sum(1).mean())
    assert not torch.allclose(terms["ce"], F.cross_entropy(logits, labels))
    with pytest.raises(ParamsError, match="methods.ls.smoothing"):
        distill.build("ls", _p(ls={"smoothing": 1.5}))


def test_kd_online_runs_the_teacher_on_the_same_images():
    x = torch.tensor([[[[1.0, 0.0]], [[0.5, -1.0]]]])           # (1, 2, 1, 2): 2 "classes"
    student, teacher = Toy(1.0), Toy(3.0)
    m = distill.build("kd_online", _p())
    m.attach(student, teacher, x)
    logits, terms = m(student, Batch(x, torch.tensor([1])))
    s, t = [0.5, -0.25], [1.5, -0.75]                           # spatial means x 1 and x 3
    ps, pt = _softmax([v / 2 for v in s]), _softmax([v / 2 for v in t])
    kl = sum(a * math.log(a / b) for a, b in zip(pt, ps)) * 4
    assert logits.tolist() == [s]
    assert terms["kd"].item() == pytest.approx(0.5 * kl, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(0.5 * -math.log(_softmax(s)[1]), rel=1e-5)
    assert m.views == "all" and not m.uses_teacher_logits


def test_dkd_by_hand_and_its_known_case():
    s, t, y, temp = [1.0, 0.0, -1.0], [2.0, 0.5, 0.0], 0, 2.0
    ps, pt = _softmax([v / temp for v in s]), _softmax([v / temp for v in t])
    b_s, b_t = [ps[0], 1 - ps[0]], [pt[0], 1 - pt[0]]
    tckd = sum(a * math.log(a / b) for a, b in zip(b_t, b_s)) * temp ** 2
    ns, nt = _softmax([v / temp for v in s[1:]]), _softmax([v / temp for v in t[1:]])
    nckd = sum(a * math.log(a / b) for a, b in zip(nt, ns)) * temp ** 2
    got_t, got_n = tckd_nckd(torch.tensor([s]), torch.tensor([t]), torch.tensor([y]), temp)
    # float32 inside: the binary KL of a tiny difference keeps about 5 significant digits
    assert got_t.item() == pytest.approx(tckd, rel=1e-4)
    assert got_n.item() == pytest.approx(nckd, rel=1e-5)
    # the method: CE + warm-up ramp x (alpha TCKD + beta NCKD), the ramp per step: the end of epoch 1 of a 2-epoch
    # warm-up is half way, its first step of 50 a hundredth of the way, and after the warm-up the weight stays 1
    m = distill.build("dkd", _p(dkd={"alpha": 1.0, "beta": 8.0, "warmup": 2.0}))
    one = Batch(torch.tensor([s]), torch.tensor([y]), teacher_logits=torch.tensor([t]))
    for progress, ramp in ((1.0, 0.5), (1 / 50, 0.01), (2.0, 1.0), (7.5, 1.0)):
        m.begin_step(progress)
        _, terms = m(nn.Identity(), one)
        assert terms["tckd"].item() == pytest.approx(ramp * tckd, rel=1e-4)
        assert terms["nckd"].item() == pytest.approx(ramp * 8 * nckd, rel=1e-5)
        assert terms["ce"].item() == pytest.approx(-math.log(_softmax(s)[y]), rel=1e-5)
    # Zhao et al.'s identity: KD = TCKD + (1 - p_teacher(target)) NCKD, per sample
    g = torch.Generator().manual_seed(0)
    s, t, y = torch.randn(16, 7, generator=g) * 3, torch.randn(16, 7, generator=g) * 3, torch.randint(0, 7, (16,), generator=g)
    tc, nc = tckd_nckd(s, t, y, 4.0)
    pt_target = F.softmax(t / 4.0, dim=1).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(tc + (1 - pt_target) * nc, kl_per_sample(s, t, 4.0), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- feature methods

def test_fitnet_hint_by_hand():
    x = torch.tensor([[[[1.0, 2.0]], [[0.0, -1.0]]]])           # (1, 2, 1, 2)
    student, teacher = Toy(1.0), Toy(2.0)
    m = distill.build("fitnet", _p(fitnet={"layers": ["layer1"], "beta": 3.0, "kd": False}))
    m.attach(student, teacher, x)
    _identity_regressors(m)
    logits, terms = m(student, Batch(x, torch.tensor([0])))
    # student features f, teacher features 2f, regressor = identity: MSE = mean(f^2) over 4 values
    assert terms["hint"].item() == pytest.approx(3.0 * (1 + 4 + 0 + 1) / 4, rel=1e-5)
    assert set(terms) == {"ce", "hint"}
    assert terms["ce"].item() == pytest.approx(-math.log(_softmax([1.5, -0.5])[0]), rel=1e-5)


def test_attention_transfer_by_hand():
    x = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])
    m = distill.build("at", _p(at={"layers": ["layer1"], "beta": 1000.0, "kd": False}))
    fs = x
    ft = torch.tensor([[[[0.0, 1.0]], [[1.0, 1.0]]]])
    # attention: channel mean of squares, L2-normalised: student [5, 2]/sqrt(29), teacher [0.5, 1]/sqrt(1.25)
    a_s = [5 / math.sqrt(29), 2 / math.sqrt(29)]
    a_t = [0.5 / math.sqrt(1.25), 1 / math.sqrt(1.25)]
    expected = 1000.0 / 2 * sum((a - b) ** 2 for a, b in zip(a_s, a_t)) / 2
    assert (m.opts.beta * m.feature_loss([fs], [ft])).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name, term", [("fitnet", "hint"), ("at", "at")])
def test_feature_losses_vanish_when_features_are_equal(name, term):
    torch.manual_seed(0)
    teacher = models.build("resnet8", 1, 3, 0.5).eval()
    student = models.build("resnet8", 1, 3, 0.5)
    student.load_state_dict(teacher.state_dict())
    student.eval()  # BN on running stats, so both compute the same function
    x = torch.randn(4, 1, 10, 10)
    m = distill.build(name, _p(**{name: {"layers": ["layer1", "layer2.0", "layer3"], "beta": 5.0, "kd": True}}))
    m.attach(student, teacher, x)
    if name == "fitnet":
        _identity_regressors(m)
    with torch.no_grad():
        teacher_logits = teacher(x)  # KD reads the cached logits of the view, as in training
    _, terms = m(student, Batch(x, torch.tensor([0, 1, 2, 0]), teacher_logits=teacher_logits))
    assert terms[term].item() == pytest.approx(0.0, abs=1e-9)
    assert terms["kd"].item() == pytest.approx(0.0, abs=1e-5)


def test_fitnet_regressors_are_trained_and_checkpointed_with_the_student():
    teacher = models.build("resnet8", 1, 3, 1.0).eval()
    student = models.build("resnet8", 1, 3, 0.5)
    m = distill.build("fitnet", _p(fitnet={"layers": ["layer2"]}))
    m.attach(student, teacher, torch.randn(2, 1, 10, 10))
    conv = m.regressors[0][0]
    assert tuple(conv.weight.shape) == (32, 16, 1, 1)                    # layer2: student 16 -> teacher 32 channels
    assert any(k.startswith("regressors.") for k in m.state_dict())
    assert not any("teacher" in k for k in m.state_dict())               # the teacher is not ours to save
    assert all(p_.requires_grad for p_ in m.parameters()) and not any(p_.requires_grad for p_ in teacher.parameters())


def test_a_stage_the_arch_lacks_is_refused_with_the_allowed_ones():
    teacher, student = models.build("resnet8", 1, 3), models.build("resnet8", 1, 3, 0.5)
    m = distill.build("fitnet", _p(fitnet={"layers": ["layer4"]}))
    with pytest.raises(ParamsError) as e:
        m.attach(student, teacher, torch.randn(2, 1, 10, 10))
    assert e.value.key == "methods.fitnet.layers[0]"
    assert "layer3.0" in str(e.value)


@pytest.mark.parametrize("methods, key", [
    ({"fitnet": {"beta": -1.0}}, "methods.fitnet.beta"),
    ({"fitnet": {"stagez": ["layer1"]}}, "methods.fitnet.stagez"),
    ({"fitnet": {"layers": []}}, "methods.fitnet.layers"),
    ({"dkd": {"warmup": -1}}, "methods.dkd.warmup"),
    ({"at": {"kd": "yes"}}, "methods.at.kd"),
])
def test_bad_method_options_name_the_key(methods, key):
    name = next(iter(methods))
    with pytest.raises(ParamsError) as e:
        distill.build(name, _p(**methods))
    assert e.value.key == key


def test_taps_address_blocks_by_path():
    model = models.build("resnet20", 1, 3, 0.5)
    assert tap_paths(model)[:4] == ["layer1", "layer1.0", "layer1.1", "layer1.2"]
    with Taps(model, ["layer2.1", "layer3"]) as taps:
        model(torch.randn(2, 1, 12, 12))
    assert tuple(taps.out["layer2.1"].shape) == (2, 16, 6, 6)
    assert tuple(taps.out["layer3"].shape) == (2, 32, 3, 3)
    assert not model.layer3._forward_hooks                               # removed on exit


def test_extractors_tap_the_model_itself_and_stop_at_the_deepest_tap():
    torch.manual_seed(0)
    model = models.build("resnet20", 1, 3, 0.5)
    x = torch.randn(4, 1, 12, 12)
    fx = extractor(model, ["layer1", "layer2.1"])
    with Taps(model, ["layer1", "layer2.1"]) as taps:
        want = model(x)
    out = fx(x)
    torch.testing.assert_close(out[OUTPUT], want, rtol=0, atol=0)
    for path in ("layer1", "layer2.1"):
        torch.testing.assert_close(out[path], taps.out[path], rtol=0, atol=0)
    # the graph holds the model's own modules: a step through it trains the model
    before = model.layer1[0].conv1.weight.detach().clone()
    opt = torch.optim.SGD(fx.parameters(), lr=0.1)
    out[OUTPUT].sum().backward()
    opt.step()
    assert not torch.equal(model.layer1[0].conv1.weight, before)
    # without the output, nothing past the deepest tap is run
    cut = extractor(model.eval(), ["layer1"], output=False)
    assert not any(n.startswith(("layer2", "layer3", "fc")) for n, _ in cut.named_modules())
    assert set(cut(x)) == {"layer1"}


@pytest.mark.parametrize("name", ["raw", "ls", "kd", "kd_correct_only", "kd_online", "dkd", "fitnet", "at"])
def test_every_method_compiles_as_one_graph_and_matches_eager(name):
    """train.fit runs ``torch.compile(method)``: no graph break (fullgraph), the same terms as eager, and no
    recompilation when the epoch or the step changes (DKD's warm-up, per step)."""
    torch._dynamo.reset()  # compiled code is cached per code object, and methods share forward()
    torch.manual_seed(0)
    p = _p(dkd={"warmup": 2.0}, fitnet={"layers": ["layer1", "layer3"]})
    teacher = models.build("resnet20", 1, 3, 0.5).eval()
    m = distill.build(name, p)
    student = models.build("resnet8", 1, 3, 0.5)
    x = torch.randn(6, 1, 12, 12)
    m.attach(student, teacher, x)
    with torch.no_grad():
        batch = Batch(x, torch.tensor([0, 1, 2, 0, 1, 2]), teacher_logits=teacher(x))
    step = torch.compile(m, backend="eager", fullgraph=True, dynamic=False)
    student.train()
    m.train()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for epoch, progress in ((1, 0.5), (2, 1.5)):
            m.begin_epoch(epoch)
            m.begin_step(progress)
            _, want = m(student, batch)
            _, got = step(student, batch)
            assert set(got) == set(want)
            for k in want:
                torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- students carved from the teacher

@pytest.mark.parametrize("arch, keep", [("resnet20", [[1], [0, 2], [0]]), ("resnet50", [[0, 2], [0], [0, 3], [0]])])
def test_a_carved_student_copies_exactly_the_chosen_blocks(arch, keep):
    """The ``carved`` init (kdlab.pipeline.train: ``keep_blocks`` of the teacher)."""
    torch.manual_seed(0)
    teacher = models.build(arch, 3, 10).eval()
    student = keep_blocks(teacher, keep, "q23.keep")
    for i, idx in enumerate(keep, start=1):
        s_stage, t_stage = getattr(student, f"layer{i}"), getattr(teacher, f"layer{i}")
        assert len(s_stage) == len(idx)
        for j, k in enumerate(idx):
            for (name, a), (_, b) in zip(s_stage[j].state_dict().items(), t_stage[k].state_dict().items()):
                assert torch.equal(a, b), f"layer{i}[{j}].{name} != teacher layer{i}[{k}]"
    assert torch.equal(student.fc.weight, teacher.fc.weight) and torch.equal(student.conv1.weight, teacher.conv1.weight)
    assert models.count_params(student) < models.count_params(teacher)
    out = student.train()(torch.randn(2, 3, 16, 16))
    out.sum().backward()
    assert out.shape == (2, 10)


def test_keep_blocks_refuses_dropping_a_block_that_changes_shape():
    teacher = models.build("resnet20", 1, 3)
    with pytest.raises(ParamsError, match="block 0 changes") as e:
        keep_blocks(teacher, [[0], [1], [0]], "q23.keep")
    assert e.value.key == "q23.keep[1]"
    with pytest.raises(ParamsError, match="blocks 0..2"):
        keep_blocks(teacher, [[0], [0], [3]])
    with pytest.raises(ParamsError, match="one list of block indices per layer"):
        keep_blocks(teacher, [[0], [0]])


# ---------------------------------------------------------------- CKA

def test_linear_cka_properties():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 20, generator=g, dtype=torch.float64)
    y = x @ torch.randn(20, 8, generator=g, dtype=torch.float64) + 0.5 * torch.randn(50, 8, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    base = linear_cka(x, y)
    assert 0 < base < 1
    assert linear_cka(x @ q, y) == pytest.approx(base, abs=1e-10)          # orthogonal transform
    assert linear_cka(3.7 * x, 0.2 * y) == pytest.approx(base, abs=1e-10)  # isotropic scaling
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-12)
    # and against the feature-space formula ||Y^T X||^2 / (||X^T X|| ||Y^T Y||) on centred data
    xc, yc = x - x.mean(0), y - y.mean(0)
    direct = (yc.T @ xc).norm() ** 2 / ((xc.T @ xc).norm() * (yc.T @ yc).norm())
    assert base == pytest.approx(direct.item(), rel=1e-10)
    noise = torch.randn(50, 20, generator=g, dtype=torch.float64)
    assert linear_cka(x, noise) < base
