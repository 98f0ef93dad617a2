"""Optional Numba kernels for passes NumPy can only write as several sweeps over memory.

Batch norm is the case: in NumPy its training forward pass is six array operations
(sum, subtract, square-sum, scale, multiply, add) and its backward five, each reading
and writing the whole activation. The loops below do the same arithmetic in two
passes forward (statistics, then normalise) and two backward (sums, then the input
gradient), one row (a position's C channels, channels-last) at a time.

Numba is the ``fast`` extra. Without it, or with ``CNNLAB_JIT=0`` in the environment,
:func:`kernels` returns None and callers keep their NumPy code, which stays the
reference: the tests run both. Numba is imported, and each kernel compiled, on first
use only (the compiled code is cached on disk), so inference and ``cnnlab predict``
never pay for it.

Every kernel takes 2-D (rows, C) arrays, C-contiguous: a channels-last block of a
batch seen as one row per position. Sums accumulate in float64 per channel, which
keeps float32 statistics as accurate as NumPy's pairwise sums.
"""
from __future__ import annotations

import os
import threading
import warnings

_lock = threading.Lock()
_kernels = None          # the compiled namespace, False once found unavailable


def available() -> bool:
    """Whether Numba is installed and not switched off by ``CNNLAB_JIT=0``."""
    if os.environ.get("CNNLAB_JIT", "1").strip() == "0":
        return False
    try:
        import importlib.util
        return importlib.util.find_spec("numba") is not None
    except (ImportError, ValueError):
        return False


def kernels():
    """The namespace of compiled kernels, or None without Numba (or with CNNLAB_JIT=0)."""
    global _kernels
    if _kernels is None:
        with _lock:
            if _kernels is None:
                _kernels = False
                if available():
                    try:
                        _kernels = _build()
                    except ImportError as e:  # installed, but not importable (say, too old for this NumPy)
                        warnings.warn(f"cnnlab: Numba could not be imported ({e}); batch norm runs on NumPy",
                                      RuntimeWarning, stacklevel=2)
    return _kernels or None


def _build():
    import types

    import numba
    import numpy as np

    jit = numba.njit(nogil=True, cache=True, fastmath=False, error_model="numpy")

    @jit
    def channel_sums(x):
        """Per-channel sum of the rows of x, in float64."""
        c = x.shape[1]
        s = np.zeros(c, np.float64)
        for i in range(x.shape[0]):
            for j in range(c):
                s[j] += x[i, j]
        return s

    @jit
    def centered_square_sums(x, mean):
        """Per-channel sum of (x - mean)^2, in float64 (the two-pass variance)."""
        c = x.shape[1]
        s = np.zeros(c, np.float64)
        for i in range(x.shape[0]):
            for j in range(c):
                d = x[i, j] - mean[j]
                s[j] += d * d
        return s

    @jit
    def normalize(x, mean, inv_std, gamma, beta, x_hat, out):
        """x_hat = (x - mean) * inv_std; out = x_hat * gamma + beta (one pass)."""
        for i in range(x.shape[0]):
            for j in range(x.shape[1]):
                h = (x[i, j] - mean[j]) * inv_std[j]
                x_hat[i, j] = h
                out[i, j] = h * gamma[j] + beta[j]

    @jit
    def grad_sums(g, x_hat):
        """Per-channel sums of g and of g * x_hat, in float64."""
        c = g.shape[1]
        sg = np.zeros(c, np.float64)
        sgx = np.zeros(c, np.float64)
        for i in range(g.shape[0]):
            for j in range(c):
                sg[j] += g[i, j]
                sgx[j] += g[i, j] * x_hat[i, j]
        return sg, sgx

    @jit
    def input_grad(g, x_hat, scale, a, b, out):
        """dx = g * scale - x_hat * a - b (one pass)."""
        for i in range(g.shape[0]):
            for j in range(g.shape[1]):
                out[i, j] = g[i, j] * scale[j] - x_hat[i, j] * a[j] - b[j]

    return types.SimpleNamespace(channel_sums=channel_sums, centered_square_sums=centered_square_sums,
                                 normalize=normalize, grad_sums=grad_sums, input_grad=input_grad)
