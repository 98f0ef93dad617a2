"""Array kernels: pure NumPy functions on ndarrays, no autograd.

The ops in :mod:`cnnlab.functional` call these; a faster implementation of a kernel
can replace one here without touching the ops. Each kernel has a naive loop twin in
the tests that it is checked against.
"""
from .padding import pad2d, pad2d_backward, padded_index
from . import gemm, parallel
from .windows import add_windows, out_size, windows

__all__ = ["pad2d", "pad2d_backward", "padded_index", "windows", "add_windows", "out_size", "parallel", "gemm"]
