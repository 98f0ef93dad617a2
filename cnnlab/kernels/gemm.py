"""Matrix multiplies outside the convolutions (linear layers), on cnnlab's threads.

Why: left to itself, NumPy's OpenBLAS multiplies a linear layer's product on its own
threads, and after each call those threads keep spinning for a while, waiting for more
work. On a machine with as many cores as cnnlab has threads, the spinning threads then
take cores from cnnlab's own threads in the convolution, batch norm and pooling that
follow: a LeNet-5 training step at batch 256 took 32 ms with BLAS's threads there against
25 ms with these products on cnnlab's threads (2 cores). So these products run like a
convolution's blocks: split over cnnlab's threads (for products big enough to pay for
the hand-off), BLAS held to one thread while they run. A product is split along the
rows of its result, or, when it has fewer rows than threads (batch-1 inference), along
its columns; a weight gradient ``a.T @ b`` along the rows of its result too, so no
thread's partial sum has to be added to another's.

Products with M*N*K below ``parallel.BLAS_THREADS_MNK`` are left to plain ``np.matmul``:
they take microseconds, OpenBLAS mostly keeps them on the calling thread, and holding
BLAS would cost a few microseconds more, which batch-1 inference feels. Where BLAS cannot
be held (no threadpoolctl, and neither ``OMP_NUM_THREADS`` nor ``OPENBLAS_NUM_THREADS``
is 1), every product is a plain ``np.matmul``, threaded by BLAS.
"""
from __future__ import annotations

import numpy as np

from . import parallel


def _parts(rows: int, flops: int):
    """Blocks of ``rows`` for cnnlab's threads: one block for products too small to split."""
    threads = min(parallel.get_num_threads(), rows)
    if flops < parallel.SMALL_FLOPS or threads <= 1:
        return [(0, rows)]
    return [(rows * t // threads, rows * (t + 1) // threads) for t in range(threads)]


def _plain(m: int, k: int, n: int) -> bool:
    return m * k * n < parallel.BLAS_THREADS_MNK or not parallel.can_block()


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for 2-D a (M, K) and b (K, N), split over cnnlab's threads."""
    (m, k), n = a.shape, b.shape[1]
    if _plain(m, k, n):
        return a @ b
    out = np.empty((m, n), np.result_type(a, b))
    flops = 2 * m * k * n
    if m >= min(parallel.get_num_threads(), n):      # rows of the result
        parallel.run(_parts(m, flops), lambda lo, hi, acc: np.matmul(a[lo:hi], b, out=out[lo:hi]),
                     hold_blas=True)
    else:                                            # fewer rows than threads: its columns
        parallel.run(_parts(n, flops), lambda lo, hi, acc: np.matmul(a, b[:, lo:hi], out=out[:, lo:hi]),
                     hold_blas=True)
    return out


def matmul_tn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a.T @ b`` for 2-D a (M, K) and b (M, N): a sum over the M rows (a weight
    gradient), split over the K rows of the result."""
    (m, k), n = a.shape, b.shape[1]
    if _plain(m, k, n):
        return a.T @ b
    out = np.empty((k, n), np.result_type(a, b))
    parallel.run(_parts(k, 2 * m * k * n), lambda lo, hi, acc: np.matmul(a[:, lo:hi].T, b, out=out[lo:hi]),
                 hold_blas=True)
    return out
