"""The control for ``init_teacher``: the very architecture it carves out of the teacher (same
``methods.init_teacher.keep``), freshly initialised, trained with the same KD loss."""
from kdlab.core.surgery import reinit
from kdlab.distill import register
from kdlab.distill.init_teacher import InitTeacher


@register("init_random")
class InitRandom(InitTeacher):
    options_from = "init_teacher"

    def init_student(self, student, teacher):
        return reinit(super().init_student(student, teacher))
