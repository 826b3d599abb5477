"""Label propagation: the streamed path against its dense twin, the DAVIS layout, and a
synthetic sequence (an embedded photo's object moving over another photo)."""
import numpy as np
import pytest
import torch
from PIL import Image

from dino_core.eval.davis_data import davis_palette, open_davis, read_annotation
from dino_core.eval.davis_metrics import score_sequence, summarise
from dino_core.eval.video_segmentation import (PropagationConfig, frame_size, neighbourhood_mask,
                                               propagate_labels, propagate_labels_dense,
                                               segment_and_score, soft_labels_to_mask)
from dino_core.models import build_vit
from pipelines.folder import DatasetError

from .synthetic import write_davis

SMALL = PropagationConfig(short_side=96, size_multiple=16)


def test_frame_sizes_follow_the_protocol():
    """Shorter side 480, longer side floored to a multiple of 64: DAVIS's 854x480 -> 832x480."""
    cfg = PropagationConfig()
    assert frame_size(854, 480, cfg, 8) == (832, 480)
    assert frame_size(480, 854, cfg, 16) == (480, 832)
    with pytest.raises(ValueError, match="multiples of the patch size"):
        frame_size(854, 480, PropagationConfig(short_side=100), 16)
    with pytest.raises(ValueError, match=r"topk \(--topk\) = 0"):
        PropagationConfig(topk=0)


def test_neighbourhood_is_a_square_window_of_patches():
    mask = neighbourhood_mask(4, 5, 1, torch.device("cpu"))
    for s in range(20):
        for t in range(20):
            near = abs(s // 5 - t // 5) <= 1 and abs(s % 5 - t % 5) <= 1
            assert bool(mask[s, t]) == near
    assert neighbourhood_mask(4, 5, 0, torch.device("cpu")) is None


@pytest.mark.parametrize("radius,topk", [(0, 1), (0, 5), (2, 3), (1, 9)])
def test_streamed_propagation_equals_the_dense_twin(radius, topk):
    g = torch.Generator().manual_seed(radius * 10 + topk)
    h, w, d, c = 5, 6, 8, 3
    feats = [torch.nn.functional.normalize(torch.randn(h * w, d, generator=g), dim=1)
             for _ in range(4)]
    labels = [torch.softmax(torch.randn(c, h * w, generator=g), 0) for _ in range(3)]
    mask = neighbourhood_mask(h, w, radius, torch.device("cpu"))
    fast = propagate_labels(feats[3], feats[:3], labels, mask, topk, 0.1)
    slow = propagate_labels_dense(feats[3], feats[:3], labels, mask, topk, 0.1)
    assert torch.allclose(fast, slow, atol=1e-6)
    assert torch.allclose(fast.sum(0), torch.ones(h * w), atol=1e-5)  # a distribution per patch


def test_a_patch_takes_the_label_of_its_identical_source():
    """Target features equal to the source's: with top-1, labels are copied exactly."""
    feats = torch.eye(4)
    labels = torch.tensor([[1.0, 0, 0, 1], [0, 1.0, 1, 0]])
    out = propagate_labels(feats, [feats], [labels], None, topk=1, temperature=0.1)
    assert torch.equal(out, labels)


def test_soft_labels_become_a_label_map_of_the_frame_size():
    soft = torch.zeros(2, 2 * 3)
    soft[0] = 1
    soft[1, 4] = 5                                                     # patch (1, 1)
    out = soft_labels_to_mask(soft, (2, 3), 4, (24, 16))               # frame 24x16 px
    assert out.shape == (16, 24) and out.dtype == np.uint8
    assert out[10, 6] == 1 and out[2, 2] == 0 and out[12, 20] == 0


def test_davis_layout_errors_name_what_is_wrong(tmp_path):
    root, _ = write_davis(tmp_path / "d", n_frames=3)
    with pytest.raises(DatasetError, match="JPEGImages/480p is missing"):
        open_davis(tmp_path / "nothing")
    with pytest.raises(DatasetError, match="frame folder .*/dog is missing"):
        open_davis(root, sequences=["dog"])
    (root / "Annotations" / "480p" / "cat" / "00001.png").unlink()
    with pytest.raises(DatasetError, match=r"annotation .*00001\.png is missing"):
        open_davis(root)
    (root / "Annotations" / "480p" / "cat" / "00000.png").unlink()
    with pytest.raises(DatasetError, match=r"no annotation of its first frame: .*00000\.png"):
        open_davis(root)
    (root / "ImageSets" / "2017" / "val.txt").unlink()
    with pytest.raises(DatasetError, match="split file .*val.txt is missing"):
        open_davis(root)
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    with pytest.raises(DatasetError, match="is a RGB image"):
        read_annotation(tmp_path / "rgb.png")


def test_first_frame_only_sequences_are_segmented_not_scored(tmp_path, random_vit):
    root, truth = write_davis(tmp_path / "d", name="unscored", annotate_all=False, n_frames=3)
    write_davis(root, name="scored", n_frames=3)
    seqs = open_davis(root)
    assert [s.scored for s in seqs] == [False, True]
    scores, unscored = segment_and_score(random_vit(16), seqs, SMALL, tmp_path / "out",
                                         log=False)
    assert unscored == ["unscored"] and [s.name for s in scores] == ["scored"]
    written, palette = read_annotation(tmp_path / "out" / "unscored" / "00002.png")
    assert written.shape == truth[0].shape and np.array_equal(palette[:3], davis_palette()[:3])
    first, _ = read_annotation(tmp_path / "out" / "unscored" / "00000.png")
    assert np.array_equal(first, truth[0])                  # the given mask, as it was


class ScrambledPatches(torch.nn.Module):
    """A backbone whose patch tokens come out in a random order: features that say nothing
    about where they are (the control of the tracking test)."""

    def __init__(self, vit):
        super().__init__()
        self.vit, self.patch_size = vit, vit.patch_size
        self.g = torch.Generator().manual_seed(0)

    def get_intermediate_layers(self, x, n=1):
        tokens = self.vit.get_intermediate_layers(x, n)[0]
        order = torch.randperm(tokens.shape[1] - 1, generator=self.g) + 1
        return [torch.cat((tokens[:, :1], tokens[:, order]), dim=1)]


def test_propagation_tracks_the_moving_object(tmp_path, random_vit):
    """The cat's face moves 7 px right and 3 px down per frame over grass. Propagating with
    the patch features of a ViT follows it (J > 0.75); repeating the first mask does not,
    and neither does propagation from features in a scrambled patch order."""
    root, truth = write_davis(tmp_path / "d", n_frames=6)
    seqs = open_davis(root)
    vit = random_vit(8)
    tracked = summarise(segment_and_score(vit, seqs, SMALL, log=False)[0])
    static = summarise([score_sequence("static", np.stack([truth[0]] * 6), np.stack(truth))])
    scrambled = summarise(segment_and_score(ScrambledPatches(vit), seqs, SMALL, log=False)[0])
    assert tracked.j_mean > 0.75 and tracked.f_mean > 0.6
    assert static.j_mean < 0.5 and scrambled.j_mean < 0.5
    assert tracked.jf_mean > max(static.jf_mean, scrambled.jf_mean) + 0.25


def _rank_worker(rank, world, init_file, root, out_dir):
    import torch.distributed as dist

    from dino_core.formats import load_backbone
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        vit = load_backbone(f"{out_dir}/backbone.pth")[0]
        scores, unscored = segment_and_score(vit, open_davis(root), SMALL, log=False)
        torch.save({"names": [s.name for s in scores], "unscored": unscored,
                    "j": [torch.from_numpy(s.j) for s in scores]}, f"{out_dir}/rank{rank}.pth")
    finally:
        dist.destroy_process_group()


def test_two_ranks_split_the_sequences_and_agree_with_one_process(tmp_path, random_vit):
    import torch.multiprocessing as mp
    vit = random_vit(16)
    torch.save(vit.state_dict(), tmp_path / "backbone.pth")
    root, _ = write_davis(tmp_path / "d", name="a", n_frames=3)
    write_davis(root, name="b", n_frames=3, step=(4, 4))
    write_davis(root, name="c", n_frames=3, annotate_all=False)
    mp.spawn(_rank_worker, args=(2, str(tmp_path / "init"), str(root), str(tmp_path)),
             nprocs=2, join=True)
    scores, unscored = segment_and_score(vit, open_davis(root), SMALL, log=False)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pth", weights_only=True)
        assert got["names"] == ["a", "b"] and got["unscored"] == unscored == ["c"]
        for j, s in zip(got["j"], scores):
            assert np.allclose(j.numpy(), s.j)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # trains the quickstart first: minutes, more on a busy machine
def test_a_quickstart_backbone_propagates_better_than_random_weights(tmp_path):
    """`dino-train --config quickstart` (ViT-Tiny/16, 4 epochs on the embedded photos: minutes
    on 2 free cores) gives patch features that propagate the moving cat's mask better than
    each of three randomly initialised ViT-Tiny/16, on a sequence whose colours drift (darker,
    paler, hue turning): random features compare raw patch colours, DINO's were trained to
    ignore colour jitter. $DINO_FAST_QUICKSTART_CHECKPOINT reuses a finished quickstart run.
    (Without the drift both follow the cat about equally well: grass is grey, the cat is not.)"""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from dino_core.formats import load_backbone

    ckpt = os.environ.get("DINO_FAST_QUICKSTART_CHECKPOINT")
    if not ckpt:
        repo = Path(__file__).resolve().parents[3]
        subprocess.run([sys.executable, "-m", "dino_core.cli.train", "--config", "quickstart",
                        "--output-dir", str(tmp_path / "qs"), "--device", "cpu", "--no-knn",
                        "--no-progress"], cwd=repo, check=True,
                       env={**os.environ, "PYTHONPATH": str(repo)})
        ckpt = tmp_path / "qs" / "checkpoint.pth"
    root, _ = write_davis(tmp_path / "d", n_frames=8, size=(256, 192), sprite=(88, 80),
                          step=(14, 6), drift=True)
    seqs = open_davis(root)
    cfg = PropagationConfig(short_side=192, size_multiple=16)

    def jf(backbone):
        return summarise(segment_and_score(backbone, seqs, cfg, log=False)[0]).jf_mean

    trained = jf(load_backbone(ckpt)[0])
    random = []
    for seed in range(3):
        torch.manual_seed(seed)
        random.append(jf(build_vit("vit_tiny", 16).eval()))
    assert trained > max(random), (trained, random)
