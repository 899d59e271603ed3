"""titans.checks: each helper accepts what its rule allows and raises a ValueError naming the
field, the rule and the bad value otherwise; bools are not numbers, NaN fails, None only passes
where it is optional."""

import math
import re

import numpy as np
import pytest

from titans.checks import (
    check_bool,
    check_choice,
    check_int,
    check_ints,
    check_number,
    check_numbers,
)


def positive(x):
    return x > 0


def in_unit(x):
    return 0 <= x <= 1


def raises(message):
    return pytest.raises(ValueError, match="^" + re.escape(message) + "$")


# ------------------------------------------------------------------------------- check_number


@pytest.mark.parametrize("value", [1, 0.5, 1e30])
def test_check_number_accepts_ints_and_floats_that_keep_the_rule(value):
    check_number("lr", value, "> 0", positive)


@pytest.mark.parametrize("value", [0, -1.5, -math.inf, math.nan, True, False, "1.0", None, [1]])
def test_check_number_names_field_rule_and_value(value):
    with raises(f"lr must be a finite number > 0, got {value!r}"):
        check_number("lr", value, "> 0", positive)


def test_check_number_nan_and_infinity_fail_every_rule():
    """inf keeps "> 0" (and -inf "<= 1"), but an infinite lr, epsilon or RoPE base makes every
    result NaN or 0: a number is finite."""
    for value in (math.nan, math.inf, -math.inf):
        for rule, ok in (("> 0", positive), ("<= 1", lambda x: x <= 1), ("in [0, 1]", in_unit),
                         ("(any)", lambda x: True)):
            with raises(f"x must be a finite number {rule}, got {value!r}"):
                check_number("x", value, rule, ok)


def test_check_number_optional_allows_none_only():
    check_number("max_grad_norm", None, "> 0", positive, optional=True)
    check_number("max_grad_norm", 2.0, "> 0", positive, optional=True)
    for bad in (0.0, True, "1"):
        with raises(f"max_grad_norm must be None or a finite number > 0, got {bad!r}"):
            check_number("max_grad_norm", bad, "> 0", positive, optional=True)


# ------------------------------------------------------------------------------ check_numbers


def test_check_numbers_needs_a_non_empty_list_of_numbers_that_keep_the_rule():
    check_numbers("depths", [0, 0.5, 1], "in [0, 1]", in_unit)
    check_numbers("depths", (0.25,), "in [0, 1]", in_unit)
    for bad in ([], None, 0.5, [0.5, 1.5], [0.5, True], [math.nan], [math.inf], ["0.5"], "0.5"):
        with raises(f"depths must be a non-empty list of finite numbers in [0, 1], got {bad!r}"):
            check_numbers("depths", bad, "in [0, 1]", in_unit)


# ---------------------------------------------------------------------------------- check_int


@pytest.mark.parametrize(("value", "low"), [(0, 0), (5, 1), (-3, None), (2**40, 1)])
def test_check_int_accepts_ints_at_least_low(value, low):
    check_int("n", value, low)


@pytest.mark.parametrize("value", [0, -1, 2.0, 1.5, "4", True, False, None, math.nan,
                                   np.int64(4)])
def test_check_int_names_field_rule_and_value(value):
    with raises(f"seq_len must be an int >= 1, got {value!r}"):
        check_int("seq_len", value, 1)


def test_bool_is_not_an_int_even_without_a_bound():
    check_int("seed", -7)
    for bad in (True, False, 1.0):
        with raises(f"seed must be an int, got {bad!r}"):
            check_int("seed", bad)


def test_check_int_optional_allows_none_only():
    check_int("window", None, 1, optional=True)
    check_int("window", 3, 1, optional=True)
    for bad in (0, True, 2.5, "3"):
        with raises(f"window must be None or an int >= 1, got {bad!r}"):
            check_int("window", bad, 1, optional=True)


def test_check_int_numpy_integers_only_where_asked():
    check_int("step", np.int64(3), 0, numpy=True)
    check_int("step", np.uint8(0), 0, numpy=True)
    for bad in (np.int64(-1), np.float64(3.0), np.bool_(True), True):
        with raises(f"step must be an int >= 0, got {bad!r}"):
            check_int("step", bad, 0, numpy=True)
    with raises(f"step must be an int >= 0, got {np.int64(3)!r}"):
        check_int("step", np.int64(3), 0)


# --------------------------------------------------------------------------------- check_ints


def test_check_ints_needs_a_non_empty_list_of_ints_at_least_low():
    check_ints("context_multipliers", [1, 4], 1)
    check_ints("lengths", (np.int64(2), 8), 2, numpy=True)
    for bad in ([], None, 4, [1, 0], [1, True], [1, 2.0], ["4"]):
        with raises(f"context_multipliers must be a non-empty list of ints >= 1, got {bad!r}"):
            check_ints("context_multipliers", bad, 1)
    numpy_values = [np.int64(2), 8]
    with raises(f"lengths must be a non-empty list of ints >= 2, got {numpy_values!r}"):
        check_ints("lengths", numpy_values, 2)


# --------------------------------------------------------------------------------- check_bool


def test_check_bool_takes_true_and_false_only():
    check_bool("use_decay", True)
    check_bool("use_decay", False)
    for bad in (0, 1, 1.0, "True", None, np.bool_(True)):
        with raises(f"use_decay must be a bool, got {bad!r}"):
            check_bool("use_decay", bad)


# ------------------------------------------------------------------------------- check_choice


def test_check_choice_lists_the_choices():
    check_choice("activation", "gelu", ("gelu", "silu"))
    for bad in ("GELU", "", None, 1):
        with raises(f"activation must be one of ('gelu', 'silu'), got {bad!r}"):
            check_choice("activation", bad, ("gelu", "silu"))
