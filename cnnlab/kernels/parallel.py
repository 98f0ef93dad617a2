"""Running a kernel over blocks of images, on cnnlab's own threads.

Why: NumPy's BLAS parallelises each matrix multiply by itself. A convolution's
multiplies are skinny (tens of thousands of rows, 16 to 64 columns), and on them BLAS's
threads spend much of their time waiting for each other, while everything around the
multiply (the im2col copy, padding, layout changes) runs on one core and streams tens of
megabytes through memory. Cutting the batch into blocks of a few images, whose im2col
matrix stays in cache, and handing whole blocks to threads that each call a
single-threaded BLAS keeps every core busy on data it just wrote.

``blocks`` plans a convolution's split and ``split`` an elementwise pass's (ReLU, batch
norm); ``run`` executes either, ``total``/``add_to`` reduce per-thread sums, and
``workspace`` hands each thread reusable scratch memory (fresh multi-megabyte
temporaries cost page faults on every call).

Thread counts: :func:`set_num_threads` (default: the process's CPU count, capped by
``OMP_NUM_THREADS`` if set). While blocks of matrix products run (a convolution's, a
linear layer's: :mod:`cnnlab.kernels.gemm`), every BLAS that `threadpoolctl`_ finds (an
optional dependency: ``pip install cnnlab[fast]``) is held to one thread; within one
model call, once held it stays so (:func:`enter_call`). Without threadpoolctl cnnlab
cannot do that, so unless ``OMP_NUM_THREADS`` or
``OPENBLAS_NUM_THREADS`` is 1 each convolution runs as one block, BLAS doing the
threading as before (elementwise passes, which call no BLAS, are split either way);
results are the same up to float rounding.

Determinism: blocks are assigned to threads statically (block i to thread i mod T) and
each thread reduces its blocks in order, so a given thread count always gives
bit-identical results.

.. _threadpoolctl: https://github.com/joblib/threadpoolctl
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import os
import threading

import numpy as np

# an im2col block of about this many bytes stays in the L2/L3 cache of current CPUs
TARGET_BLOCK_BYTES = 2 << 20
# but a block does at least about this many flops of products: a convolution's block
# makes some thirty NumPy calls (about 70 us), which blocks of three 16-channel 32x32
# images (14 MFLOP forward) felt; ResNet-20's 16-channel layers, forward + backward, at
# 2 threads: blocks of 3 images 18.1 ms, of 7 images 16.3 ms
MIN_BLOCK_FLOPS = 32_000_000
# scratch arrays up to this size are kept per thread for reuse; larger ones are not
WORKSPACE_KEEP_BYTES = 16 << 20

_lock = threading.Lock()
_threads: int | None = None
_pool: "_Workers | None" = None
_blas = None          # threadpoolctl controllers of the loaded BLAS libraries, [] if none
_local = threading.local()


def _default_threads() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.strip().isdigit() and int(env) > 0:
        n = min(n, int(env))
    return max(n, 1)


def get_num_threads() -> int:
    """Threads cnnlab's kernels use (see :func:`set_num_threads`)."""
    global _threads
    if _threads is None:
        _threads = _default_threads()
    return _threads


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in cnnlab's kernels (convolution, batch norm, ReLU), like
    ``torch.set_num_threads``. Results are bit-identical between runs with the same
    thread count."""
    global _threads, _pool
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"set_num_threads: expected a positive int, got {n!r}")
    with _lock:
        if _pool is not None and n != _threads:
            _pool.retire()  # a run already using it still finishes
            _pool = None
        _threads = n


def _reset_after_fork() -> None:
    # a forked child inherits the pool object but not its threads
    global _pool, _local, _blas_depth, _lock
    _pool, _local, _blas_depth, _lock = None, threading.local(), 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _blas_controllers() -> list:
    global _blas
    if _blas is None:
        try:
            import threadpoolctl
        except ImportError:
            _blas = []
        else:
            _blas = threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers
    return _blas


def _blas_single_threaded_by_env() -> bool:
    return any(os.environ.get(k, "").strip() == "1" for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"))


def can_block() -> bool:
    """Whether kernels may split work into blocks: only where BLAS can be held to one
    thread (or already is), since many small multiplies on a multi-threaded BLAS are far
    slower than one big one."""
    return bool(_blas_controllers()) or _blas_single_threaded_by_env()


def blocks(n: int, rows_per_item: int, row_bytes: int, item_flops: int = 0) -> list[tuple[int, int]]:
    """Split items 0..n into contiguous (lo, hi) blocks whose im2col matrices
    (rows_per_item rows of row_bytes each per item) are about TARGET_BLOCK_BYTES, but
    whose products (``item_flops`` per item) come to at least MIN_BLOCK_FLOPS, with at
    least one block per thread where there are enough items. Block i runs on thread
    i mod T, so the count is rounded down to a multiple of the thread count (a block may
    then hold up to twice the target) and the sizes differ by at most one: every thread
    gets the same share (128 images in blocks of 7 left one thread two images more)."""
    if n <= 1 or not can_block():
        return [(0, n)]
    threads = min(get_num_threads(), n)
    per_block = max(1, TARGET_BLOCK_BYTES // max(rows_per_item * row_bytes, 1))
    if item_flops > 0:
        per_block = max(per_block, -(-MIN_BLOCK_FLOPS // item_flops))
    count = n // min(per_block, -(-n // threads))
    count = count - count % threads if count >= threads else threads
    return [(n * i // count, n * (i + 1) // count) for i in range(count)]


# memory-bound elementwise work smaller than this is not worth handing to threads
MIN_SPLIT_ELEMENTS = 1 << 16


def split(x: np.ndarray) -> list[tuple[int, int]]:
    """Cut axis 0 of ``x`` into one contiguous block per thread, for memory-bound
    elementwise passes and per-channel sums (which NumPy runs on one core, with the GIL
    released, so threads do help); one block, the whole of axis 0, for small arrays
    (callers treat a single block as "do it in one go", which also covers 0-d arrays)."""
    if x.ndim == 0 or x.size < MIN_SPLIT_ELEMENTS:
        return [(0, x.shape[0] if x.ndim else 1)]
    n = x.shape[0]
    threads = min(get_num_threads(), n)
    return [(n * t // threads, n * (t + 1) // threads) for t in range(threads)]


def elementwise(ufunc, *operands, out: np.ndarray) -> np.ndarray:
    """``ufunc(*operands, out=out)`` for operands of ``out``'s shape (or scalars), split
    over threads along axis 0 when large (see :func:`split`). ``out`` chooses the memory
    layout; operands laid out differently are read as they lie."""
    parts = split(out)
    if len(parts) == 1:
        return ufunc(*operands, out=out)
    cut = [(lambda lo, hi, o=o: o[lo:hi]) if np.ndim(o) else (lambda lo, hi, o=o: o) for o in operands]
    run(parts, lambda lo, hi, acc: ufunc(*(c(lo, hi) for c in cut), out=out[lo:hi]), blas=False)
    return out


def total(accs, key):
    """Sum ``acc[key]`` over the accumulators :func:`run` returned, in thread order (so
    the rounding, too, depends only on the thread count)."""
    out = accs[0][key]
    for acc in accs[1:]:
        out = out + acc[key]
    return out


def add_to(acc: dict, key: str, value) -> None:
    """``acc[key] += value``, starting from ``value``."""
    if key in acc:
        acc[key] += value
    else:
        acc[key] = value


# a multiply below this many flops is done before BLAS's threads would have synchronised
SMALL_FLOPS = 20_000_000
# below this M*N*K a product takes microseconds and OpenBLAS keeps it on the calling
# thread (interface/gemm.c gives one thread per 65536 * 4 of M*N*K; single-row products,
# which it hands to gemv, have a lower threshold), so holding BLAS would only cost time
BLAS_THREADS_MNK = 2 * 65536 * 4


def run(block_list, fn, flops=None, blas=True, hold_blas=False):
    """Call ``fn(lo, hi, acc)`` for every block, block i on thread i mod T, and return the
    list of per-thread accumulators (one per thread that ran; ``acc`` is a dict a thread
    keeps across its blocks, for reductions such as a weight gradient).

    ``blas``: the blocks multiply matrices, so BLAS is held to one thread while they run
    on several (pass False for elementwise passes). A single block runs in the calling
    thread, and BLAS keeps its own threads then, unless ``flops`` (the whole call's
    matrix-multiply work) says the product is too small for them to pay: on batch-1
    inference a multi-threaded BLAS can take 10x longer on a busy machine (and products
    below ``BLAS_THREADS_MNK`` are left alone: BLAS does not thread them).
    ``hold_blas``: hold BLAS to one thread even for a single block (see
    :mod:`cnnlab.kernels.gemm` for why).

    If a block raises, its thread stops, the other threads finish their blocks (on the
    workers; a run done inline stops there), and then the first exception in thread order
    is raised: nothing still writes into the outputs once ``run`` has returned or raised
    (unless a second Ctrl-C interrupts the wait for the workers). A ``run`` inside a
    block runs its blocks in that thread."""
    threads = min(get_num_threads(), len(block_list))
    if len(block_list) == 1 or getattr(_local, "in_run", False):
        acc = {}

        def every_block():
            for lo, hi in block_list:
                fn(lo, hi, acc)

        inline(every_block, flops, blas, hold_blas)
        return [acc]

    def work(t):
        _local.in_run = True
        try:
            acc = {}
            for lo, hi in block_list[t::threads]:
                fn(lo, hi, acc)
            return acc
        finally:
            _local.in_run = False

    with _blas_limited(blas):
        if threads == 1:
            return [work(0)]
        pool = _get_pool()
        if not pool.busy.acquire(blocking=False):
            return _inline(work, threads)
        if pool.retired or threads > pool.size + 1:   # set_num_threads ended these workers meanwhile
            pool.busy.release()
            return _inline(work, threads)
        try:
            return pool.run(work, threads)
        finally:
            if pool.retired:
                _drop_pool(pool)
            pool.busy.release()


def inline(fn, flops=None, blas=True, hold_blas=False):
    """``fn()`` on the calling thread, with BLAS as :func:`run` sets it for a single block
    (see there): held to one thread for products too small for BLAS's threads to pay,
    given back its threads for large ones, left alone for products it does not thread
    and inside a run's block. No context manager: at batch 1 each layer felt its 2 us."""
    small = flops is not None and flops < SMALL_FLOPS
    # holding BLAS costs microseconds, felt at batch 1: not for products it will not thread
    unthreaded = flops is not None and flops < 2 * BLAS_THREADS_MNK
    if not blas or unthreaded or getattr(_local, "in_run", False):
        return fn()
    if not (small or hold_blas):
        _end_call_hold()          # a product big enough for BLAS's own threads: give them back
        return fn()
    scope = getattr(_local, "scope", None)
    controllers = _blas_controllers() if not scope else None
    if not controllers:           # held for this model call already, or nothing to hold
        return fn()
    _hold(controllers, for_call=scope is not None)   # in a model call: held until it ends
    if scope is not None:
        return fn()
    try:
        return fn()
    finally:
        _release(controllers)


def _inline(work, threads: int) -> list:
    """Every thread's share in the calling thread, in thread order, so the accumulators
    (and the rounding) are those of a run on the workers: for a run that finds them busy
    with another thread's run, or ended by set_num_threads."""
    return [work(t) for t in range(threads)]


_blas_depth = 0          # how many threads are inside _blas_limited(True)
_blas_saved: list = []   # the thread counts to restore when the last one leaves


def _hold(controllers, for_call: bool = False) -> None:
    global _blas_depth, _blas_saved
    with _lock:
        if _blas_depth == 0:
            _blas_saved = [c.get_num_threads() for c in controllers]
            for c in controllers:
                c.set_num_threads(1)
        _blas_depth += 1
        if for_call:
            _local.scope = True      # set with the count, so exit_call releases exactly this hold


def _release(controllers) -> None:
    global _blas_depth
    with _lock:
        _blas_depth -= 1
        if _blas_depth == 0:
            for c, k in zip(controllers, _blas_saved):
                c.set_num_threads(k)


@contextlib.contextmanager
def _blas_limited(active=True):
    """Hold every BLAS threadpoolctl finds to one thread while any thread is inside (a
    no-op without threadpoolctl, or when not ``active``). Entries are counted, so
    overlapping calls from several threads restore the original counts exactly once.
    Inside a :func:`enter_call` scope the first hold lasts until the scope ends."""
    controllers = _blas_controllers() if active else []
    if not controllers:
        yield
        return
    scope = getattr(_local, "scope", None)
    if scope is not None:            # a model call: hold once, release when it ends
        if not scope:
            _hold(controllers, for_call=True)
        yield
        return
    _hold(controllers)
    try:
        yield
    finally:
        _release(controllers)


def enter_call() -> bool:
    """Open a scope in which BLAS, once a kernel holds it to one thread, stays held until
    :func:`exit_call` (``Module.__call__`` opens one around a whole model call). Holding
    and releasing BLAS around each of the twenty convolutions of a batch-1 ResNet-20
    cost 4% of its time. A product big enough for BLAS's own threads (a single block of
    ``SMALL_FLOPS`` or more) ends the hold early. Returns whether this call opened the
    scope (False when nested); pass that to :func:`exit_call`."""
    if getattr(_local, "scope", None) is not None:
        return False
    _local.scope = False             # open; nothing held yet
    return True


def exit_call(opened: bool) -> None:
    if opened:
        _end_call_hold()
        _local.scope = None


def _end_call_hold() -> None:
    """Release the hold the current model call took, if any (the call's scope stays open)."""
    if getattr(_local, "scope", None):   # getattr: a forked child starts with a fresh _local
        _local.scope = False
        _release(_blas_controllers())


class _Workers:
    """cnnlab's worker threads, woken by a lock each rather than through a queue: a call
    whose blocks went through ``concurrent.futures`` cost about 40 us to hand out and
    collect, felt when a small network's step makes twenty calls; this costs about 20 us.

    Worker t (1..n) waits on ``go[t]``; ``run`` releases it with the job set, does
    thread 0's share itself, then waits on each ``done[t]``. One run at a time holds
    ``busy``."""

    def __init__(self, n: int):
        self.size = n
        self.busy = threading.Lock()
        self.retired = False
        self.go = [threading.Lock() for _ in range(n + 1)]
        self.done = [threading.Lock() for _ in range(n + 1)]
        self.job = None
        for t in range(1, n + 1):
            self.go[t].acquire()
            self.done[t].acquire()
            threading.Thread(target=self._loop, args=(t,), name=f"cnnlab-{t}", daemon=True).start()

    def _loop(self, t: int) -> None:
        go, done = self.go[t], self.done[t]
        while True:
            go.acquire()
            job = self.job
            if job is None:          # stop()
                return
            try:
                job(t)
            finally:
                # the job's closures hold the run's arrays (a convolution's input gradient):
                # let them go now, not when the next job arrives
                job = None
                done.release()

    def run(self, work, threads: int) -> list:
        """``work(t)`` for t in 0..threads-1, t > 0 on the workers; the results in thread
        order, or the first exception in thread order once every thread has finished."""
        results, errors = [None] * threads, [None] * threads
        # each worker runs in a copy of the caller's context, so that NumPy's error state
        # (np.errstate, a context variable) governs the caller's blocks on every thread
        context = contextvars.copy_context()

        def job(t):
            try:
                results[t] = context.copy().run(work, t)
            except BaseException as e:  # noqa: B036 - re-raised below, after every thread
                errors[t] = e

        self.job = job
        started = finished = 1
        try:
            for t in range(1, threads):
                self.go[t].release()
                started += 1
            try:
                results[0] = work(0)  # the calling thread takes a share instead of waiting idle
            except BaseException as e:  # noqa: B036 - re-raised below, after every thread
                errors[0] = e
            for t in range(1, threads):
                self.done[t].acquire()
                finished += 1
        finally:
            if finished < started:   # interrupted (Ctrl-C) while workers still run: their late
                self.retired = True  # "done" would confuse the next run, so these are never reused
            else:
                self.job = None
        for e in errors:
            if e is not None:
                raise e
        return results

    def retire(self) -> None:
        """Stop the workers now, or, if a run is using them, when it ends."""
        self.retired = True
        if self.busy.acquire(blocking=False):
            try:
                self.stop()
            finally:
                self.busy.release()

    def stop(self) -> None:
        """End the idle workers (call with ``busy`` held). Workers still running a job
        (an interrupted run) are left to finish it and then wait forever, as daemons."""
        if self.job is None:
            for t in range(1, self.size + 1):
                self.go[t].release()
        self.size = 0


def _drop_pool(pool: _Workers) -> None:
    global _pool
    with _lock:
        if _pool is pool:
            _pool = None
    pool.stop()


def _get_pool() -> _Workers:
    global _pool
    with _lock:
        if _pool is None:
            _pool = _Workers(max(get_num_threads() - 1, 1))
        return _pool


def workspace(slot: int, shape, dtype) -> np.ndarray:
    """A scratch array of ``shape`` for the calling thread, reused across calls (slot
    tells apart buffers a kernel needs at the same time). Its contents are garbage; it
    must not outlive the block that asked for it. Arrays larger than
    ``WORKSPACE_KEEP_BYTES`` (a whole batch run as one block) are not kept."""
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    if size > WORKSPACE_KEEP_BYTES:
        return np.empty(shape, dtype)
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    buf = bufs.get(slot)
    if buf is None or buf.nbytes < size:
        buf = bufs[slot] = np.empty(max(size, 1), np.uint8)
    return buf[:size].view(dtype).reshape(shape)
