"""Argument checking shared by the functional ops and the layers.

User errors are raised where arguments enter, as ``ValueError`` or ``TypeError``,
with the op or layer that received them, what was expected and what was received.
Ops raise :class:`InputError`; a layer that calls an op re-raises it with its own
name in front (see ``Module.__call__``), so the message names the layer the user wrote.
"""
from __future__ import annotations

import numbers


class InputError(ValueError):
    """A bad shape or value reaching an op. ``where`` is filled in by the first layer
    on the way out, so nested containers do not prefix the message twice."""

    def __init__(self, message: str):
        super().__init__(message)
        self.where = None


def _shape(x) -> tuple:
    return tuple(getattr(x, "shape", ()))


def positive_int(value, name: str, where: str) -> int:
    """``value`` as an int, which must be a positive integer (not a bool)."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{where}: {name} must be a positive int, got {value!r}")
    return int(value)


def pair(value, name: str, where: str, *, allow_zero: bool = False, allow_negative: bool = False) -> tuple:
    """Normalise an int or a pair of ints to a tuple of two ints, checking the range."""
    # fast path first: every layer call goes through here, and ABC isinstance checks are slow
    if type(value) is int and (value >= 1 or (allow_zero and value == 0)):
        return (value, value)
    if (type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int
            and min(value) >= (0 if allow_zero else 1)):
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        out = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value
    ):
        out = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{where}: {name} must be an int or a pair of ints, got {value!r}")
    low = 0 if allow_zero else 1
    if not allow_negative and min(out) < low:
        need = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{where}: {name} must be {need}, got {value!r}")
    return out


def check_rank(x, ranks, where: str, layout: str) -> None:
    if x.ndim not in ranks:
        raise InputError(
            f"{where}: expected a {' or '.join(f'{r}-D' for r in ranks)} input {layout}, "
            f"got shape {_shape(x)}"
        )


def check_float(x, where: str) -> None:
    if x.dtype.kind != "f":
        raise InputError(f"{where}: expected a floating-point input, got dtype {x.dtype}")
