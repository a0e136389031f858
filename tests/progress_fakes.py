"""A progress display that records the calls a trainer makes on it (distill, extend)."""

from __future__ import annotations


class FakeProgress:
    """Records every call the trainer makes on its progress display."""

    def __init__(self):
        self.calls: list[tuple] = []

    def start_task(self, description, total):
        self.calls.append(("start_task", description, total))

    def advance(self, n=1):
        self.calls.append(("advance", n))

    def report(self, losses, accuracy=None):
        self.calls.append(("report", dict(losses), accuracy))

    def log(self, message):
        self.calls.append(("log", message))
