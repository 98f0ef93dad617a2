"""Matrix multiplies outside the convolutions (linear layers), on cnnlab's threads.

Why: left to itself, NumPy's OpenBLAS multiplies a linear layer's product on its own
threads, and after each call those threads keep spinning for a while, waiting for more
work. On a machine with as many cores as cnnlab has threads, the spinning threads then
take cores from cnnlab's own threads in the convolution, batch norm and pooling that
follow: a LeNet-5 training step at batch 256 took 32 ms with BLAS threads there against
23 ms with BLAS held to one thread (2 cores). So these products run like a
convolution's blocks: rows split over cnnlab's threads (for products big enough to pay
for the hand-off), BLAS held to one thread while they run.

Products too small for OpenBLAS to thread (M*N*K below
``parallel.BLAS_THREADS_MNK``) are left to plain ``np.matmul``: holding BLAS costs a
few microseconds, which is felt at batch 1. Without threadpoolctl (``cnnlab[fast]``),
BLAS cannot be held, and every product is a plain ``np.matmul``, threaded by BLAS.
"""
from __future__ import annotations

import numpy as np

from . import parallel

def _plan(m: int, k: int, n: int):
    """Row blocks for an (m, k) @ (k, n) product, or None for a plain ``np.matmul``."""
    if m * k * n < parallel.BLAS_THREADS_MNK or not parallel.can_block():
        return None
    threads = min(parallel.get_num_threads(), m)
    if 2 * m * k * n < parallel.SMALL_FLOPS or threads <= 1:
        return [(0, m)]
    return [(m * t // threads, m * (t + 1) // threads) for t in range(threads)]


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for 2-D a (M, K) and b (K, N), rows split over cnnlab's threads."""
    (m, k), n = a.shape, b.shape[1]
    if m * k * n < parallel.BLAS_THREADS_MNK:  # checked first: batch-1 inference takes this path
        return a @ b
    plan = _plan(m, k, n)
    if plan is None:
        return a @ b
    out = np.empty((m, n), np.result_type(a, b))
    parallel.run(plan, lambda lo, hi, acc: np.matmul(a[lo:hi], b, out=out[lo:hi]), hold_blas=True)
    return out


def matmul_tn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a.T @ b`` for 2-D a (M, K) and b (M, N): a sum over the M rows (a weight
    gradient), each thread summing its rows and the threads' sums added in order."""
    (m, k), n = a.shape, b.shape[1]
    plan = _plan(m, k, n)
    if plan is None:
        return a.T @ b

    def block(lo, hi, acc):
        parallel.add_to(acc, "sum", a[lo:hi].T @ b[lo:hi])

    return parallel.total(parallel.run(plan, block, hold_blas=True), "sum")
