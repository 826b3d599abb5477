"""``train`` lets go of every model before it destroys the process group (``Run.release``):
DDP's reducer must never drop the group's last reference (a deadlock at exit under
torchrun, see ``Run.release``). Checked in one process, where the same objects are built:
when ``shutdown`` runs, the student, teacher and optimizer are already gone, after a normal
end and after an exception from inside a step (whose frames held them)."""
import gc
import weakref

import pytest

from dino_core.train import loop, run as run_module
from dino_core.train.step import TrainStep
from tests.dino_core.train.train_helpers import tiny_config
from tests.pipelines.images import write_image_folder


@pytest.fixture
def watched(monkeypatch):
    """Weak references to what the run built, and the ones alive when shutdown ran."""
    refs, alive = {}, []
    build = run_module.build_run

    def build_and_watch(*args, **kwargs):
        r = build(*args, **kwargs)
        refs.update(student=weakref.ref(r.student), teacher=weakref.ref(r.teacher),
                    optimizer=weakref.ref(r.optimizer), step=weakref.ref(r.step))
        return r

    def shutdown():
        gc.collect()
        alive.extend(name for name, ref in refs.items() if ref() is not None)
    monkeypatch.setattr(loop, "build_run", build_and_watch)
    monkeypatch.setattr(loop, "shutdown", shutdown)
    return refs, alive


def _cfg(tmp_path):
    data = write_image_folder(tmp_path / "data", num_classes=2, per_class=2)
    return tiny_config(data, tmp_path / "out", epochs=1, batch=2, iters=2,
                       extra=["knn_eval=false"])


def test_models_are_gone_when_the_group_is_destroyed(tmp_path, watched):
    refs, alive = watched
    loop.train(_cfg(tmp_path))
    assert refs and alive == []


def test_models_are_gone_after_an_exception_inside_a_step(tmp_path, watched, monkeypatch):
    refs, alive = watched
    real = TrainStep.__call__

    def call(self, batch, at):
        out = real(self, batch, at)
        if at.iteration == 1:
            raise RuntimeError("boom inside the step")
        return out
    monkeypatch.setattr(TrainStep, "__call__", call)
    with pytest.raises(RuntimeError, match="boom inside the step"):
        loop.train(_cfg(tmp_path))
    assert refs and alive == []
