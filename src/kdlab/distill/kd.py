"""Hinton et al. 2015: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE, from cached logits."""
import torch
import torch.nn.functional as F

from kdlab.distill import register
from kdlab.distill._base import Method


def kl_per_sample(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t / T) || softmax(s / T)) for each row, scaled by T^2 (so gradients keep their size)."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1) * temperature ** 2


@register("kd")
class KD(Method):
    uses_teacher_logits = True

    def __init__(self, loss, options=None, label_smoothing=0.0, **overrides):
        super().__init__(loss, options, label_smoothing, **overrides)
        self.alpha = loss.alpha
        self.temperature = loss.temperature

    def kd_terms(self, logits, teacher_logits, labels) -> dict:
        kd = kl_per_sample(logits, teacher_logits, self.temperature).mean()
        return {"ce": (1 - self.alpha) * self.ce(logits, labels), "kd": self.alpha * kd}

    def forward(self, student, batch):
        logits = student(batch.images)
        return logits, self.kd_terms(logits, batch.teacher_logits, batch.labels)
