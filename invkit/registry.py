"""Registries: the records every plugin returned from one hook, by name.

Example:
    >>> reg = registry("prior")
    >>> reg.get("tv-l2").default_weight
    0.0001
    >>> [s.name for s in registry("teacher").list(include="resnet*", exclude="*v15")][:3]
    ['resnet18', 'resnet34', 'resnet50']
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

import pluggy

from invkit.errors import PluginConflict, unknown
from invkit.hookspecs import RECORD_HOOKS
from invkit.plugins import call_each, get_plugin_manager
from invkit.specs import KINDS

T = TypeVar("T")


class Registry(Generic[T]):
    """Named records of one kind, each tagged with the plugin that provided it."""

    def __init__(self, kind: str, records: dict[str, T]):
        self.kind = kind
        self._records = records

    def __contains__(self, name: object) -> bool:
        return name in self._records

    def __iter__(self) -> Iterator[T]:
        return iter(self._records.values())

    def __len__(self) -> int:
        return len(self._records)

    def names(self) -> list[str]:
        """Names in natural order: ``resnet18 < resnet50 < resnet101``."""
        return sorted(self._records, key=natural_key)

    def get(self, name: str) -> T:
        """The record called ``name``; an unknown name raises listing the closest ones."""
        try:
            return self._records[name]
        except KeyError:
            raise unknown(self.kind, name, self._records) from None

    def list(self, include: str | Iterable[str] | None = None,
             exclude: str | Iterable[str] | None = None) -> list[T]:
        """Records sorted by name, filtered by shell-style patterns (like ``timm.list_models``)."""
        inc, exc = _patterns(include), _patterns(exclude)
        return [
            self._records[n] for n in self.names()
            if (not inc or any(fnmatch.fnmatchcase(n, p) for p in inc))
            and not any(fnmatch.fnmatchcase(n, p) for p in exc)
        ]


def natural_key(name: str) -> tuple:
    """Sort key comparing digit runs as numbers.

    Example:
        >>> sorted(["resnet101", "resnet18", "resnet50"], key=natural_key)
        ['resnet18', 'resnet50', 'resnet101']
    """
    # (0, n, digits) for numbers, (1, text) for text: always comparable with each other;
    # equal numbers ("01", "1") fall back to their digits, so the order is total.
    return tuple((0, int(part), part) if part.isdigit() else (1, part)
                 for part in re.split(r"(\d+)", name) if part)


def _patterns(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


def registry(kind: str, pm: pluggy.PluginManager | None = None) -> Registry:
    """Collect every plugin's records of ``kind`` (teacher, prior, schedule, verifier, method).

    The hook is called through pluggy one plugin at a time (:func:`invkit.plugins.call_each`),
    so one broken plugin is reported and skipped instead of hiding everyone else's records.
    """
    pm = pm or get_plugin_manager()
    expected = KINDS[kind]
    hook_name = RECORD_HOOKS[kind]

    def checked(returned) -> list:
        records = list(returned or ())
        bad = [r for r in records if not isinstance(r, expected)]
        if bad:
            raise TypeError(f"{hook_name} returned {bad[0]!r}, not a {expected.__name__}")
        return records

    records: dict[str, object] = {}
    for provider, returned in call_each(pm, hook_name, consume=checked):
        for record in returned:
            record = dataclasses.replace(record, provider=provider)
            previous = records.get(record.name)
            if previous is not None:
                raise PluginConflict(
                    f"{kind} {record.name!r} is registered twice: by plugin "
                    f"{previous.provider!r} and by plugin {provider!r}"
                )
            records[record.name] = record
    return Registry(kind, records)
