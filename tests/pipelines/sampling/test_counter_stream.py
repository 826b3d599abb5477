"""pipelines.sampling.counter_stream: the one random stream, and CounterRNG's Generator methods.

Runs without numba (the base install's reference executor depends on this module).
"""
import itertools
import math
import subprocess
import sys

import numpy as np
import pytest

from pipelines.sampling import counter_stream as cs
from pipelines.sampling import sample_crop_box
from pipelines.spec import AugmentationSpec
from tests.pipelines.fidelity import check_rate, ks_critical, ks_statistic


def test_splitmix64_known_values():
    """First outputs of SplitMix64 seeded with 0 (the reference sequence of the algorithm:
    state advances by GOLDEN, output is the mixed state)."""
    assert cs.splitmix64(0) == 0xE220A8397B1DCDAF
    assert cs.splitmix64(cs.GOLDEN) == 0x6E789E6AA1B965F4


def test_keys_differ_per_seed_rank_epoch_and_sample():
    base = (0, 0, 0, 0)
    keys = {cs.sample_key(*base)}
    for i in range(4):
        changed = list(base)
        changed[i] = 1
        keys.add(cs.sample_key(*changed))
    assert len(keys) == 5
    assert cs.sample_key(5, 2, 7, 11) == cs.splitmix64(cs.epoch_key(5, 2, 7) ^ 11)
    assert all(0 <= k <= cs.MASK64 for k in keys)


def test_random_walks_the_counters_one_per_draw():
    key = cs.sample_key(3, 1, 2, 99)
    rng = cs.CounterRNG(key)
    u = [rng.random() for _ in range(4000)]
    assert rng.counter == 4000
    assert u == [cs.unit(key, k) for k in range(4000)]
    assert 0.0 <= min(u) and max(u) < 1.0
    assert ks_statistic(np.array(u), np.random.default_rng(0).random(20000)) <= \
        ks_critical(4000, 20000)
    later = cs.CounterRNG(key, counter=100)
    assert later.random() == u[100]


def test_uniform_is_numpys_formula_on_one_counter():
    key = cs.sample_key(0, 0, 0, 1)
    a, b = cs.CounterRNG(key), cs.CounterRNG(key)
    for lo, hi in [(0.0, 1.0), (-2.5, 3.0), (0.1, 2.0), (4.0, 4.0)]:
        got = a.uniform(lo, hi)
        assert got == lo + (hi - lo) * b.random()
        assert lo <= got <= hi
    assert a.counter == 4 and 0.0 <= a.uniform() < 1.0


@pytest.mark.parametrize("low, high", [(0, 1), (0, 2), (3, 10), (-4, 3), (0, 1000)])
def test_integers_are_half_open_and_cover_the_range(low, high):
    rng = cs.CounterRNG(cs.sample_key(1, 0, 0, high))
    draws = np.array([rng.integers(low, high) for _ in range(3000)])
    assert rng.counter == 3000
    assert draws.min() >= low and draws.max() < high
    if high - low <= 10:
        assert set(draws.tolist()) == set(range(low, high))
        for value in range(low, high):
            assert check_rate(draws == value, 1 / (high - low), f"integers == {value}").ok


def test_integers_follow_numpy_conventions():
    rng = cs.CounterRNG(7)
    assert all(0 <= rng.integers(5) < 5 for _ in range(200))
    with pytest.raises(ValueError, match="empty range"):
        rng.integers(3, 3)


def test_integers_clamp_the_largest_uniform_below_high():
    class Top(cs.CounterRNG):
        def random(self) -> float:
            return 1.0 - 2.0 ** -53

    for n in (1, 3, 7, 2 ** 20, 2 ** 40):
        assert Top(0).integers(0, n) == n - 1


def test_permutation_is_a_permutation_using_n_minus_one_counters():
    rng = cs.CounterRNG(cs.sample_key(0, 0, 0, 0))
    for n in (0, 1, 2, 4, 9):
        before = rng.counter
        p = rng.permutation(n)
        assert p.dtype == np.int64 and sorted(p.tolist()) == list(range(n))
        assert rng.counter - before == max(n - 1, 0)


def test_permutations_of_four_are_uniform():
    """Chi-square over the 24 orders (df 23: 99.9% quantile 49.7) and every op in every
    position at rate 1/4."""
    n = 12000
    rng = cs.CounterRNG(cs.sample_key(2, 0, 0, 0))
    perms = [tuple(rng.permutation(4).tolist()) for _ in range(n)]
    counts = {p: 0 for p in itertools.permutations(range(4))}
    for p in perms:
        counts[p] += 1
    expected = n / 24
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 49.7, chi2
    arr = np.array(perms)
    for pos, op in itertools.product(range(4), range(4)):
        assert check_rate(arr[:, pos] == op, 0.25, f"op {op} at {pos}").ok


def test_a_biased_permutation_fails_the_uniformity_check():
    """The check above can fail: the classic wrong shuffle (j drawn from all n positions)
    is measurably non-uniform at this sample size."""
    rng = cs.CounterRNG(cs.sample_key(2, 0, 0, 0))
    counts = {p: 0 for p in itertools.permutations(range(4))}
    n = 12000
    for _ in range(n):
        out = list(range(4))
        for i in range(3, 0, -1):
            j = rng.integers(0, 4)
            out[i], out[j] = out[j], out[i]
        counts[tuple(out)] += 1
    chi2 = sum((c - n / 24) ** 2 / (n / 24) for c in counts.values())
    assert chi2 > 49.7


def test_samplers_accept_the_counter_stream():
    spec = AugmentationSpec()
    rng = cs.CounterRNG(cs.sample_key(0, 0, 0, 3))
    top, left, h, w = sample_crop_box(320, 240, spec.local_view.scale, spec.ratio, rng)
    assert 0 <= top <= 240 - h and 0 <= left <= 320 - w
    assert spec.local_view.scale[0] * 0.9 <= h * w / (320 * 240) <= spec.local_view.scale[1]
    assert math.log(spec.ratio[0]) - 0.1 <= math.log(w / h) <= math.log(spec.ratio[1]) + 0.1


def test_base_install_modules_do_not_import_numba():
    code = ("import sys; import pipelines.sampling, pipelines.sampling.counter_stream, "
            "pipelines.reference, pipelines.sampling.param_row, "
            "pipelines.photometric, pipelines.photometric.torch_ops; print('numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
