"""Rendering work spread over processes (sim.collect's episodes, vision_pretrain's placements).

A worker that dies (a crash in the renderer, the out-of-memory killer) breaks the pool: the tasks without a result
go to new workers, up to `restarts` times (a segfault in libc, in a worker, stopped three of the learning
benchmark's collections of 160-320 episodes), and then the work ends with RenderWorkerDied. multiprocessing.Pool
would instead start a new worker and wait forever for the lost task's result.

A worker whose parent is gone (SIGTERM or SIGKILL to the collector, which cannot clean up after itself then) exits
within a second: before, the workers of a collector stopped with SIGTERM recorded further episodes and then spun for
over an hour.
"""

import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

from tqdm import tqdm

DEFAULT_RESTARTS = 2  # new pools after a worker's death, before the work is given up


class RenderWorkerDied(RuntimeError):
    """A worker process ended without returning its result; the results yielded before it are good."""


def warn_on_restart(things: str, detail: str = "") -> Callable[[int], None]:
    """An on_restart for render_in_workers that says so on stderr, above any progress bar."""

    def warn(unfinished: int) -> None:
        tqdm.write(f"warning: a worker process died (it crashed or was killed); its pool's {unfinished} unfinished "
                   f"{things} go to new workers{detail}", file=sys.stderr)
    return warn


ORPHAN_CHECK_SECONDS = 0.5


def start_worker() -> None:
    """Each worker's initializer (module level: spawn pickles it)."""
    # llvmpipe renders with one thread per core by default; with one process per core, one each is faster.
    os.environ.setdefault("LP_NUM_THREADS", "1")
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()


def _exit_when_orphaned(parent: int) -> None:
    # The parent's death reparents this process; os._exit, as the task may be mid-way (a collector's episode is
    # written to a temporary file and renamed, and its next run removes the temporary).
    while os.getppid() == parent:
        time.sleep(ORPHAN_CHECK_SECONDS)
    os._exit(1)


def render_in_workers(fn: Callable, tasks: Iterable, workers: int, *, ordered: bool, restarts: int = 0,
                      on_restart: Callable[[int], None] | None = None) -> Iterator:
    """fn(task) for every task, in `workers` spawned processes (in this one when workers <= 1), results in task
    order if `ordered`, else as they finish. When a worker dies, on_restart(the number of tasks without a result)
    is called and those tasks go to new workers, up to `restarts` times; the next death raises RenderWorkerDied."""
    if restarts < 0:
        raise ValueError(f"restarts must be >= 0, got {restarts}")
    tasks = list(tasks)
    if workers <= 1 or len(tasks) <= 1:
        yield from map(fn, tasks)
        return
    pending = list(range(len(tasks)))
    for restart in range(restarts + 1):
        finished = set()
        try:
            for index, result in _in_pool(fn, tasks, pending, workers, ordered):
                finished.add(index)
                yield result
            return
        except BrokenProcessPool as err:
            pending = [index for index in pending if index not in finished]
            if restart == restarts:
                raise RenderWorkerDied("a worker process died (it crashed or was killed)") from err
            if on_restart is not None:
                on_restart(len(pending))


def _in_pool(fn: Callable, tasks: list, indices: list, workers: int, ordered: bool) -> Iterator[tuple]:
    """(index, fn(tasks[index])) for the given indices, from one pool; BrokenProcessPool when a worker dies."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(indices)), mp_context=context, initializer=start_worker) as pool:
        futures = {}
        try:
            futures = {pool.submit(fn, tasks[index]): index for index in indices}
            for future in futures if ordered else as_completed(futures):
                yield futures[future], future.result()
        finally:
            for future in futures:  # on an error or an early stop: nothing new starts, the running ones end
                future.cancel()
