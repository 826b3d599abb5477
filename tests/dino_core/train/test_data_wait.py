"""Data-wait accounting: exact arithmetic on a scripted clock, a slowed loader in a real run,
and (GPU) CUDA-event marks that count the GPU's idle time, not the host's."""
import time

import pytest
import torch

from dino_core.train.data_wait import CudaMarks, DataWaitClock, HostMarks
from dino_core.train.loop import _train_epochs
from dino_core.train.run import build_run
from tests.dino_core.train.train_helpers import tiny_config
from tests.pipelines.images import write_image_folder


class ScriptedMarks(HostMarks):
    """Host marks whose clock reads the next value of a script."""

    def __init__(self, times):
        self.times = iter(times)

    def mark(self) -> float:
        return next(self.times)


def test_wait_is_batch_ready_minus_previous_done_and_epochs_restart():
    # epoch 1: start 0, ready 3, done 5 | ready 5, done 8     -> wait 3 + 0, wall 5 + 3
    # epoch 2: start 100, ready 101, done 102                -> wait 1, wall 2 (gap skipped)
    clock = DataWaitClock(torch.device("cpu"), ScriptedMarks([0, 3, 5, 5, 8, 100, 101, 102]))
    clock.start()
    for _ in range(2):
        clock.batch_ready()
        clock.step_enqueued()
    assert clock.totals() == (3.0, 8.0)
    clock.start()
    clock.batch_ready()
    clock.step_enqueued()
    assert clock.totals() == (4.0, 10.0) and clock.steps == 3
    assert clock.totals() == (4.0, 10.0)  # reading twice adds nothing


def test_kept_steps_are_the_per_step_terms_of_the_sums():
    clock = DataWaitClock(torch.device("cpu"), ScriptedMarks([0, 3, 5, 5, 8]), keep_steps=True)
    clock.start()
    for _ in range(2):
        clock.batch_ready()
        clock.step_enqueued()
    assert clock.per_step == []  # read by totals(), as the sums
    assert clock.totals() == (3.0, 8.0)
    assert clock.per_step == [(3.0, 5.0), (0.0, 3.0)]
    assert DataWaitClock(torch.device("cpu")).per_step is None


def test_step_without_marks_is_an_error():
    clock = DataWaitClock(torch.device("cpu"))
    with pytest.raises(RuntimeError, match="start"):
        clock.step_enqueued()


class SlowLoader:
    """A loader that sleeps ``delay`` seconds before each batch."""

    def __init__(self, inner, delay: float):
        self.inner, self.delay = inner, delay

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __iter__(self):
        for batch in self.inner:
            time.sleep(self.delay)
            yield batch


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("data"), num_classes=2, per_class=6)


def test_slowed_loader_raises_the_data_wait_share(data, tmp_path):
    shares = {}
    for delay in (0.0, 0.4):
        run = build_run(tiny_config(data, tmp_path / f"d{delay}", epochs=2, iters=2))
        run.loader = SlowLoader(run.loader, delay)
        try:
            summary = _train_epochs(run, tmp_path / f"d{delay}")
        finally:
            run.loader.close()
        wall = run.cfg.data.batch_size * summary["iterations"] / summary["images_per_s"]
        wait = summary["data_wait_share"] * wall
        assert 0 <= wait <= wall
        assert wait >= summary["iterations"] * delay * 0.99  # every sleep counts as wait
        shares[delay] = summary["data_wait_share"]
    assert shares[0.4] > shares[0.0]


@pytest.mark.gpu
def test_cuda_marks_count_gpu_idle_time_not_host_blocking():
    device = torch.device("cuda")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(10 ** 6)
    end.record()
    end.synchronize()
    cycles = int(10 ** 6 * 50 / start.elapsed_time(end))  # ~50 ms of GPU spinning
    clock = DataWaitClock(device)
    assert isinstance(clock.marks, CudaMarks)
    for _ in range(5):  # a loaded host may come back late: then retry with longer steps
        torch.cuda.synchronize()
        clock = DataWaitClock(device)
        torch.cuda._sleep(cycles)  # GPU busy before the epoch: its first marks queue behind
        lead = torch.cuda.Event()
        lead.record()
        clock.start()
        # batch in hand at once while the GPU is busy: the GPU never waits
        clock.batch_ready()
        in_time = not lead.query()  # premise: both marks were queued while the GPU was busy
        torch.cuda._sleep(cycles)
        busy = torch.cuda.Event()
        busy.record()
        clock.step_enqueued()
        time.sleep(0.02)      # host busy, GPU still running the step: no idle time
        clock.batch_ready()
        in_time = in_time and not busy.query()  # premise: the GPU was still in the step
        torch.cuda._sleep(cycles)
        clock.step_enqueued()
        wait, wall = clock.totals()
        if in_time:
            break
        cycles *= 2
    # the premises hold whenever the host keeps up with the GPU; only then is "no wait" due
    assert in_time, "the host never queued its marks while the GPU was still busy"
    assert wait < 0.005 and wall > 0.09
    # a short step, then the batch arrives 100 ms later: the GPU idles ~100 ms
    clock.start()
    clock.batch_ready()
    torch.cuda._sleep(cycles // 50)
    clock.step_enqueued()
    time.sleep(0.1)
    clock.batch_ready()
    torch.cuda._sleep(cycles // 50)
    clock.step_enqueued()
    wait2, _ = clock.totals()
    assert wait2 - wait > 0.08
