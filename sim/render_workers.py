"""Rendering work spread over processes (sim.collect's episodes, vision_pretrain's placements).

A worker that dies (a crash in the renderer, the out-of-memory killer) ends the work with RenderWorkerDied:
multiprocessing.Pool would start a new worker and wait forever for the lost task's result.
"""

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool


class RenderWorkerDied(RuntimeError):
    """A worker process ended without returning its result; the results yielded before it are good."""


def single_render_thread() -> None:
    # llvmpipe renders with one thread per core by default; with one process per core, one each is faster.
    # A module-level function: spawn pickles the initializer, and os.environ's bound methods do not pickle.
    os.environ.setdefault("LP_NUM_THREADS", "1")


def render_in_workers(fn: Callable, tasks: Iterable, workers: int, *, ordered: bool) -> Iterator:
    """fn(task) for every task, in `workers` spawned processes (in this one when workers <= 1), results in task
    order if `ordered`, else as they finish."""
    tasks = list(tasks)
    if workers <= 1 or len(tasks) <= 1:
        yield from map(fn, tasks)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=context, initializer=single_render_thread) as pool:
        futures = []
        try:
            futures = [pool.submit(fn, task) for task in tasks]
            for future in futures if ordered else as_completed(futures):
                yield future.result()
        except BrokenProcessPool as err:
            raise RenderWorkerDied("a worker process died (it crashed or was killed)") from err
        finally:
            for future in futures:  # on an error or an early stop: nothing new starts, the running ones end
                future.cancel()
