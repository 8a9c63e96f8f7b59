"""The baseline: the student trained on the labels alone."""
from kdlab.distill import Method, register


@register("raw")
class Raw(Method):
    def __call__(self, student, batch):
        logits = student(batch.images)
        return logits, {"ce": self.ce(logits, batch.labels)}
