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


def test_tasks_are_pulled_lazily_so_memory_is_bounded_by_inflight():
    """However many tasks there are, at most ``inflight`` are taken and not yet returned."""
    pulled = [0]

    def tasks():
        for i in range(400):
            pulled[0] += 1
            yield i
    ahead = []
    for returned, _ in enumerate(run_ordered(Square(), tasks(), 2, inflight=6), start=1):
        ahead.append(pulled[0] - returned)
    assert returned == 400 and max(ahead) <= 6 and min(ahead) >= 0


def test_an_exception_in_a_worker_comes_back_with_its_traceback():
    with pytest.raises(RuntimeError, match="ValueError: bad task"):
        list(run_ordered(Square(), [1, 2, "boom", 4], 2))


def test_a_dead_worker_is_noticed():
    with pytest.raises(RuntimeError, match="died"):
        list(run_ordered(Square(), [1, "die", 3, 4, 5], 2))


@pytest.mark.parametrize("fmt", ["wds", pytest.param("ffcv", marks=pytest.mark.ffcv)])
def test_a_worker_killed_mid_conversion_is_a_clear_error_and_nothing_is_published(
        tmp_path, monkeypatch, capsys, fmt):
    from pipelines.convert import prepare
    from pipelines.convert.cli import main as convert_main
    from tests.pipelines.images import write_image_folder

    src = write_image_folder(tmp_path / "src", num_classes=2, per_class=3)
    real = prepare.prepare_image

    def dies(path, *args, **kwargs):
        if path.endswith("_001.jpg"):
            os._exit(9)  # as if the OOM killer took the worker
        return real(path, *args, **kwargs)

    monkeypatch.setattr(prepare, "prepare_image", dies)  # forked workers inherit it
    status = convert_main(["--format", fmt, "--workers", "2", "--no-progress",
                           "--shard-size", "2", str(src), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2 and "worker died" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "manifest.json").exists()
