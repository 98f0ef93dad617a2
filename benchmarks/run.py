"""cnnlab vs PyTorch, measured in the same run: markdown tables on standard output.

    python benchmarks/run.py [--quick] [--data-dir DIR] [--threads 2] [--out FILE.md]

Both libraries get the same number of threads. NumPy's BLAS reads its thread count from
the environment once, when it is loaded, so this script sets OMP_NUM_THREADS,
OPENBLAS_NUM_THREADS and MKL_NUM_THREADS and, unless they already held that value, runs
itself again in a fresh interpreter before NumPy or PyTorch is imported (``suite``
imports both). See benchmarks/README.md for the method and how to read the tables.
"""
from __future__ import annotations

import argparse
import os
import sys

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
               "NUMEXPR_NUM_THREADS")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py", description="Benchmark cnnlab against PyTorch (CPU, float32, same threads).")
    parser.add_argument("--quick", action="store_true",
                        help="fewer blocks and 1/10 of the MNIST epoch, extrapolated (about 2 minutes)")
    parser.add_argument("--data-dir", metavar="DIR", help="folder with the MNIST files for the epoch row (default: $CNNLAB_DATA, "
                                           "then cnnlab's cache folder; nothing is downloaded, the row is skipped)")
    parser.add_argument("--threads", type=int, default=2, metavar="N", help="threads for both libraries (default 2)")
    parser.add_argument("--out", metavar="FILE.md", help="also write the markdown report to this file")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    return args


def pin_threads(threads: int) -> None:
    """Make sure the thread variables say ``threads``; if they do not, start the running
    script (this one, or another benchmark that imports this function) again with them
    set (this call then never returns)."""
    want = str(threads)
    if all(os.environ.get(name) == want for name in THREAD_VARS):
        return
    assert "numpy" not in sys.modules, "the thread count must be set before NumPy is loaded"
    env = dict(os.environ, **{name: want for name in THREAD_VARS})
    os.execve(sys.executable, [sys.executable, os.path.abspath(sys.argv[0])] + sys.argv[1:], env)


def main(argv=None) -> int:
    args = parse_args(argv)
    pin_threads(args.threads)
    import suite  # only now: it imports NumPy and PyTorch
    return suite.run(args)


if __name__ == "__main__":
    sys.exit(main())
