"""A control for question 1b: ``kd_correct_only`` with "right" judged on the clean training image, not on the
augmented view the student sees. Where the teacher classifies the clean image correctly, the KD loss of
:mod:`kd` on every view of it; elsewhere plain CE with full weight.

It reads the teacher's correctness per clean training image, which only question 1's cache records
(``kdlab cache --study studies/q1/params.yaml``): the study sets ``clean_correct`` (a bool per training image) before training.
"""
from kdlab.distill import register
from kdlab.distill.kd import KD, kl_per_sample
from kdlab.infra.io import StageError


@register("kd_correct_clean")
class KDCorrectClean(KD):
    reads_clean_correct = True
    clean_correct = None

    def attach(self, student, teacher, example, labels=None) -> None:
        super().attach(student, teacher, example, labels)
        if self.clean_correct is None:
            raise StageError("kd_correct_clean reads the teacher's correctness on each clean training image, which "
                             "only question 1's study records (studies/q1, kdlab cache --study)")

    def forward(self, student, batch):
        logits = student(batch.images)
        correct = self.clean_correct[batch.index].float()
        ce = self.ce(logits, batch.labels, reduction="none")
        kd = kl_per_sample(logits, batch.teacher_logits, self.temperature)
        return logits, {"ce": ((1 - self.alpha * correct) * ce).mean(), "kd": (self.alpha * correct * kd).mean()}
