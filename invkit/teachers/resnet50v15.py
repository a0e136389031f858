"""NVIDIA's ResNet-50 v1.5 training checkpoint, loaded into torchvision's ``resnet50``.

ResNet-50 v1.5 (stride 2 on each bottleneck's 3x3 conv) has exactly torchvision's
``resnet50`` layer names and shapes. Its ``model_best.pth.tar`` nests the weights
under ``state_dict`` with ``module.``-prefixed keys; :mod:`invkit.teachers.checkpoint`
unwraps and strips them. The default file is ``./models/resnet50v15/model_best.pth.tar``
(relative to the working directory); ``--weights FILE`` points elsewhere.

Example (not run as a test: it needs NVIDIA's downloaded checkpoint)::

    from invkit import load_teacher
    teacher = load_teacher("resnet50v15", weights="downloads/model_best.pth.tar")
"""

from __future__ import annotations

from pathlib import Path

from invkit.errors import InvkitError

NAME = "resnet50v15"
DEFAULT_FILE = Path("models") / NAME / "model_best.pth.tar"


def build(weights: str | None = None):
    """A random-init ``resnet50`` with ImageNet metadata, named ``resnet50v15``.

    Only ``weights="none"`` is handled here: :func:`invkit.teachers.load_teacher` loads
    the checkpoint file (``--weights FILE`` or the default file) into this network.
    """
    from dataclasses import replace

    from invkit.teachers import torchvision_models

    if weights != "none":
        raise InvkitError(f"{NAME} accepts --weights none or a weights file, not {weights!r}")
    teacher = torchvision_models.build("resnet50", weights="none")
    return replace(teacher, meta=replace(teacher.meta, arch=NAME), name=NAME)


def teacher_specs():
    from invkit.specs import TeacherSpec

    yield TeacherSpec(
        NAME, "NVIDIA's ResNet-50 v1.5 training checkpoint, in torchvision's resnet50",
        factory=build, source="nvidia", input_size=224, num_classes=1000,
        default_weights=f"./{DEFAULT_FILE.as_posix()}", family="imagenet", batchnorm=True)
