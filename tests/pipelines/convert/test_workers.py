"""workers.run_ordered: results in task order, per-worker finish, errors and deaths surface."""
import os

import pytest

from pipelines.convert.workers import run_ordered


class Square:
    def start(self, worker_id):
        return {"id": worker_id, "n": 0}

    def run(self, state, task, tick):
        state["n"] += 1
        tick(1)
        if task == "boom":
            raise ValueError("bad task")
        if task == "die":
            os._exit(7)
        return task * task

    def finish(self, state):
        return state["n"]


@pytest.mark.parametrize("workers", [1, 3])
def test_results_in_order_and_every_worker_finishes(workers):
    finished, ticks = [], []
    out = list(run_ordered(Square(), range(50), workers, inflight=4, on_tick=ticks.append,
                           on_finish=finished.append))
    assert out == [i * i for i in range(50)]
    assert len(finished) == workers and sum(finished) == 50 and sum(ticks) == 50


def test_an_exception_in_a_worker_comes_back_with_its_traceback():
    with pytest.raises(RuntimeError, match="ValueError: bad task"):
        list(run_ordered(Square(), [1, 2, "boom", 4], 2))


def test_a_dead_worker_is_noticed():
    with pytest.raises(RuntimeError, match="died"):
        list(run_ordered(Square(), [1, "die", 3, 4, 5], 2))
