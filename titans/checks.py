"""Validation shared by configs, layers and ops: one rule, one message."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def check_number(name: str, value: Any, rule: str, ok: Callable[[float], bool]) -> None:
    """Raise ``ValueError("{name} must be a number {rule}, got ...")`` unless ``value`` is an int
    or float (not a bool) for which ``ok(value)`` holds; NaN fails every comparison rule."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
        raise ValueError(f"{name} must be a number {rule}, got {value!r}")
