"""A student carved from the teacher, DistilBERT-style: keep a subset of each layer's residual blocks
(``keep``: one list of block indices per layer; empty = one block in two, as DistilBERT) with their trained
weights, stem and classifier included, then train with KD from the cached logits (loss.alpha, loss.temperature).
Compare with ``init_random``: the same architecture from a random initialisation, same loss."""
from dataclasses import dataclass, field

from kdlab.core.surgery import default_keep, keep_blocks
from kdlab.distill import register
from kdlab.distill.kd import KD


@dataclass(frozen=True)
class InitOptions:
    keep: list[list[int]] = field(default_factory=list)


@register("init_teacher")
class InitTeacher(KD):
    Options = InitOptions
    builds_from_teacher = True

    def blocks(self, teacher) -> list[list[int]]:
        return self.opts.keep or default_keep(teacher)

    def init_student(self, student, teacher):
        return keep_blocks(teacher, self.blocks(teacher), f"methods.{self.options_name}.keep")
