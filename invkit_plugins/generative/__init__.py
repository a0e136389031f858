"""A generator method (``fast``): train a conditional generator once, then each batch
costs a forward pass (Fast-Datafree, Fang et al., AAAI 2022).

Registers the method ``fast`` (core mounts it as ``invkit run fast``). The objective is
any ``--prior`` set (default: cross-entropy + bn-stats + tv-l2, the priors of the
bundled DeepInversion plugin), applied to the generator's images. Loaded through the
``invkit`` entry-point group and imports only invkit's public API.

Python API::

    from invkit import run_method
    from invkit_plugins.generative import FastOptions
    run_method("fast", FastOptions(train_steps=600, save_generator="g.safetensors"),
               teacher="digits", images_per_class=100, output="generations/digits-fast")
    # later: any number of images from the saved generator, no training
    run_method("fast", FastOptions(generator="g.safetensors"), teacher="digits",
               images_per_class=1000, output="generations/digits-fast-10k")

    from invkit_plugins.generative import FastGenerator, FastConfig   # one batch
    result = FastGenerator(teacher, objective, config=FastConfig(train_steps=300)).generate([1, 2])
"""

from __future__ import annotations

import importlib

from invkit import MethodSpec, hookimpl
from invkit_plugins.generative.options import FastConfig, FastOptions, configure
from invkit_plugins.generative.presets import DEFAULT_PRIORS, PRESETS

# The generator and its loop import torch: loaded on first use, so listings stay fast.
_LAZY = {"FastGenerator": "method", "feature_diversity": "method", "mode_seeking": "method",
         "ConditionalGenerator": "network", "GeneratorSpec": "network",
         "load_generator": "network", "save_generator": "network"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)


def make_generator(teacher, objective, *, config, student=None, verifier=None):
    """The method's factory: a :class:`~invkit_plugins.generative.method.FastGenerator`."""
    from invkit_plugins.generative.method import FastGenerator

    return FastGenerator(teacher, objective, config=config, student=student,
                         verifier=verifier)

__all__ = ["FastGenerator", "FastConfig", "FastOptions", "configure", "ConditionalGenerator",
           "GeneratorSpec", "load_generator", "save_generator", "feature_diversity",
           "mode_seeking", "default_objective", "PRESETS", "DEFAULT_PRIORS"]


def default_objective():
    """The method's default objective (its ``default_priors``)."""
    from invkit import build_objective, parse_prior

    return build_objective([parse_prior(p) for p in DEFAULT_PRIORS])


@hookimpl
def invkit_methods():
    yield MethodSpec(
        "fast",
        "train a conditional generator once, then images at the cost of a forward pass",
        factory=make_generator, options=FastOptions, configure=configure,
        default_priors=DEFAULT_PRIORS, presets=PRESETS, needs_batchnorm=True,
    )
