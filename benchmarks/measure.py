"""What every benchmark needs around its timed code: the machine's load, peak memory, fresh processes, medians."""

import multiprocessing
import os
import platform
import resource
import statistics
import threading
from concurrent.futures import ProcessPoolExecutor

import psutil


def load_average() -> str:
    """`uptime`'s 1/5/15-minute load, printed beside each figure (the CPU is shared)."""
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM"


def mb(n_bytes: float) -> float:
    return n_bytes / 2**20


class TreeRSSSampler:
    """Samples the RSS of this process and all its children (DataLoader workers) every `interval` seconds.

    `peak_total` is the largest sum seen. Pages shared between processes (forked copy-on-write memory, the
    shared-memory batches workers hand over) count once per process that touches them, so the sum is an
    upper bound of what the tree holds; `peak_self` and `peak_child` are exact per-process peaks from the kernel.
    """

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak_total = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:  # a worker that just exited
                    pass
            self.peak_total = max(self.peak_total, total)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @staticmethod
    def peak_self() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports kB

    @staticmethod
    def peak_child() -> int:
        """The largest peak RSS of any child that has exited and been waited for."""
        return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its children that have exited (DataLoader workers, once
    joined): throughput per CPU-second does not drop when other jobs share the cores, wall-clock throughput does."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def rss_now() -> int:
    return psutil.Process().memory_info().rss


def _call_with_fork_default(fn, args, kwargs):
    # A spawned process inherits "spawn" as its default start method; training runs in a plain process, whose
    # DataLoader workers are forked (Linux default), so the measured process forks them too.
    multiprocessing.set_start_method("fork", force=True)
    return fn(*args, **kwargs)


def in_fresh_process(fn, *args, **kwargs):
    """fn(*args, **kwargs) in a new spawned Python process, so its peak RSS is its own; processes it starts
    (DataLoader workers) are forked from it, as in training. Returns fn's result."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_call_with_fork_default, fn, args, kwargs).result()


def median(values):
    return statistics.median(values)


def spread(values) -> str:
    """'median (min-max, n=N)' of a list of numbers."""
    return f"{statistics.median(values):.4g} ({min(values):.4g}-{max(values):.4g}, n={len(values)})"


def _fmt(value) -> str:
    if not isinstance(value, float):
        return str(value)
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def print_table(headers: list[str], rows: list[list]):
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for i, r in enumerate(cells):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
