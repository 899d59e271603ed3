"""Validation shared by configs, layers, ops and evaluations: one rule, one message.

Every check raises ``ValueError("{name} must be ..., got {value!r}")``: the message names the
field, the rule and the bad value. A bool is never a number or an int here (``True`` is a
Python int, but a config value of ``true`` for a size is a mistake), and a number is finite:
NaN and infinity fail every number rule (an infinite learning rate or epsilon passes "> 0" but
makes every result NaN or 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import Any

import numpy as np


def check_number(
    name: str, value: Any, rule: str, ok: Callable[[float], bool], *, optional: bool = False
) -> None:
    """Raise ``ValueError("{name} must be a number {rule}, got ...")`` unless ``value`` is an int
    or float (not a bool) for which ``ok(value)`` holds; with ``optional``, None passes too (and
    the message says "must be None or a number ...")."""
    if optional and value is None:
        return
    if not _is_number(value) or not ok(value):
        raise ValueError(
            f"{name} must be {_none_or(optional)}a finite number {rule}, got {value!r}")


def check_numbers(name: str, values: Any, rule: str, ok: Callable[[float], bool]) -> None:
    """Raise ``ValueError("{name} must be a non-empty list of numbers {rule}, got ...")`` unless
    ``values`` is a non-empty list or tuple of numbers (not bools) for which ``ok`` holds."""
    if not _is_list(values) or not all(_is_number(v) and ok(v) for v in values):
        raise ValueError(
            f"{name} must be a non-empty list of finite numbers {rule}, got {values!r}")


def check_int(
    name: str,
    value: Any,
    low: int | None = None,
    *,
    optional: bool = False,
    numpy: bool = False,
) -> None:
    """Raise ``ValueError("{name} must be an int >= {low}, got ...")`` unless ``value`` is an int
    (not a bool) and at least ``low`` (None: any int). With ``optional`` None passes too ("must
    be None or an int ..."); with ``numpy`` a numpy integer counts as an int (values that index
    arrays; config fields stay plain ints, which JSON can write)."""
    if optional and value is None:
        return
    if not _is_int(value, low, numpy):
        rule = "" if low is None else f" >= {low}"
        raise ValueError(f"{name} must be {_none_or(optional)}an int{rule}, got {value!r}")


def check_ints(name: str, values: Any, low: int, *, numpy: bool = False) -> None:
    """Raise ``ValueError("{name} must be a non-empty list of ints >= {low}, got ...")`` unless
    ``values`` is a non-empty list or tuple of ints (not bools, numpy integers with ``numpy``)
    each at least ``low``."""
    if not _is_list(values) or not all(_is_int(v, low, numpy) for v in values):
        raise ValueError(f"{name} must be a non-empty list of ints >= {low}, got {values!r}")


def check_bool(name: str, value: Any) -> None:
    """Raise ``ValueError("{name} must be a bool, got ...")`` unless ``value`` is True or False
    (not 0, 1 or a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")


def check_choice(name: str, value: Any, choices: Collection[Any]) -> None:
    """Raise ``ValueError("{name} must be one of {choices}, got ...")`` unless ``value`` is one
    of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _is_int(value: Any, low: int | None, numpy: bool) -> bool:
    types = (int, np.integer) if numpy else int
    return (isinstance(value, types) and not isinstance(value, bool)
            and (low is None or value >= low))


def _is_list(values: Any) -> bool:
    return isinstance(values, (list, tuple)) and len(values) > 0


def _none_or(optional: bool) -> str:
    return "None or " if optional else ""
