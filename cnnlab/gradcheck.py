"""Finite-difference gradient checking, as taught in cs231n.

The analytic gradient of ``sum(fn(*inputs) * G)`` for a random upstream gradient G (not
``fn(...).sum()``, which would hide a wrongly transposed gradient) is compared with the
central difference (f(x + h) - f(x - h)) / 2h in float64, element by element. The error
reported per input is the largest relative error

    |analytic - numeric| / max(|analytic|, |numeric|, tiny)

which cs231n reads as: below 1e-7 is right, around 1e-4 suspicious, above 1e-2 wrong.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .autograd import Tensor


class GradcheckError(AssertionError):
    pass


@dataclass
class GradcheckResult:
    """Per checked input: the largest relative and absolute error. ``ok`` if all pass."""
    rel_errors: list = field(default_factory=list)
    abs_errors: list = field(default_factory=list)
    ok: bool = True

    @property
    def max_rel_error(self) -> float:
        return max(self.rel_errors, default=0.0)


def gradcheck(fn, inputs, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              seed: int = 0, raise_exception: bool = True) -> GradcheckResult:
    """Check ``fn``'s backward against central finite differences.

    Args:
        fn: takes the inputs (Tensors) and returns one Tensor.
        inputs: Tensors (or arrays); those with ``requires_grad`` are checked. They are
            converted to float64 copies, so the check is not limited by float32 rounding.
        eps: the finite-difference step. atol, rtol: an element fails when
            |analytic - numeric| > atol + rtol * |numeric|.
        raise_exception: raise :class:`GradcheckError` on failure (else return ``ok=False``).

    Returns:
        :class:`GradcheckResult` with the largest relative error per checked input.
    """
    xs = []
    for x in inputs:
        if isinstance(x, Tensor):
            xs.append(Tensor(x.data.astype(np.float64) if x.dtype.kind == "f" else x.data,
                             requires_grad=x.requires_grad))
        else:
            xs.append(Tensor(np.asarray(x, np.float64), requires_grad=True))
    checked = [x for x in xs if x.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires grad; nothing to check")
    out = fn(*xs)
    upstream = np.random.default_rng(seed).standard_normal(out.shape)
    out.backward(upstream)
    result = GradcheckResult()
    for k, x in enumerate(checked):
        analytic = np.zeros_like(x.data) if x.grad is None else x.grad
        numeric = np.zeros_like(x.data)
        for i in np.ndindex(x.shape):   # by index: a flat view of a channels-last input would be a copy
            orig = x.data[i]
            x.data[i] = orig + eps
            plus = float((fn(*xs).data * upstream).sum())
            x.data[i] = orig - eps
            minus = float((fn(*xs).data * upstream).sum())
            x.data[i] = orig
            numeric[i] = (plus - minus) / (2 * eps)
        diff = np.abs(analytic - numeric)
        rel = diff / np.maximum(np.maximum(np.abs(analytic), np.abs(numeric)), 1e-12)
        result.rel_errors.append(float(rel.max(initial=0.0)))
        result.abs_errors.append(float(diff.max(initial=0.0)))
        bad = diff > atol + rtol * np.abs(numeric)
        if bad.any():
            result.ok = False
            if raise_exception:
                i = int(np.flatnonzero(bad.reshape(-1))[0])
                raise GradcheckError(
                    f"gradcheck: input {k} (shape {x.shape}) element {np.unravel_index(i, x.shape)}: "
                    f"analytic {analytic.reshape(-1)[i]:.6g} vs numeric {numeric.reshape(-1)[i]:.6g}; "
                    f"max relative error {result.rel_errors[-1]:.3g}"
                )
    return result
