"""Small checks shared by constructors that validate their settings (private)."""

from __future__ import annotations

import math

__all__ = ["int_problem", "seconds_problem"]


def bool_problem(name: str, value: object) -> list[str]:
    """Return a problem if `value` is not a bool (no truthy strings or numbers)."""
    value_is_bool: object = isinstance(value, bool)
    if value_is_bool is not True:
        return [f"{name} must be true or false, got {value!r}"]
    return []


def int_problem(name: str, value: object, *, minimum: int) -> list[str]:
    """Return a problem if `value` is not an int (bools refused) of at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        return [f"{name} must be an int >= {minimum}, got {value!r}"]
    return []


def seconds_problem(name: str, value: object, *, allow_zero: bool = True) -> list[str]:
    """Return a problem if `value` is not a finite number of seconds (> 0 unless allow_zero)."""
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if ok:
        return []
    bound = ">= 0" if allow_zero else "> 0"
    return [f"{name} must be a finite number of seconds {bound}, got {value!r}"]
