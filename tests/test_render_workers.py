"""sim.render_workers: results in task order (or as they finish), and a dying worker is an error, not a hang."""

import os

import pytest

from sim.render_workers import RenderWorkerDied, render_in_workers


def test_results_come_back_for_every_task_in_order_or_as_they_finish():
    tasks = [-3, 1, -2, 5, -8]
    assert list(render_in_workers(abs, tasks, 2, ordered=True)) == [3, 1, 2, 5, 8]
    assert sorted(render_in_workers(abs, tasks, 2, ordered=False)) == [1, 2, 3, 5, 8]
    assert list(render_in_workers(abs, tasks, 1, ordered=True)) == [3, 1, 2, 5, 8]  # in this process


def test_a_worker_that_exits_is_an_error():
    # os._exit(3) ends the worker process without a result, as a segfault in the renderer does
    with pytest.raises(RenderWorkerDied, match="a worker process died"):
        list(render_in_workers(os._exit, [3, 3, 3], 2, ordered=True))
