"""Run a command; print its wall time and its own peak RSS as the last line (JSON).

    python -S benchmarks/spawn.py COMMAND [ARG...]

Why a separate small process: on Linux a child's ``ru_maxrss`` starts from the memory
of the process that started it (fork copies, and vfork shares, the parent's memory map
until exec, and exec records that map's high-water mark as the child's). Started from
the benchmark process, which has touched gigabytes by then, every child would report the
benchmark's own peak; started from this interpreter (run with ``-S``, stdlib only),
the floor is a few MiB. The command's output passes through unchanged.
"""
import json
import os
import sys
import time


def main() -> None:
    argv = sys.argv[1:]
    if not argv:
        sys.exit("usage: python -S spawn.py COMMAND [ARG...]")
    sys.stdout.flush()
    t0 = time.perf_counter()
    pid = os.posix_spawnp(argv[0], argv, os.environ)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    print(json.dumps({"wall_s": wall, "max_rss_mib": usage.ru_maxrss / 1024,  # Linux: KiB
                      "returncode": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    main()
