"""Keeping freed memory for reuse, so big arrays are not faulted in afresh every step.

A training step allocates its activations, gradients and temporaries anew, megabytes
each, and frees them by the end of the step. glibc's allocator hands memory that large
back to the operating system when it is freed (an ``munmap``, or a trim of the heap's
top), so the next step's arrays arrive as fresh pages: the first write to every 4 KiB
page then faults into the kernel, which zeroes it. On a ResNet-20 step that was about
15% of the time, spread over whichever op first wrote each array.

:func:`reuse_freed_memory` asks glibc to keep what is freed (``mallopt``: no trimming of
the heap, and arrays up to 32 MiB from the heap rather than their own mappings), so
later steps reuse pages already mapped. It is process-wide and lasts for the rest of
the process; the resident size then stays near its peak, which for a training loop is
its steady state anyway. :func:`cnnlab.train.fit` calls it.
"""
from __future__ import annotations

import ctypes
import sys
import threading

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # glibc's <malloc.h> parameter numbers
MMAP_THRESHOLD = 32 << 20                        # glibc's upper limit on 64-bit systems
TRIM_THRESHOLD = 1 << 30

_lock = threading.Lock()
_state = None     # None: not asked yet; then whether it took effect


def reuse_freed_memory() -> bool:
    """Make the C allocator keep freed memory for the process's next allocations (see the
    module's notes), for the rest of the process. Returns whether it took effect: False
    off Linux or where the C library is not glibc, which cnnlab then simply runs without.
    Calling again is free."""
    global _state
    with _lock:
        if _state is None:
            try:
                mallopt = ctypes.CDLL(None).mallopt if sys.platform.startswith("linux") else None
            except (OSError, AttributeError, TypeError):   # not glibc (musl has no mallopt)
                mallopt = None
            if mallopt is None:
                _state = False
            else:
                mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
                _state = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                    mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        return _state
