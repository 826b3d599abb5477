"""Security rules: safe checkpoint loading, shards never extracted, no network at run time."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pipelines.convert.common import sha256_file
from pipelines.dali_backend.readers import ShardDataset
from pipelines.formats.manifest import Manifest
from pipelines.formats.wds_index import IndexEntry, format_index
from tests.dino_core.train.train_helpers import tiny_overrides
from tests.pipelines.images import photo_crop, write_image_folder
from tests.reliability.checks import REPO, error_lines, run_module
from tests.reliability.code_scan import archive_extractions, python_files, unsafe_torch_loads

PRODUCT_PACKAGES = ("pipelines", "dino_core", "benchmarks", "tools")


# ----------------------------------------------------------------------------- torch.load
@pytest.mark.parametrize("source, unsafe", [
    ("import torch\ntorch.load(p, weights_only=True)", False),
    ("import torch\ntorch.load(p)", True),
    ("import torch\ntorch.load(p, map_location='cpu', weights_only=False)", True),
    ("import torch as th\nth.load(p)", True),
    ("from torch import load\nload(p)", True),
    ("from torch import load as tl\ntl(p, weights_only=True)", False),
    ("import torch\ntorch.serialization.load(p)", True),
    ("import torch\ntorch.load(p, **options)", True),  # cannot be checked: refused
    ("import json\njson.load(f)", False),
])
def test_the_torch_load_scanner_sees_every_spelling(source, unsafe):
    assert bool(unsafe_torch_loads(source)) == unsafe


def test_every_torch_load_in_the_repository_passes_weights_only_true():
    files = python_files(REPO)
    assert any(f.name == "checkpoint.py" for f in files)  # the scan sees the code
    found = [hit for f in files
             for hit in unsafe_torch_loads(f.read_text(), str(f.relative_to(REPO)))]
    assert found == [], "torch.load without weights_only=True: " + ", ".join(found)


# ----------------------------------------------------------------------------- tar shards
def test_the_extraction_scanner_sees_extract_calls():
    assert archive_extractions("import tarfile\ntarfile.open(p).extractall('out')")
    assert archive_extractions("tf.extract(member, path)")
    assert archive_extractions("import shutil\nshutil.unpack_archive(p, d)")
    assert not archive_extractions("tf.extractfile(member).read()")  # reading is fine


def test_product_code_never_extracts_archives():
    found = [hit for pkg in PRODUCT_PACKAGES if (REPO / pkg).is_dir()
             for f in python_files(REPO / pkg)
             for hit in archive_extractions(f.read_text(), str(f.relative_to(REPO)))]
    assert found == [], "archive members extracted to disk: " + ", ".join(found)


def _hostile_shard(root: Path, outside: Path) -> list[str]:
    """A one-shard dataset whose member names climb out of the folder (``../``) or are
    absolute paths to ``outside``; returns the member names."""
    root.mkdir(parents=True)
    buf = io.BytesIO()
    photo_crop((24, 20)).save(buf, format="JPEG", quality=90)
    keys = ["../../evil", str(outside / "abs_evil"), "ok"]
    samples, tar_path = [], root / "000000.tar"
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for label, key in enumerate(keys):
            members = []
            for ext, data in (("jpg", buf.getvalue()), ("cls", str(label).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
                members.append(IndexEntry(ext, 0, len(data), info.name))
            samples.append(members)
    with tarfile.open(tar_path) as tf:  # offsets of the member data, as tarfile reports them
        offsets = {m.name: m.offset_data for m in tf.getmembers()}
    samples = [[IndexEntry(m.ext, offsets[m.name], m.size, m.name) for m in ms] for ms in samples]
    (root / "000000.idx").write_text(format_index(samples))
    Manifest(format="wds", classes=["a", "b", "c"], num_samples=len(keys),
             shards=[{"name": tar_path.name, "index": "000000.idx", "count": len(keys),
                      "bytes": tar_path.stat().st_size, "sha256": sha256_file(tar_path)}]
             ).save(root / "manifest.json")
    return [f"{k}.{e}" for k in keys for e in ("jpg", "cls")]


def _tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def test_shard_reader_never_writes_member_names_as_paths(tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    outside.mkdir()
    data = tmp_path / "a" / "b" / "shards"
    names = _hostile_shard(data, outside)
    work = tmp_path / "a" / "b" / "shards" / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # "../../evil.jpg" from here would land in tmp_path / "a"
    before = _tree(tmp_path)
    ds = ShardDataset(data)
    read = [ds.read(i) for i in range(len(ds))]
    assert [label for _, label in read] == [0, 1, 2]
    assert all(bytes(img[:2]) == b"\xff\xd8" for img, _ in read)  # JPEG data, not headers
    assert _tree(tmp_path) == before, f"files appeared: {_tree(tmp_path) - before}"
    assert any(n.startswith("../") for n in names) and any(n.startswith("/") for n in names)


@pytest.mark.dali
def test_dali_loader_over_hostile_member_names_writes_nothing(tmp_path, monkeypatch):
    from pipelines import build_loader
    from tests.reliability.checks import PLAIN_SPEC

    outside = tmp_path / "outside"
    outside.mkdir()
    data = tmp_path / "a" / "b" / "shards"
    _hostile_shard(data, outside)
    monkeypatch.chdir(data)
    before = _tree(tmp_path)
    loader = build_loader(data, "dali", batch_size=3, spec=PLAIN_SPEC, num_workers=1,
                          shuffle=False, drop_last=False)
    (views, labels), = [(b.views, b.labels) for b in loader]
    loader.close()
    assert labels.tolist() == [0, 1, 2]
    assert _tree(tmp_path) == before, f"files appeared: {_tree(tmp_path) - before}"


# ----------------------------------------------------------------------------- network
GUARD = '''\
"""Test guard, loaded at interpreter start: every socket use outside AF_UNIX raises and is
logged, except binding to a loopback address (urllib3, imported by tensorboard through
boto3, probes IPv6 support by binding ::1 port 0: local, it reaches no network)."""
import os
import socket

_LOG = os.environ["NETWORK_GUARD_LOG"]
_LOOPBACK = ("127.0.0.1", "::1")


def _blocked(what):
    with open(_LOG, "a") as f:
        f.write(what + "\\n")
    raise OSError(f"network access blocked by the test guard: {what}")


def _guard(method):
    original = getattr(socket.socket, method)

    def guarded(self, *args, **kwargs):
        local_bind = method == "bind" and args and args[0][0] in _LOOPBACK
        if self.family != socket.AF_UNIX and not local_bind:
            _blocked(f"socket.{method}{args!r}")
        return original(self, *args, **kwargs)
    setattr(socket.socket, method, guarded)


for _method in ("connect", "connect_ex", "bind", "sendto", "sendmsg"):
    _guard(_method)
for _name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "create_connection"):
    setattr(socket, _name, lambda *args, _n=_name, **kw: _blocked(f"socket.{_n}{args!r}"))
'''


@pytest.fixture
def guarded_env(tmp_path):
    """Environment whose Python processes load GUARD (a sitecustomize) and log attempts."""
    guard_dir = tmp_path / "guard"
    guard_dir.mkdir()
    (guard_dir / "sitecustomize.py").write_text(GUARD)
    log = tmp_path / "network_attempts.log"
    log.touch()
    env = dict(os.environ, NETWORK_GUARD_LOG=str(log),
               PYTHONPATH=os.pathsep.join([str(guard_dir), str(REPO)]))
    return env, log


@pytest.mark.parametrize("attempt", [
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9/', timeout=5)",
    "import socket; socket.socket().connect(('10.0.0.1', 80))",
    "import socket; s = socket.socket(); s.bind(('0.0.0.0', 0))",
])
def test_the_socket_guard_blocks_and_records(guarded_env, attempt):
    env, log = guarded_env
    proc = subprocess.run([sys.executable, "-c", attempt], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and "blocked by the test guard" in proc.stderr, proc.stderr
    assert log.read_text().startswith("socket.")


def test_training_and_knn_run_with_the_network_blocked(guarded_env, tmp_path):
    """The main job (dino-train with a k-NN at the end, then dino-knn on its checkpoint)
    succeeds and makes no network attempt at all."""
    env, log = guarded_env
    root = tmp_path / "data"
    write_image_folder(root / "train", num_classes=2, per_class=4, seed=0)
    write_image_folder(root / "val", num_classes=2, per_class=2, seed=1)
    out = tmp_path / "run"
    sets = [a for o in tiny_overrides(root / "train", out) + ["knn_eval=true"]
            for a in ("--set", o)]
    train = run_module("dino_core.cli.train", *sets, env=env)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "weighted k-NN on the val split" in train.stdout
    knn = run_module("dino_core.cli.knn", "--checkpoint", str(out / "checkpoint.pth"),
                     "--data", str(root), "--device", "cpu", "--num-workers", "0",
                     "--batch-size", "4", "--nb-knn", "2", env=env)
    assert knn.returncode == 0, knn.stderr[-3000:]
    assert "weighted k-NN (T=0.07)" in knn.stdout, error_lines(knn.stdout)
    assert log.read_text() == "", f"network attempts: {log.read_text()}"
