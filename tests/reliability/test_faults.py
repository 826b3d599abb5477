"""Broken datasets, configs and checkpoints: each gets ONE clear error line, no traceback.

Command-line tools run in-process through their ``main(argv)`` (a raised exception fails
the test); two cases also run as real subprocesses to check the printed output.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest

from dino_core.formats.files import save_checkpoint
from dino_core.cli.knn import main as knn_main
from dino_core.cli.train import main as train_main
from dino_core.models import build_vit
from pipelines import build_loader
from pipelines.convert.cli import main as convert_main
from pipelines.convert.common import ConvertConfig
from pipelines.convert.wds import convert as wds_convert
from pipelines.formats.wds_index import parse_index
from pipelines.dali_backend.readers import ShardDataset
from pipelines.folder import DatasetError
from pipelines.spec import AugmentationSpec, SpecError
from tests.dino_core.train.train_helpers import tiny_overrides
from tests.pipelines.images import write_image_folder
from tests.reliability.checks import error_lines, ffcv_epochs, has_traceback, run_module


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("data") / "train", num_classes=2,
                              per_class=3)


def _tiny_train_args(data: Path, out: Path) -> list[str]:
    return [arg for o in tiny_overrides(data, out) for arg in ("--set", o)]


def _one_error(main, argv: list[str], capsys, expected: str, prefix: str) -> str:
    """Run a CLI main; it must exit 2 with exactly one error line containing ``expected``."""
    status = main(argv)
    captured = capsys.readouterr()
    lines = error_lines(captured.err)
    assert status == 2, captured.out + captured.err
    assert not has_traceback(captured.out + captured.err)
    assert len(lines) == 1, lines
    assert lines[0].startswith(prefix) and expected in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- wds shards
@pytest.fixture(scope="module")
def shards(images, tmp_path_factory):
    dst = tmp_path_factory.mktemp("wds") / "shards"
    wds_convert(ConvertConfig(src=images, dst=dst, workers=1, shard_size=4, progress=False))
    return dst


def _cut_tar(d: Path) -> None:
    tar = d / "000000.tar"
    with open(tar, "r+b") as f:
        f.truncate(tar.stat().st_size // 2)


def _garble_label(d: Path) -> None:
    label = parse_index(d / "000000.idx")[0][1]  # members of sample 0: .jpg, .cls
    with open(d / "000000.tar", "r+b") as f:
        f.seek(label.offset)
        f.write(b"x" * label.size)


WDS_FAULTS = {
    "tar cut in half": (_cut_tar, "000000.tar is"),
    "missing .idx": (lambda d: (d / "000000.idx").unlink(), "000000.idx"),
    "missing manifest": (lambda d: (d / "manifest.json").unlink(), "no manifest at"),
    "corrupt manifest": (lambda d: (d / "manifest.json").write_text("{not json"),
                         "manifest.json is corrupt"),
    "corrupt label": (_garble_label, "label is not a decimal integer"),
}
WDS_MESSAGES = {  # the whole diagnosis, beyond the file name
    "tar cut in half": "the manifest says",
    "missing .idx": "index of shard",
    "missing manifest": "conversion did not finish",
    "corrupt manifest": "manifest",
    "corrupt label": "000000.tar@",
}


def _broken_copy(src: Path, dst: Path, fault) -> Path:
    shutil.copytree(src, dst)
    fault(dst)
    return dst


@pytest.mark.parametrize("fault", WDS_FAULTS)
def test_broken_shard_folder_is_one_dataset_error(shards, tmp_path, fault):
    d = _broken_copy(shards, tmp_path / "shards", WDS_FAULTS[fault][0])
    with pytest.raises(DatasetError) as err:
        ds = ShardDataset(d)
        for i in range(len(ds)):
            ds.read(i)
    assert WDS_FAULTS[fault][1] in str(err.value) and WDS_MESSAGES[fault] in str(err.value)


@pytest.mark.dali
@pytest.mark.parametrize("fault", ["tar cut in half", "missing .idx", "corrupt label"])
def test_dino_train_on_a_broken_shard_folder_says_so_in_one_line(shards, tmp_path, capsys,
                                                                  fault):
    d = _broken_copy(shards, tmp_path / "shards", WDS_FAULTS[fault][0])
    argv = _tiny_train_args(d, tmp_path / "run") + ["--backend", "dali"]
    line = _one_error(train_main, argv, capsys, WDS_FAULTS[fault][1], "dino-train: error: ")
    assert WDS_MESSAGES[fault] in line


# ----------------------------------------------------------------------------- .beton
@pytest.fixture(scope="module")
def beton(images, tmp_path_factory):
    pytest.importorskip("ffcv", reason="ffcv is not installed")
    from pipelines.convert.beton import convert as beton_convert
    dst = tmp_path_factory.mktemp("ffcv") / "out"
    beton_convert(ConvertConfig(src=images, dst=dst, format="ffcv", workers=1, progress=False))
    return dst


def _overwrite_first_image(d: Path) -> None:
    """Zero the stored JPEG of sample 0 (the file keeps its size)."""
    from ffcv.reader import Reader
    (path,) = d.glob("*.beton")
    reader = Reader(str(path))
    ptr = int(reader.metadata[0][f"f{reader.field_names.index('image')}"]["data_ptr"])
    size = int(reader.alloc_table["size"][reader.alloc_table["ptr"] == ptr][0])
    with open(path, "r+b") as f:
        f.seek(ptr)
        f.write(bytes(size))


def _truncate_beton(keep: Callable[[int], int]) -> Callable[[Path], None]:
    def fault(d: Path) -> None:
        (path,) = d.glob("*.beton")
        with open(path, "r+b") as f:
            f.truncate(keep(path.stat().st_size))
    return fault


BETON_FAULTS = {  # found when the loader is built: no FFCV pipeline is compiled
    "cut in half": (_truncate_beton(lambda n: n // 2), "is not a readable .beton"),
}  # a .beton without manifest.json reads as a stock FFCV file (test_ffcv_stock.py)


@pytest.mark.ffcv
@pytest.mark.parametrize("fault", BETON_FAULTS)
def test_broken_beton_is_one_dataset_error(beton, tmp_path, fault):
    d = _broken_copy(beton, tmp_path / "ffcv", BETON_FAULTS[fault][0])
    with pytest.raises(DatasetError, match=BETON_FAULTS[fault][1]) as err:
        build_loader(d, "ffcv", batch_size=2, num_workers=1, drop_last=False)
    assert str(d) in str(err.value)


@pytest.fixture(scope="module")
def two_ffcv_epochs(beton, tmp_path_factory):
    """One child process (ffcv_child.py) iterating two FFCV loaders in turn: first over a
    corrupt copy of ``beton`` (the JPEG bytes of sample 0 zeroed), then over ``beton``."""
    corrupt = _broken_copy(beton, tmp_path_factory.mktemp("ffcv") / "corrupt",
                           _overwrite_first_image)
    return corrupt, *ffcv_epochs(corrupt, beton)  # the default watchdog: a hang guard


@pytest.mark.ffcv
def test_corrupt_beton_is_one_dataset_error_while_reading(two_ffcv_epochs):
    corrupt, proc, results = two_ffcv_epochs
    assert results, proc.stderr[-3000:]
    assert results[0]["error"] == (
        f"DatasetError: {corrupt / 'train.beton'}: the JPEG of sample 0 does not decode "
        "(corrupt .beton? convert again)")


@pytest.mark.ffcv
def test_a_second_ffcv_loader_in_one_process_does_not_hang(two_ffcv_epochs):
    _, proc, results = two_ffcv_epochs
    assert proc.returncode == 0, proc.stderr[-3000:]  # 3: the watchdog found it hung
    assert len(results) == 2 and results[1]["error"] is None and len(results[1]["labels"]) == 6


@pytest.mark.ffcv
def test_dino_train_on_a_truncated_beton_says_so_in_one_line(beton, tmp_path, capsys):
    d = _broken_copy(beton, tmp_path / "ffcv", BETON_FAULTS["cut in half"][0])
    argv = _tiny_train_args(d, tmp_path / "run") + ["--backend", "ffcv"]
    _one_error(train_main, argv, capsys, "is not a readable .beton", "dino-train: error: ")


# ----------------------------------------------------------------------------- missing paths
@pytest.mark.parametrize("backend", ["reference", "dali", "ffcv"])
def test_missing_dataset_path_names_it(tmp_path, backend):
    missing = tmp_path / "nowhere"
    if backend != "reference":
        pytest.importorskip({"dali": "nvidia.dali", "ffcv": "ffcv"}[backend],
                            reason=f"{backend} is not installed")
    with pytest.raises((DatasetError, FileNotFoundError)) as err:
        build_loader(missing, backend, batch_size=2, num_workers=0)
    assert str(missing) in str(err.value)
    assert "does not exist" in str(err.value) or "not found" in str(err.value)


def test_missing_dataset_path_cli(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    _one_error(train_main, _tiny_train_args(missing, tmp_path / "run"), capsys,
               f"dataset path does not exist: {missing}", "dino-train: error: ")
    _one_error(convert_main, [str(missing), str(tmp_path / "out"), "--no-progress"], capsys,
               f"dataset path does not exist: {missing}", "dino-convert: error: ")


# ----------------------------------------------------------------------------- configs
CONFIG_FAULTS = {
    "wrong type (option)": (
        ["--set", "optim.lr=abc"],
        "training config field 'optim.lr': expected a finite number, got 'abc'"),
    "unknown key (option)": (["--set", "optim.bogus=1"],
                             "training config field 'optim.bogus': unknown key"),
    "wrong type (augmentation)": (["--set", "data.aug.local_crops=two"],
                                  "field 'data.aug.local_crops': expected an integer, got 'two'"),
    "wrong type (file)": ("epochs: ten\n", "training config field 'epochs': expected an integer"),
    "unknown key (file)": ("model:\n  arch: vit_tiny\nbogus: 1\n",
                           "training config field 'bogus'"),
    "not YAML (file)": ("model: [vit\n", "is not valid YAML"),
}


@pytest.mark.parametrize("fault", CONFIG_FAULTS)
def test_bad_config_is_one_line_naming_the_field(tmp_path, capsys, fault):
    given, expected = CONFIG_FAULTS[fault]
    if isinstance(given, str):
        (tmp_path / "bad.yaml").write_text(given)
        given = ["--config", str(tmp_path / "bad.yaml")]
    _one_error(train_main, given + ["--print-config"], capsys, expected, "dino-train: ")


@pytest.mark.parametrize("text, expected", [
    ("flip_p: [0.5\n", "is not valid YAML: expected ',' or ']'"),
    ("flip_p: often\n", "augmentation spec field 'flip_p': expected a finite number, got 'often'"),
    ("flip: 0.5\n", "augmentation spec field 'flip': unknown key"),
])
def test_bad_augmentation_spec_file_is_one_line(tmp_path, text, expected):
    (tmp_path / "spec.yaml").write_text(text)
    with pytest.raises(SpecError) as err:
        AugmentationSpec.load_yaml(tmp_path / "spec.yaml")
    assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Backbone-only vit_tiny weights, a truncated checkpoint, and a checkpoint whose
    config says vit_small (as dino-train writes it)."""
    d = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(build_vit("vit_tiny", 16).state_dict(), d / "tiny_backbone.pth")
    data = (d / "tiny_backbone.pth").read_bytes()
    (d / "truncated.pth").write_bytes(data[: len(data) // 2])
    save_checkpoint({"config": {"model": {"arch": "vit_small", "patch_size": 16,
                                          "out_dim": 64}},
                     "student": {}, "teacher": {}, "epoch": 1}, d / "vit_small_run.pth")
    return d


RESUME_FAULTS = {
    "another architecture": ("vit_small_run.pth",
                             "is for arch='vit_small' but this run uses arch='vit_tiny'"),
    "truncated": ("truncated.pth", "is corrupt or truncated"),
    "backbone-only weights": ("tiny_backbone.pth", "is not a dino-train checkpoint"),
}


@pytest.mark.parametrize("fault", RESUME_FAULTS)
def test_resume_from_an_unusable_checkpoint_is_one_line(images, weights, tmp_path, capsys,
                                                        fault):
    name, expected = RESUME_FAULTS[fault]
    argv = _tiny_train_args(images, tmp_path / "run") + ["--resume", str(weights / name)]
    line = _one_error(train_main, argv, capsys, expected, "dino-train: error: ")
    assert str(weights / name) in line


def test_truncated_checkpoint_in_the_output_dir_is_one_line(images, weights, tmp_path, capsys):
    """The automatic resume (same command again) meets a truncated checkpoint.pth."""
    (tmp_path / "run").mkdir()
    shutil.copy(weights / "truncated.pth", tmp_path / "run" / "checkpoint.pth")
    _one_error(train_main, _tiny_train_args(images, tmp_path / "run"), capsys,
               "is corrupt or truncated", "dino-train: error: checkpoint ")


@pytest.mark.parametrize("argv, expected", [
    (["--checkpoint", "truncated.pth"], "is corrupt or truncated"),
    (["--checkpoint", "tiny_backbone.pth", "--arch", "vit_small"],
     "holds a vit_tiny/16 backbone, but the requested architecture"),
])
def test_dino_knn_refuses_unusable_checkpoints_in_one_line(images, weights, capsys, argv,
                                                           expected):
    argv = [str(weights / a) if a.endswith(".pth") else a for a in argv]
    _one_error(knn_main, argv + ["--data", str(images.parent), "--device", "cpu"], capsys,
               expected, "dino-knn: error: ")


# ----------------------------------------------------------------------------- real processes
@pytest.mark.parametrize("tool", ["dino-train", "dino-knn"])
def test_console_output_is_one_line_without_traceback(images, weights, tmp_path, tool):
    if tool == "dino-train":
        proc = run_module("dino_core.cli.train", "--data", str(tmp_path / "nowhere"),
                          "--device", "cpu", "--no-knn")
        expected = "dino-train: error: dataset path does not exist"
    else:
        proc = run_module("dino_core.cli.knn", "--checkpoint", str(weights / "truncated.pth"),
                          "--device", "cpu")
        expected = "dino-knn: error: checkpoint"
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and not has_traceback(proc.stdout + proc.stderr), proc.stderr
    assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr
