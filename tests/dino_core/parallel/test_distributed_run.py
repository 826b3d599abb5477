"""Two torchrun "nodes" on 127.0.0.1 (gloo, one process each) against one process."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from tests.dino_core.train.train_helpers import tiny_overrides
from tests.pipelines.images import write_image_folder

ROOT = Path(__file__).resolve().parents[3]
# no augmentation randomness and no drop path: both runs see identical views
DETERMINISTIC = [
    "data.aug.global_views=[{size: 32, scale: [1.0, 1.0], blur_p: 0.0, solarize_p: 0.0},"
    " {size: 32, scale: [1.0, 1.0], blur_p: 0.0, solarize_p: 0.0}]",
    "data.aug.local_view={size: 16, scale: [1.0, 1.0], blur_p: 0.0, solarize_p: 0.0}",
    "data.aug.ratio=[1.0, 1.0]", "data.aug.flip_p=0.0", "data.aug.jitter.p=0.0",
    "data.aug.grayscale_p=0.0", "model.drop_path_rate=0.0",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_match_each_other_and_a_single_process(tmp_path):
    data = write_image_folder(tmp_path / "data", num_classes=2, per_class=8)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    per_rank = 2

    def overrides(out, batch):
        return tiny_overrides(data, out, epochs=2, batch=batch, iters=2) + DETERMINISTIC

    dist_out = tmp_path / "dist"
    dist_out.mkdir()
    port = free_port()
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
         "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "t",
         "-m", "tests.dino_core.parallel.dist_worker", str(dist_out),
         *overrides(dist_out, per_rank)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)]
    logs = [n.communicate(timeout=300)[0] for n in nodes]
    assert all(n.returncode == 0 for n in nodes), "\n".join(logs)

    single_out = tmp_path / "single"
    single_out.mkdir()
    r = subprocess.run([sys.executable, "-m", "tests.dino_core.parallel.dist_worker", str(single_out),
                        *overrides(single_out, 2 * per_rank)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr

    r0, r1 = (torch.load(dist_out / f"teacher_rank{i}.pt", weights_only=True) for i in (0, 1))
    one = torch.load(single_out / "teacher_rank0.pt", weights_only=True)
    assert r0["world_size"] == 2 and one["world_size"] == 1
    for k, v in r0["teacher"].items():
        assert torch.equal(v, r1["teacher"][k]), f"{k} differs between ranks"
        assert torch.allclose(v, one["teacher"][k], atol=2e-5, rtol=1e-4), f"{k}: dist != single"
    assert torch.allclose(r0["center"], one["center"], atol=1e-6)
    assert (dist_out / "checkpoint.pth").is_file()
