"""The docstring examples of every invkit module run, and show what the code really returns.

One test per module (``__main__`` modules are skipped: importing them runs the CLI).
Each runs in its own temporary working directory, so examples that write files write there.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil

import pytest

import invkit
import invkit_plugins

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

#: Modules whose examples use an optional extra (both are in the ``test`` extra).
EXTRAS = {"invkit.history": {"matplotlib": "plot", "tensorboard": "tensorboard"}}


def _module_names() -> list[str]:
    names = []
    for package in (invkit, invkit_plugins):
        names.append(package.__name__)
        prefix = package.__name__ + "."
        for info in pkgutil.walk_packages(package.__path__, prefix):
            if info.name.rsplit(".", 1)[-1] != "__main__":
                names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", _module_names())
def test_docstring_examples(name, tmp_path, monkeypatch):
    for package, extra in EXTRAS.get(name, {}).items():
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{name}'s examples need {package}: pip install 'invkit[{extra}]'")
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in finder.find(module, name):
        if "__mutmut_" in test.name:
            # Under mutation testing (README, "Development") mutmut keeps copies of each
            # function, docstring included; the function itself still runs its example.
            continue
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
