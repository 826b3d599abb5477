"""dino-vos, dino-retrieval, dino-copydetect end to end on synthetic data from embedded photos."""
import pytest
import torch

from dino_core.cli import copydetect, retrieval, vos
from dino_core.eval.features import load_tensors
from dino_core.models import build_vit
from tests.dino_core.eval.synthetic import write_copydays, write_davis, write_revisited


@pytest.mark.parametrize("cli,words", [
    (vos, ["--n-last-frames", "--neighbourhood", "--topk", "--temperature", "(default: 7)",
           "(default: 12)", "(default: 5)", "0.008", "J&F", "torchrun", "download"]),
    (retrieval, ["--scales", "medium", "hard", "junk", "--image-size 224 --scales 1",
                 "--crop-queries", "torchrun", "download"]),
    (copydetect, ["--whitening-data", "GeM", "--distractors", "(default: 320)", "strong",
                  "(default: 20)", "torchrun", "download"])])
def test_help_teaches_the_protocol(cli, words, capsys):
    with pytest.raises(SystemExit) as ex:
        cli.main(["--help"])
    assert ex.value.code == 0
    text = capsys.readouterr().out
    for w in words + ["--checkpoint", "--dump-features", "pickle Python objects"]:
        assert w in text, w


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A backbone-only vit_tiny/16 file and the three synthetic datasets."""
    root = tmp_path_factory.mktemp("protocols")
    torch.manual_seed(0)
    torch.save(build_vit("vit_tiny", 16).state_dict(), root / "backbone.pth")
    write_davis(root / "davis", n_frames=4)
    write_revisited(root / "revisited", fmt="json")
    write_copydays(root / "cd")
    return root


def one_error_line(capsys, *words):
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for w in words:
        assert w in err, (w, err)


def test_vos_writes_masks_scores_and_dumps(workspace, tmp_path, capsys):
    ck = ["--checkpoint", str(workspace / "backbone.pth"), "--device", "cpu"]
    args = ck + ["--data", str(workspace / "davis"), "--output-dir", str(tmp_path / "masks"),
                 "--short-side", "96", "--size-multiple", "16", "--dump-features",
                 str(tmp_path / "feats")]
    assert vos.main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("dino-vos: J&F ") and "1 sequence(s), 1 object(s)" in out[-1]
    assert sorted(p.name for p in (tmp_path / "masks" / "cat").iterdir()) == [
        "00000.png", "00001.png", "00002.png", "00003.png"]
    dump = torch.load(tmp_path / "feats" / "cat.pth", weights_only=True)
    assert dump["features"].shape == (4, 6 * 8, 192) and dump["grid"].tolist() == [6, 8]
    assert vos.main(ck + ["--data", str(workspace / "davis"), "--output-dir", str(tmp_path),
                          "--sequences", "dog"]) == 2
    one_error_line(capsys, "dino-vos: error:", "frame folder", "dog is missing")
    assert vos.main(ck + ["--data", str(workspace / "davis"), "--output-dir", str(tmp_path),
                          "--short-side", "100"]) == 2
    one_error_line(capsys, "multiples of the patch size")


def test_retrieval_prints_both_protocols_and_reloads_its_dump(workspace, tmp_path, capsys):
    data = ["--data", str(workspace / "revisited"), "--dataset", "synth"]
    args = data + ["--checkpoint", str(workspace / "backbone.pth"), "--device", "cpu",
                   "--image-size", "48", "--scales", "1", "--num-workers", "0",
                   "--dump-features", str(tmp_path)]
    assert retrieval.main(args) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("dino-retrieval: synth mAP medium ") and " hard " in line
    assert "(4 queries, 16 database images)" in line
    feats = load_tensors(tmp_path, ["synth_query", "synth_database"])
    assert feats["synth_query"].shape == (4, 192) and feats["synth_database"].shape == (16, 192)
    assert retrieval.main(data + ["--load-features", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == line
    assert retrieval.main(data[:2] + ["--dataset", "roxford5k", "--load-features",
                                      str(tmp_path)]) == 2
    one_error_line(capsys, "roxford5k", "gnd_roxford5k.pkl")


def test_copydetect_whitens_prints_and_reloads_its_dump(workspace, tmp_path, capsys):
    cd = workspace / "cd"
    data = ["--data", str(cd / "copydays"), "--whitening-data", str(cd / "whitening"),
            "--whitening-dim", "8"]
    args = data + ["--checkpoint", str(workspace / "backbone.pth"), "--device", "cpu",
                   "--distractors", str(cd / "distractors"), "--image-size", "48",
                   "--num-workers", "0", "--dump-features", str(tmp_path)]
    assert copydetect.main(args) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("dino-copydetect: strong mAP ")
    assert "(12 queries; database 4 originals + 4 distractors; whitening learned on 12 " in line
    assert copydetect.main(data + ["--load-features", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == line
    assert copydetect.main(["--data", str(cd / "copydays"), "--whitening-data",
                            str(cd / "whitening"), "--load-features", str(tmp_path)]) == 2
    one_error_line(capsys, "cannot span 384 dimensions")
    assert copydetect.main(["--data", str(cd), "--checkpoint", "x.pth"]) == 2
    one_error_line(capsys, "Copydays originals folder", "original is missing")
