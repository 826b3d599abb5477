"""Weighted k-NN: the streamed top-k against its brute-force twin and a per-sample oracle."""
import math

import pytest
import torch

from dino_core.eval.features import FeatureSet
from dino_core.eval.knn import (knn_classify, topk_bruteforce, topk_neighbours, topk_accuracy,
                                weighted_votes)


def random_sets(n=57, m=23, d=8, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    train = FeatureSet(torch.randn(n, d, generator=g) * 3,
                       torch.randint(0, classes, (n,), generator=g))
    val = FeatureSet(torch.randn(m, d, generator=g), torch.randint(0, classes, (m,), generator=g))
    return train, val


@pytest.mark.parametrize("query_chunk,bank_chunk",
                         [(1000, None), (1, 1), (4, 7), (23, 56), (5, 1000)])
def test_streamed_topk_equals_bruteforce(query_chunk, bank_chunk):
    train, val = random_sets()
    for k in (1, 5, 20, 57):
        sims, idx = topk_neighbours(train.features, val.features, k, "cpu", query_chunk,
                                    bank_chunk)
        want_sims, want_idx = topk_bruteforce(train.features, val.features, k)
        assert sims.shape == idx.shape == (23, k)
        assert torch.equal(idx, want_idx)
        assert torch.allclose(sims, want_sims, atol=1e-6)


def test_k_larger_than_the_bank_is_clipped():
    train, val = random_sets(n=12)
    sims, idx = topk_neighbours(train.features, val.features, 200, bank_chunk=5)
    assert sims.shape == (23, 12)
    assert sorted(idx[0].tolist()) == list(range(12))
    res = knn_classify(train, val, ks=(200, 12), bank_chunk=5)
    assert res["k_used"] == {200: 12, 12: 12}
    assert res["top1"][200] == res["top1"][12] and res["top5"][200] == res["top5"][12]


def oracle_scores(train, val, k, num_classes, temperature):
    """One query at a time with plain Python: cosine, sort, exp-weighted votes."""
    out = torch.zeros(len(val.labels), num_classes, dtype=torch.float64)
    for qi, q in enumerate(val.features.double().tolist()):
        qn = math.sqrt(sum(v * v for v in q))
        sims = []
        for bi, b in enumerate(train.features.double().tolist()):
            bn = math.sqrt(sum(v * v for v in b))
            sims.append((sum(x * y for x, y in zip(q, b)) / (qn * bn), bi))
        for sim, bi in sorted(sims, reverse=True)[:k]:
            out[qi, int(train.labels[bi])] += math.exp(sim / temperature)
    return out


@pytest.mark.parametrize("k", [1, 7, 30])
def test_weighted_votes_match_a_per_sample_oracle(k):
    train, val = random_sets(n=40, m=9, classes=6, seed=3)
    sims, idx = topk_neighbours(train.features, val.features, k, query_chunk=4, bank_chunk=9)
    scores = weighted_votes(sims, train.labels[idx], 6, 0.07)
    want = oracle_scores(train, val, k, 6, 0.07)
    assert torch.allclose(scores.double(), want, rtol=1e-4)
    top1, _ = topk_accuracy(scores, val.labels)
    pred = want.argmax(dim=1)
    assert top1 == pytest.approx(100.0 * (pred == val.labels).double().mean().item())


def test_chunked_classification_equals_unchunked():
    train, val = random_sets(n=300, m=64, classes=10, seed=5)
    ks = (10, 20, 100, 200)
    whole = knn_classify(train, val, ks, query_chunk=10_000, bank_chunk=None)
    streamed = knn_classify(train, val, ks, query_chunk=7, bank_chunk=31)
    assert whole == streamed


def test_separated_clusters_are_classified_perfectly_and_noise_is_not():
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(4, 16, generator=g) * 10
    labels = torch.arange(4).repeat_interleave(30)
    train = FeatureSet(centres[labels] + torch.randn(120, 16, generator=g), labels)
    val_labels = torch.arange(4).repeat(5)
    val = FeatureSet(centres[val_labels] + torch.randn(20, 16, generator=g), val_labels)
    res = knn_classify(train, val, ks=(10, 20), bank_chunk=13, query_chunk=3)
    assert res["top1"] == {10: 100.0, 20: 100.0}
    shuffled = FeatureSet(train.features, labels[torch.randperm(120, generator=g)])
    assert knn_classify(shuffled, val, ks=(10,))["top1"][10] < 80.0


def test_top5_counts_any_of_the_five_best_classes():
    scores = torch.tensor([[5.0, 4, 3, 2, 1, 0], [0.0, 1, 2, 3, 4, 5]])
    labels = torch.tensor([4, 0])
    assert topk_accuracy(scores, labels) == (0.0, 50.0)


def test_bad_inputs_get_clear_errors():
    train, val = random_sets()
    with pytest.raises(ValueError, match="every k must be >= 1"):
        knn_classify(train, val, ks=(0,))
    other = FeatureSet(torch.randn(4, 3), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="dimension"):
        knn_classify(train, other)


@pytest.mark.gpu
def test_streamed_topk_on_the_gpu_equals_bruteforce_on_the_cpu():
    train, val = random_sets(n=5000, m=300, d=64, classes=10, seed=7)
    sims, idx = topk_neighbours(train.features, val.features, 20, "cuda", query_chunk=64,
                                bank_chunk=999)
    want_sims, want_idx = topk_bruteforce(train.features, val.features, 20)
    assert sims.device.type == "cpu"
    assert torch.allclose(sims, want_sims, atol=1e-5)
    assert (idx == want_idx).float().mean() > 0.999  # float32 GEMM may swap near-ties
    res_gpu = knn_classify(train, val, device="cuda", bank_chunk=999)
    res_cpu = knn_classify(train, val, device="cpu", bank_chunk=None)
    for k in (10, 20, 100, 200):
        assert res_gpu["top1"][k] == pytest.approx(res_cpu["top1"][k], abs=1.0)
