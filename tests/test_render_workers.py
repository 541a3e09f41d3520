"""sim.render_workers: results in task order (or as they finish); a dying worker is replaced, its pool's unfinished
tasks redone, up to `restarts` times, then an error, never a hang."""

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
    with pytest.raises(RenderWorkerDied, match="a worker process died"):  # every pool dies: restarts do not loop
        list(render_in_workers(os._exit, [3, 3, 3], 2, ordered=True, restarts=2))
    with pytest.raises(ValueError, match="restarts must be >= 0"):
        list(render_in_workers(abs, [1, 2], 2, ordered=True, restarts=-1))


def exit_the_first_time(task: tuple) -> int:
    """value, or the worker's death the first time (the marker file not there yet)."""
    marker, value = task
    if marker is not None and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
    return value


@pytest.mark.parametrize("ordered", [True, False])
def test_a_worker_that_dies_once_is_replaced_and_every_task_gets_its_result(tmp_path, ordered):
    tasks = [(None, 1), (str(tmp_path / "dies"), 2), (None, 3), (None, 4), (None, 5)]
    restarted = []
    results = list(render_in_workers(exit_the_first_time, tasks, 2, ordered=ordered, restarts=1,
                                     on_restart=restarted.append))
    assert (results if ordered else sorted(results)) == [1, 2, 3, 4, 5]
    assert len(restarted) == 1 and 1 <= restarted[0] <= len(tasks)  # the dead task and those without a result then
    (tmp_path / "dies").unlink()
    with pytest.raises(RenderWorkerDied):  # the control: without a restart the same death ends the work
        list(render_in_workers(exit_the_first_time, tasks, 2, ordered=ordered))
