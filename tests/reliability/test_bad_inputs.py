"""The bad-input corpus through every converter and every executor that reads a raw folder.

For each one: every good image arrives once (converters) or is delivered (readers, where a
bad file is replaced by the next good one) with the right label and its own pixels; every
bad file is reported with its path and reason; ``dino-convert`` exits 0, or 1 with --strict.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging

import pytest
import torch

from pipelines import build_loader
from pipelines.convert.cli import main as convert_main
from pipelines.dali_backend.readers import ShardDataset  # numpy + PIL only, no DALI
from pipelines.eval_transform import EvalImageFolder
from pipelines.folder import scan_image_folder
from tests.pipelines.images import write_image_folder
from tests.reliability.checks import (MAX_SPREAD, PLAIN_SPEC, assert_delivered_exactly_the_good,
                                      ffcv_epochs, has_traceback, jpeg_color, read_beton,
                                      run_module, substitutes, unreported, view_colors)


def _convert_in_process(argv: list[str]) -> tuple[int, str, str]:
    """``dino-convert`` main(argv) -> (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = convert_main(argv)
    return status, out.getvalue(), err.getvalue()


def test_corpus_has_an_unreadable_file(corpus):
    """The permission case needs a file that refuses to be read (see corpus.py)."""
    if corpus.notes:
        pytest.skip("; ".join(corpus.notes))
    assert any(c.reason == r"permission denied" for c in corpus.bad)


# ----------------------------------------------------------------------------- converters
@pytest.fixture(scope="module")
def wds_run(corpus, tmp_path_factory):
    """The real console entry point, in a subprocess. Shards of 3 inputs: the third slice
    (truncated.jpg, bomb.png, bomb_warn.png) is all bad, so one shard has no tar at all."""
    dst = tmp_path_factory.mktemp("wds") / "out"
    proc = run_module("pipelines.convert.cli", "--format", "wds", "--workers", "2",
                      "--shard-size", "3", "--no-progress", str(corpus.root), str(dst))
    return dst, proc


@pytest.fixture(scope="module")
def ffcv_run(corpus, tmp_path_factory):
    pytest.importorskip("ffcv", reason="ffcv is not installed")
    dst = tmp_path_factory.mktemp("ffcv") / "out"
    return dst, _convert_in_process(["--format", "ffcv", "--workers", "2", "--no-progress",
                                     str(corpus.root), str(dst)])


def _check_cli_report(corpus, status: int, stdout: str, stderr: str) -> None:
    assert status == 0, stderr
    assert not has_traceback(stdout + stderr)
    assert (f"wrote {len(corpus.good)} images in {len(corpus.classes)} classes" in stdout
            and f"skipped {len(corpus.bad)} files" in stdout), stdout
    lines = [line for line in stderr.splitlines() if line.startswith("skipped ")]
    assert unreported(corpus, lines) == []
    assert len(lines) == len(corpus.bad), "\n".join(lines)  # no good file among them


def _check_manifest(corpus, dst) -> dict:
    manifest = json.loads((dst / "manifest.json").read_text())
    lines = [f"{s['path']}: {s['reason']}" for s in manifest["skipped"]]
    assert unreported(corpus, lines) == []
    assert len(lines) == len(corpus.bad), "\n".join(lines)
    assert manifest["classes"] == corpus.classes
    assert manifest["num_samples"] == len(corpus.good)
    return manifest


def test_wds_cli_converts_every_good_file_and_reports_every_bad_one(corpus, wds_run):
    dst, proc = wds_run
    _check_cli_report(corpus, proc.returncode, proc.stdout, proc.stderr)
    manifest = _check_manifest(corpus, dst)
    shards = ShardDataset(dst)
    delivered = []
    for i in range(len(shards)):
        data, label = shards.read(i)
        delivered.append((label, jpeg_color(data.tobytes())))
    assert_delivered_exactly_the_good(corpus, delivered)
    assert sum(s["count"] for s in manifest["shards"]) == len(corpus.good)


def test_wds_cli_strict_exits_1_when_something_was_skipped(corpus, wds_run, tmp_path):
    dst, _ = wds_run
    args = ["--format", "wds", "--workers", "1", "--shard-size", "3", "--no-progress"]
    status, _, stderr = _convert_in_process(args + ["--strict", str(corpus.root), str(dst)])
    assert status == 1 and not has_traceback(stderr)
    assert unreported(corpus, stderr.splitlines()) == []
    clean = write_image_folder(tmp_path / "clean", num_classes=2, per_class=2)
    status, stdout, _ = _convert_in_process(args + ["--strict", str(clean), str(tmp_path / "o")])
    assert status == 0 and "skipped 0 files" in stdout


@pytest.mark.ffcv
def test_ffcv_cli_converts_every_good_file_and_reports_every_bad_one(corpus, ffcv_run):
    dst, (status, stdout, stderr) = ffcv_run
    _check_cli_report(corpus, status, stdout, stderr)
    manifest = _check_manifest(corpus, dst)
    (beton,) = [dst / s["name"] for s in manifest["shards"]]
    assert_delivered_exactly_the_good(corpus, read_beton(beton))


@pytest.mark.ffcv
def test_ffcv_cli_strict_exits_1_when_something_was_skipped(corpus, ffcv_run):
    dst, _ = ffcv_run
    status, _, stderr = _convert_in_process(["--format", "ffcv", "--workers", "1", "--strict",
                                             "--no-progress", str(corpus.root), str(dst)])
    assert status == 1 and not has_traceback(stderr)
    assert unreported(corpus, stderr.splitlines()) == []


# ----------------------------------------------------------------------------- raw folders
def _scanned(corpus) -> list[str]:
    return [p for p, _ in scan_image_folder(corpus.root).samples]


def _check_substituted(corpus, labels: list[int], colors, expected) -> None:
    """Position i delivered ``expected[i]``: its label and its pixels."""
    assert len(labels) == len(expected)
    for i, (label, rgb, case) in enumerate(zip(labels, colors, expected)):
        got = corpus.identify(rgb)
        assert got.path == case.path, f"sample {i}: delivered {got.path}, expected {case.path}"
        assert label == case.label, f"sample {i} ({case.path}): label {label} != {case.label}"


def _reports(skipped, caplog) -> list[str]:
    return [str(s) for s in skipped] + [r.getMessage() for r in caplog.records]


def test_reference_loader_over_the_corpus(corpus, caplog):
    scanned = _scanned(corpus)
    with caplog.at_level(logging.WARNING):
        loader = build_loader(corpus.root, "reference", batch_size=len(scanned),
                              spec=PLAIN_SPEC, num_workers=0, shuffle=False, drop_last=False)
        (views, labels), = [(b.views, b.labels) for b in loader]
    expected = substitutes(corpus, scanned)
    assert {c.path for c in expected} == {c.path for c in corpus.good}  # nothing good lost
    for view in views:
        _check_substituted(corpus, labels.tolist(), view_colors(view), expected)
    assert unreported(corpus, _reports(loader.backend.skipped, caplog)) == []


def test_eval_image_folder_over_the_corpus(corpus, caplog):
    with caplog.at_level(logging.WARNING):
        ds = EvalImageFolder(corpus.root, resize=16, crop=16)
        items = [ds[i] for i in range(len(ds))]
    colors = view_colors(torch.stack([x for x, _ in items]))
    _check_substituted(corpus, [y for _, y in items], colors,
                       substitutes(corpus, _scanned(corpus)))
    assert unreported(corpus, _reports(ds.skipped, caplog)) == []


@pytest.mark.dali
def test_dali_loader_over_the_raw_corpus(corpus, caplog):
    scanned = _scanned(corpus)
    with caplog.at_level(logging.WARNING):
        loader = build_loader(corpus.root, "dali", batch_size=len(scanned), spec=PLAIN_SPEC,
                              num_workers=1, shuffle=False, drop_last=False)
        (views, labels), = [(b.views, b.labels) for b in loader]
        loader.close()
    for view in views:
        _check_substituted(corpus, labels.tolist(), view_colors(view),
                           substitutes(corpus, scanned))
    assert unreported(corpus, _reports(loader.backend.skipped, caplog)) == []


@pytest.mark.dali
def test_dali_loader_over_the_converted_corpus(corpus, wds_run):
    dst, _ = wds_run
    loader = build_loader(dst, "dali", batch_size=len(corpus.good), spec=PLAIN_SPEC,
                          num_workers=1, shuffle=False, drop_last=False)
    (views, labels), = [(b.views, b.labels) for b in loader]
    loader.close()
    for view in views:
        assert_delivered_exactly_the_good(corpus, list(zip(labels.tolist(), view_colors(view))))


@pytest.mark.ffcv
def test_ffcv_loader_over_the_converted_corpus(corpus, ffcv_run):
    """In a child process: a second FFCV loader iterating in one process hangs (see
    test_faults.py::test_a_second_ffcv_loader_in_one_process_does_not_hang)."""
    dst, _ = ffcv_run
    proc, (result,) = ffcv_epochs(dst)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result["error"] is None and result["spread"] <= MAX_SPREAD
    for colors in result["colors"]:
        assert_delivered_exactly_the_good(corpus, list(zip(result["labels"], colors)))
