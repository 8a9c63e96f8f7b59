import math

import pytest
import torch
import torch.nn.functional as F

from kdlab import distill
from kdlab.core.loader import Batch
from kdlab.pipeline import params


class Identity(torch.nn.Module):
    """A 'student' whose logits are its input, so losses can be checked on fixed tensors."""
    def forward(self, x):
        return x


def _batch(student_logits, labels, teacher_logits):
    return Batch(torch.tensor(student_logits), torch.tensor(labels), teacher_logits=torch.tensor(teacher_logits))


def _p(alpha, t, ls=0.0):
    return params.from_dict({"loss": {"alpha": alpha, "temperature": t}, "train": {"label_smoothing": ls}})


def _softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def test_kd_matches_hand_computation():
    s, t, y = [1.0, 0.0, -1.0], [2.0, 1.0, 0.0], 0
    alpha, temp = 0.3, 2.0
    ps, pt = _softmax([v / temp for v in s]), _softmax([v / temp for v in t])
    kl = sum(a * math.log(a / b) for a, b in zip(pt, ps)) * temp ** 2
    ce = -math.log(_softmax(s)[y])
    _, terms = distill.build("kd", _p(alpha, temp))(Identity(), _batch([s], [y], [t]))
    assert terms["kd"].item() == pytest.approx(alpha * kl, rel=1e-5)
    assert terms["ce"].item() == pytest.approx((1 - alpha) * ce, rel=1e-5)


def test_kd_with_alpha_zero_is_cross_entropy():
    g = torch.Generator().manual_seed(0)
    s, t, y = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g), torch.randint(0, 5, (8,), generator=g)
    _, kd = distill.build("kd", _p(0.0, 3.0))(Identity(), Batch(s, y, teacher_logits=t))
    _, raw = distill.build("raw", _p(0.0, 3.0))(Identity(), Batch(s, y))
    assert sum(kd.values()).item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)
    assert raw["ce"].item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)


def test_kd_is_zero_when_student_equals_teacher():
    t = torch.randn(4, 6)
    _, terms = distill.build("kd", _p(1.0, 4.0))(Identity(), Batch(t.clone(), torch.zeros(4, dtype=torch.long), teacher_logits=t))
    assert terms["kd"].item() == pytest.approx(0.0, abs=1e-6)


def test_kd_correct_only_by_hand():
    # sample 0: teacher right (argmax 0 == label 0); sample 1: teacher wrong (argmax 1, label 2)
    s = [[1.0, 0.5, 0.0], [0.2, 0.1, 0.4]]
    t = [[3.0, 0.0, 0.0], [0.0, 2.0, 1.0]]
    y = [0, 2]
    alpha, temp = 0.6, 2.0

    def kl(si, ti):
        ps, pt = _softmax([v / temp for v in si]), _softmax([v / temp for v in ti])
        return sum(a * math.log(a / b) for a, b in zip(pt, ps)) * temp ** 2

    ce = [-math.log(_softmax(si)[yi]) for si, yi in zip(s, y)]
    _, terms = distill.build("kd_correct_only", _p(alpha, temp))(Identity(), _batch(s, y, t))
    assert terms["kd"].item() == pytest.approx(alpha * kl(s[0], t[0]) / 2, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(((1 - alpha) * ce[0] + ce[1]) / 2, rel=1e-5)


def test_kd_correct_only_equals_kd_when_teacher_always_right():
    g = torch.Generator().manual_seed(1)
    s, y = torch.randn(6, 4, generator=g), torch.randint(0, 4, (6,), generator=g)
    t = F.one_hot(y, 4).float() * 5 + torch.randn(6, 4, generator=g) * 0.1
    p = _p(0.4, 3.0)
    _, a = distill.build("kd", p)(Identity(), Batch(s, y, teacher_logits=t))
    _, b = distill.build("kd_correct_only", p)(Identity(), Batch(s, y, teacher_logits=t))
    for k in ("ce", "kd"):
        assert a[k].item() == pytest.approx(b[k].item(), rel=1e-6)


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(KeyError, match="kd_correct_only"):
        distill.build("nope", _p(0.5, 4.0))
