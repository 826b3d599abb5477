"""Average precision of small hand-made rankings against values computed by hand."""
import numpy as np
import pytest
import torch

from dino_core.eval.ranking_metrics import (average_precision, mean_average_precision,
                                            positive_ranks, rank_database)


def test_average_precision_by_hand():
    """Trapezoids of width 1/n: left height i / r (1 at r = 0), right (i + 1) / (r + 1)."""
    assert average_precision([0], 1) == 1.0
    assert average_precision([1], 1) == pytest.approx((0 / 1 + 1 / 2) / 2)           # 0.25
    assert average_precision([0, 2], 2) == pytest.approx(1 / 2 + (1 / 2 + 2 / 3) / 4)  # 19/24
    assert average_precision([0, 2], 3) == pytest.approx(19 / 36)  # a positive never found
    assert average_precision([], 2) == 0.0
    with pytest.raises(ValueError):
        average_precision([0], 0)


def test_junk_is_taken_out_of_the_ranking():
    """Ranking 5, 3, 7, 1 with positives {1, 7} and junk {3}: without the junk the positives
    sit at 1 and 2, AP = 1/2 * (0 + 1/2) / 2 + 1/2 * (1/2 + 2/3) / 2 = 5/12. Counted as a
    negative, the junk pushes them to 2 and 3: AP = 7/24."""
    ranking = np.array([5, 3, 7, 1])
    pos, junk = np.array([1, 7]), np.array([3])
    assert positive_ranks(ranking, pos, junk).tolist() == [1, 2]
    assert average_precision(positive_ranks(ranking, pos, junk), 2) == pytest.approx(5 / 12)
    no_junk = positive_ranks(ranking, pos, np.array([], dtype=np.int64))
    assert average_precision(no_junk, 2) == pytest.approx(7 / 24)


def test_mean_over_queries_skips_queries_without_positives_and_cuts_at_max_rank():
    rankings = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [1, 0, 2, 3]])
    positives = [np.array([0]), np.array([0]), np.array([], dtype=np.int64)]
    mean, aps = mean_average_precision(rankings, positives)
    # query 0: positive first, AP 1; query 1: positive 4th, AP (1/3 * 0 + 1/4) / 2 = 1/8
    assert aps[:2] == pytest.approx([1.0, 1 / 8]) and np.isnan(aps[2])
    assert mean == pytest.approx((1 + 1 / 8) / 2)
    assert mean_average_precision(rankings, positives, max_rank=3)[1][1] == 0.0
    with pytest.raises(ValueError, match="no query has a positive"):
        mean_average_precision(rankings[2:], positives[2:])
    with pytest.raises(ValueError, match="3 rankings"):
        mean_average_precision(rankings, positives[:2])


def test_rank_database_orders_by_cosine_and_keeps_ties_in_database_order():
    db = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [1.0, 1.0]])
    q = torch.tensor([[1.0, 0.1], [0.0, 3.0]])
    assert rank_database(q, db, chunk=1).tolist() == [[0, 2, 3, 1], [1, 3, 0, 2]]
