"""The hooks a plugin can implement. Their docstrings are the reference documentation.

Each ``invkit_*`` record hook returns an iterable of spec records (see
:mod:`invkit.specs`). A plugin implements only the hooks it needs::

    from invkit import hookimpl, PriorSpec

    @hookimpl
    def invkit_priors():
        return [PriorSpec("brightness", "mean pixel value", factory=Brightness)]
"""

from __future__ import annotations

from collections.abc import Iterable

import click
import pluggy

from invkit.specs import MethodSpec, PriorSpec, ScheduleSpec, TeacherSpec, VerifierSpec

hookspec = pluggy.HookspecMarker("invkit")
hookimpl = pluggy.HookimplMarker("invkit")


@hookspec
def invkit_teachers() -> Iterable[TeacherSpec]:
    """Classifiers that can be inverted, or used as verifiers and students.

    Example::

        @hookimpl
        def invkit_teachers():
            yield TeacherSpec("tiny-cnn", "a 2-layer CNN on 32 px", factory=build_tiny,
                              source="example", input_size=32, num_classes=10)
    """


@hookspec
def invkit_priors() -> Iterable[PriorSpec]:
    """Loss terms on the optimised images or the teacher's activations.

    Example::

        @hookimpl
        def invkit_priors():
            yield PriorSpec("brightness", "squared mean pixel", factory=Brightness,
                            default_weight=0.1, options=(Option("target", float, 0.5),))
    """


@hookspec
def invkit_schedules() -> Iterable[ScheduleSpec]:
    """Learning-rate schedules (``kind="lr"``) and resolution plans (``kind="plan"``).

    Example::

        @hookimpl
        def invkit_schedules():
            yield ScheduleSpec("constant", "the base rate throughout",
                               factory=lambda: (lambda step, total: 1.0))
    """


@hookspec
def invkit_verifiers() -> Iterable[VerifierSpec]:
    """Ways to judge generated images with an independent network.

    Example::

        @hookimpl
        def invkit_verifiers():
            yield VerifierSpec("top1", "top-1 accuracy", factory=TopKAccuracy)
    """


@hookspec
def invkit_methods() -> Iterable[MethodSpec]:
    """Inversion methods; each becomes ``invkit run NAME``.

    Example::

        @hookimpl
        def invkit_methods():
            yield MethodSpec("my-method", "what it does", command=make_click_command)
    """


@hookspec
def invkit_commands(cli: click.Group) -> None:
    """Add top-level commands to the ``invkit`` command line.

    Example::

        @hookimpl
        def invkit_commands(cli):
            @cli.command()
            def hello():
                click.echo("hello")
    """


RECORD_HOOKS: dict[str, str] = {
    "teacher": "invkit_teachers",
    "prior": "invkit_priors",
    "schedule": "invkit_schedules",
    "verifier": "invkit_verifiers",
    "method": "invkit_methods",
}
