"""Adaptive DeepInversion's competition prior (``adi``).

A student network ``S`` sees the same augmented images as the teacher. With temperature
``T``, ``P = softmax(S(x')/T)``, ``Q = softmax(teacher(x')/T)`` and ``M = (P + Q)/2``,
each of ``P``, ``Q``, ``M`` clamped to [0.01, 0.99]::

    JS = 0.5 * KL(M || P) + 0.5 * KL(M || Q)        (batch-mean KL)
    adi = 1 - clamp(JS, 0, 1)

Minimising it moves the images to where teacher and student disagree.

Example:
    >>> import torch
    >>> from invkit import CrossEntropy, load_teacher
    >>> objective = CrossEntropy() + 0.2 * Competition(student="digits-verifier")
    >>> teacher = load_teacher("digits")
    >>> x, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    >>> with objective.attached(Setup(teacher)):       # loads the student
    ...     total, terms = objective(Step(x, teacher.module(x), targets, teacher))
    >>> sorted(terms)
    ['adi', 'cross-entropy']
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from invkit import InvkitError, Prior, Setup, Step, Teacher, define_prior

if TYPE_CHECKING:  # torch is imported when the prior first runs: listings stay fast
    import torch

CLAMP = (0.01, 0.99)


def student_view(step: Step, student: Teacher) -> torch.Tensor:
    """The teacher's input as the student expects it: its normalisation and input size.

    In a low-resolution stage the view is smaller than a fixed-size student accepts, and a
    student trained with other channel statistics needs its own normalisation.

    Example:
        >>> import torch
        >>> from invkit import load_teacher
        >>> teacher, student = load_teacher("digits"), load_teacher("digits-verifier")
        >>> step = Step(torch.randn(2, 3, 16, 16), None, torch.tensor([0, 1]), teacher)
        >>> student_view(step, student).shape[-1] == student.meta.input_size   # 16 -> 32 px
        True
    """
    x, teacher, size = step.inputs, step.teacher, student.meta.input_size
    same_stats = (teacher.meta.mean, teacher.meta.std) == (student.meta.mean, student.meta.std)
    if same_stats and x.shape[-2:] == (size, size):
        return x  # the common case: no round trip through pixel space
    return student.prepare(teacher.denormalize(x))


def competition_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     temperature: float = 3.0) -> torch.Tensor:
    """``1 - clamp(JS(P, Q), 0, 1)`` with clamped probabilities (float32).

    Example:
        >>> import torch
        >>> competition_loss(torch.zeros(2, 10), torch.zeros(2, 10))   # full agreement
        tensor(1.)
    """
    import torch.nn.functional as F

    p = F.softmax(student_logits.float() / temperature, dim=1)
    q = F.softmax(teacher_logits.float() / temperature, dim=1)
    m = (0.5 * (p + q)).clamp(*CLAMP)
    p, q = p.clamp(*CLAMP), q.clamp(*CLAMP)
    # kl_div(log P, M) is KL(M || P); "batchmean" averages over the batch.
    js = 0.5 * F.kl_div(p.log(), m, reduction="batchmean") \
        + 0.5 * F.kl_div(q.log(), m, reduction="batchmean")
    return 1.0 - js.clamp(0.0, 1.0)


@define_prior("adi", "Adaptive DeepInversion competition: teacher/student disagreement",
              default_weight=0.2,
              help={"student": "student teacher spec (or the run's --student)",
                    "temperature": "softmax temperature",
                    "detach": "no gradient through the student"})
class Competition(Prior):
    """The Adaptive DeepInversion competition term; needs a student.

    The student is ``Setup.student`` when the method passes one, otherwise the teacher
    spec in the ``student`` option (loaded on the teacher's device). Its logits come from
    ``step.extras["student_logits"]`` when the method computed them, otherwise the prior
    runs the (frozen, eval-mode) student on ``step.inputs`` itself. ``detach=True`` stops
    gradients through the student's branch.
    """

    def __init__(self, student: str = "", temperature: float = 3.0, detach: bool = False):
        super().__init__(student=student, temperature=float(temperature), detach=bool(detach))
        self.student_spec = student
        self.temperature = float(temperature)
        self.detach = bool(detach)
        self.student: Teacher | None = None
        self._restore: list[tuple[torch.nn.Parameter, bool]] = []

    def setup(self, setup: Setup) -> None:
        student = setup.student
        if student is None and self.student_spec:
            from invkit import load_teacher

            param = next(setup.teacher.module.parameters(), None)
            device = str(param.device) if param is not None else "cpu"
            student = load_teacher(self.student_spec, device=device)
        if student is None:
            raise InvkitError(
                "prior adi needs a student: give --student SPEC or "
                "--prior adi,student=SPEC (any teacher spec, see 'invkit teachers list')"
            )
        student.module.eval()
        self._restore = [(p, p.requires_grad) for p in student.module.parameters()]
        for p, _ in self._restore:
            p.requires_grad_(False)
        self.student = student

    def teardown(self) -> None:
        for p, flag in self._restore:
            p.requires_grad_(flag)
        self._restore = []
        self.student = None

    def student_logits(self, step: Step) -> torch.Tensor:
        logits = step.extras.get("student_logits")
        if logits is None:
            if self.student is None:
                raise RuntimeError("adi is not attached: use objective.attached(Setup(...))")
            logits = self.student.module(student_view(step, self.student))
            step.extras["student_logits"] = logits
        return logits.detach() if self.detach else logits

    def __call__(self, step: Step) -> torch.Tensor:
        return competition_loss(self.student_logits(step), step.logits, self.temperature)
