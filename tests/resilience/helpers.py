"""Small callables that stand in for broker calls in the resilience tests."""

from __future__ import annotations

from collections.abc import Iterable


class Scripted:
    """A broker call that follows a script: each entry is a value to return or an error to raise.

    Counts how many times it really ran, which is what "no call reached the broker" means.
    """

    def __init__(self, script: Iterable[object]) -> None:
        self.script = list(script)
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        step = self.script.pop(0) if self.script else "ok"
        if isinstance(step, BaseException):
            raise step
        return step


def ok() -> str:
    return "ok"


def boom() -> str:
    raise ConnectionError("connection reset by peer")
