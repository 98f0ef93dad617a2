"""Timing helpers: interleaved A/B blocks, block statistics, noise flags, machine facts,
and the wall time and peak memory of a child process.

The method (see README.md): every contender gets warm-up calls, which also fix how many
repetitions fill one block; then the contenders run in alternating blocks (A B A B ...),
so a slow spell of the machine hits both rather than whichever ran during it. A block's
value is its mean time per repetition; a row reports the median over blocks and the
spread (min-max). A block is flagged *noisy* when it lies more than ``NOISE_DEVIATION``
from its contender's median, or when other processes kept more than
``OTHER_LOAD_CORES`` cores busy while it ran.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

NOISE_DEVIATION = 0.30   # a block further than 30% from its contender's median is noisy
OTHER_LOAD_CORES = 0.30  # so is one during which other processes used this many cores on average
MAX_REPS = 10_000        # per block, for the quickest calls


def timed(fn):
    """Turn ``fn()`` into a step that returns the seconds it took."""
    def step():
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return step


# ----- other processes' load -----
def _busy_and_own_seconds():
    """(CPU seconds the whole machine has been busy, CPU seconds this process and its
    waited-for children have used); the first is None without /proc/stat."""
    t = os.times()
    own = t.user + t.system + t.children_user + t.children_system
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None, own
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), own


class LoadMonitor:
    """How many cores *other* processes kept busy during an interval: the machine's busy
    CPU time (/proc/stat, steal included) minus our own, divided by the wall time. Where
    /proc/stat is missing, the 1-minute load average minus our own threads stands in."""

    def __init__(self, threads: int):
        self.threads = threads

    def start(self):
        self._t0 = time.perf_counter()
        self._busy0, self._own0 = _busy_and_own_seconds()

    def stop(self) -> float:
        wall = time.perf_counter() - self._t0
        busy, own = _busy_and_own_seconds()
        if busy is None or self._busy0 is None:
            return max(0.0, os.getloadavg()[0] - self.threads)
        # /proc/stat counts in ticks (10 ms): a 0.1 s block on 2 cores is only 20 ticks
        return max(0.0, ((busy - self._busy0) - (own - self._own0)) / max(wall, 1e-9))


# ----- blocks and their statistics -----
@dataclass
class Series:
    """One contender's blocks: seconds per repetition, and the other load during each."""
    name: str
    reps: int = 1
    times: list = field(default_factory=list)
    other_load: list = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def low(self) -> float:
        return min(self.times)

    @property
    def high(self) -> float:
        return max(self.times)

    def flags(self) -> list:
        """Per block: the reasons it is noisy ('dev' and/or 'load'), an empty tuple if clean."""
        med = self.median
        out = []
        for t, load in zip(self.times, self.other_load):
            reasons = ()
            if med > 0 and abs(t - med) > NOISE_DEVIATION * med:
                reasons += ("dev",)
            if load > OTHER_LOAD_CORES:
                reasons += ("load",)
            out.append(reasons)
        return out


def noisy_summary(*series: Series) -> str:
    """'k/n' noisy blocks over the given series, with the reasons seen, e.g. '3/6 (load)'."""
    flags = [f for s in series for f in s.flags()]
    noisy = [f for f in flags if f]
    if not noisy:
        return f"0/{len(flags)}"
    reasons = sorted({r for f in noisy for r in f})
    return f"{len(noisy)}/{len(flags)} ({', '.join(reasons)})"


def compare(steps: dict, monitor: LoadMonitor, *, blocks: int, warmup: int = 1, target_s: float = 0.2,
            reps: int = None) -> dict:
    """Time the ``steps`` ({name: step}, each step returning its own seconds) in
    interleaved blocks and return {name: Series}.

    Each contender first runs ``warmup`` times; the last warm-up's wall time sets the
    repetitions per block so that a block lasts about ``target_s`` (unless ``reps`` is
    given). Then ``blocks`` rounds run every contender once each, in the order given.
    """
    series = {}
    for name, step in steps.items():
        wall = None
        for _ in range(warmup):
            t0 = time.perf_counter()
            step()
            wall = time.perf_counter() - t0
        n = reps or (1 if wall is None else max(1, min(MAX_REPS, math.ceil(target_s / max(wall, 1e-9)))))
        series[name] = Series(name, n)
    for _ in range(blocks):
        for name, step in steps.items():
            s = series[name]
            monitor.start()
            total = sum(step() for _ in range(s.reps))
            s.other_load.append(monitor.stop())
            s.times.append(total / s.reps)
    return series


# ----- child processes -----
SPAWN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "spawn.py")


@dataclass
class ProcessRun:
    wall_s: float
    max_rss_mib: float
    returncode: int
    stdout: str
    stderr: str


def run_process(argv, cwd=None) -> ProcessRun:
    """Run ``argv`` to completion through ``spawn.py``: its wall time and its own peak RSS
    (a child started straight from this big process would report our peak as its own)."""
    proc = subprocess.run([sys.executable, "-S", SPAWN, *argv], capture_output=True, text=True, cwd=cwd)
    *output, last = proc.stdout.splitlines() or [""]
    try:
        result = json.loads(last)
    except ValueError:
        raise RuntimeError(f"spawn.py failed (status {proc.returncode}):\n{proc.stderr}") from None
    return ProcessRun(result["wall_s"], result["max_rss_mib"], result["returncode"], "\n".join(output), proc.stderr)


# ----- the machine -----
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_facts(threads: int) -> list:
    """(label, value) pairs describing the machine and the software, for the report header."""
    import numpy as np
    import torch
    import cnnlab

    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in cpu_flags()]
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        numpy_blas = f"{blas['name']} {blas.get('version', '')}".strip()
    except Exception:  # the config layout differs between NumPy versions
        numpy_blas = "unknown"
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=here, capture_output=True,
                                text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return [
        ("date", datetime.datetime.now().astimezone().isoformat(timespec="seconds")),
        ("CPU", f"{cpu_model()} ({os.cpu_count()} logical cores; {', '.join(simd) or 'no AVX2'})"),
        ("threads", f"{threads} for both (OMP/OPENBLAS/MKL_NUM_THREADS, cnnlab.set_num_threads, torch.set_num_threads)"),
        ("load average at start", f"{load} (1, 5, 15 min)"),
        ("Python", platform.python_version()),
        ("NumPy", f"{np.__version__} ({numpy_blas})"),
        ("PyTorch", f"{torch.__version__} (MKL {'yes' if torch.backends.mkl.is_available() else 'no'}, "
                    f"oneDNN {'yes' if torch.backends.mkldnn.is_available() else 'no'})"),
        ("cnnlab", f"{getattr(cnnlab, '__version__', 'dev')} at commit {commit}"),
        ("cnnlab's optional kernels", _optional_kernels()),
    ]


def _optional_kernels() -> str:
    """Which of the fast extra's helpers this run has: they change what cnnlab's rows measure."""
    import importlib.metadata as md

    from cnnlab.kernels import jit, parallel

    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None
    blocked = ("threadpoolctl " + version("threadpoolctl")
               + " (BLAS held to one thread under cnnlab's own: blocked convolutions, linear layers)"
               if parallel.can_block() and version("threadpoolctl") else "no threadpoolctl (one block per op)")
    numba = (f"Numba {version('numba')} (batch norm, pooling, col2im and Winograd's transforms)"
             if jit.kernels() is not None else "no Numba (batch norm, pooling and col2im in NumPy; no Winograd)")
    return f"{blocked}; {numba}"
