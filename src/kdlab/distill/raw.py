"""The baseline: the student trained on the labels alone."""
from kdlab.distill import register
from kdlab.distill._base import Method


@register("raw")
class Raw(Method):
    def forward(self, student, batch):
        logits = student(batch.images)
        return logits, {"ce": self.ce(logits, batch.labels)}
