"""Metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from toolrec_local.metrics import (
    MISSING, mask_history, mean_std, metric_means, ndcg_at, rank_in_list, ranks_from_scores,
    recall_at, relative_improvement, top_n_from_scores,
)

NEG = -np.inf


def test_rank_counts_items_scored_higher():
    # items 1..4 score .1 .5 .3 .9; target 3 (.3) is beaten by items 2 and 4
    scores = np.array([[0.0, 0.1, 0.5, 0.3, 0.9]])
    assert ranks_from_scores(scores, np.array([3])).tolist() == [2.0]
    assert ranks_from_scores(scores, np.array([4])).tolist() == [0.0]
    assert ranks_from_scores(scores, np.array([1])).tolist() == [3.0]


def test_padding_column_never_counts_even_when_it_scores_highest():
    scores = np.array([[99.0, 0.1, 0.5]])
    assert ranks_from_scores(scores, np.array([2])).tolist() == [0.0]


def test_history_items_are_excluded_from_the_ranking():
    scores = np.array([[0.0, 0.1, 0.5, 0.3, 0.9], [0.0, 0.1, 0.5, 0.3, 0.9]])
    ranks = ranks_from_scores(scores, np.array([3, 3]), histories=[np.array([4]), np.array([2, 4])])
    assert ranks.tolist() == [1.0, 0.0]


def test_ties_count_against_the_target():
    scores = np.array([[0.0, 1.0, 1.0, 1.0, 0.5]])
    # two other items tie with the target: pessimistic rank 2
    assert ranks_from_scores(scores, np.array([2])).tolist() == [2.0]
    assert ranks_from_scores(scores, np.array([4])).tolist() == [3.0]


def test_mask_history_leaves_its_input_alone():
    scores = np.array([[1.0, 2.0, 3.0]])
    out = mask_history(scores, [np.array([2])])
    assert out.tolist() == [[NEG, 2.0, NEG]]
    assert scores.tolist() == [[1.0, 2.0, 3.0]]


def test_recall_and_ndcg_at_n_by_hand():
    ranks = np.array([0.0, 1.0, 2.0, 4.0, 5.0, 9.0, 10.0, MISSING])
    assert recall_at(ranks, 5).tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert recall_at(ranks, 10).tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    nd = ndcg_at(ranks, 10)
    expected = [1.0, 1 / math.log2(3), 0.5, 1 / math.log2(6), 1 / math.log2(7), 1 / math.log2(11), 0.0, 0.0]
    assert nd == pytest.approx(expected)
    assert ndcg_at(ranks, 5)[4] == 0.0  # rank 5 is the 6th place


def test_metric_means_by_hand():
    ranks = np.array([0.0, 3.0, 12.0, MISSING])
    m = metric_means(ranks)
    assert m["recall@5"] == pytest.approx(0.5)
    assert m["recall@10"] == pytest.approx(0.5)
    assert m["recall@20"] == pytest.approx(0.75)
    assert m["ndcg@5"] == pytest.approx((1.0 + 1 / math.log2(5)) / 4)
    assert m["ndcg@20"] == pytest.approx((1.0 + 1 / math.log2(5) + 1 / math.log2(14)) / 4)
    assert metric_means(np.array([]))["recall@10"] == 0.0


def test_rank_in_list():
    assert rank_in_list([7, 3, 9], 9) == 2.0
    assert rank_in_list([7, 3, 9], 7) == 0.0
    assert rank_in_list([7, 3, 9], 4) == MISSING


def test_mean_std_is_population_std_over_seeds():
    ms = mean_std([{"recall@10": 0.2, "ndcg@10": 0.1}, {"recall@10": 0.4, "ndcg@10": 0.1}])
    assert ms["recall@10"] == pytest.approx({"mean": 0.3, "std": 0.1})
    assert ms["ndcg@10"] == pytest.approx({"mean": 0.1, "std": 0.0})
    assert mean_std([]) == {}


def test_top_n_best_first_skipping_masked_items_ties_by_lower_id():
    scores = np.array([[NEG, 0.2, 0.9, NEG, 0.9, 0.1], [NEG, NEG, NEG, 0.5, NEG, NEG]])
    assert top_n_from_scores(scores, 3) == [[2, 4, 1], [3]]
    assert top_n_from_scores(scores, 10) == [[2, 4, 1, 5], [3]]


def test_top_n_agrees_with_ranks():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(5, 50))
    scores[:, 0] = NEG
    tops = top_n_from_scores(scores, 10)
    for u, top in enumerate(tops):
        ranks = ranks_from_scores(scores[[u] * len(top)], np.array(top))
        assert ranks.tolist() == list(range(len(top)))


def test_relative_improvement_matches_table_2():
    # ML-1M NDCG: ToolRec 0.1171 vs SASRec 0.1017 -> +15.1 %
    assert relative_improvement(0.1171, 0.1017) == pytest.approx(0.1514, abs=1e-4)
    assert relative_improvement(0.1, 0.0) is None
