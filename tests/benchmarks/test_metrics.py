"""The benchmark's metric functions on small cases worked out by hand."""

from __future__ import annotations

import pytest

from benchmarks import metrics
from benchmarks.datasets import evenly_spaced
from benchmarks.metrics import ScoringRun
from benchmarks.report import fmt, pct, table_head, table_row


def test_auc_counts_wins_and_half_ties() -> None:
    # 0.9 and 0.8 beat all three negatives (3 + 3); 0.5 loses to 0.6, ties 0.5, beats 0.1 (0 + 0.5 + 1)
    assert metrics.auc([0.9, 0.8, 0.5], [0.6, 0.5, 0.1]) == pytest.approx(7.5 / 9)
    assert metrics.auc([0.9], [0.1, 0.2]) == 1.0
    assert metrics.auc([0.1], [0.9]) == 0.0
    assert metrics.auc([0.5, 0.5], [0.5]) == 0.5


def test_auc_is_none_without_hits_or_negatives() -> None:
    assert metrics.auc([], [0.5]) is None
    assert metrics.auc([0.5], []) is None


def test_summary_median_p90_mean() -> None:
    s = metrics.summary([4.0, 1.0, 10.0, 2.0, 3.0])
    # sorted 1 2 3 4 10: p90 sits 0.6 of the way from 4 to 10 (numpy's linear interpolation)
    assert s == {"n": 5, "median": 3.0, "p90": pytest.approx(7.6), "mean": 4.0}
    assert metrics.summary([]) == {"n": 0, "median": None, "p90": None, "mean": None}


def test_rank_is_one_based_and_within_k() -> None:
    assert metrics.rank(["a", "b", "c"], "a") == 1
    assert metrics.rank(["a", "b", "c"], "c") == 3
    assert metrics.rank(["a", "b", "c"], "z") is None
    assert metrics.rank(["a", "b", "c", "d", "e", "f"], "f") is None  # 6th, beyond K=5
    assert metrics.rank(["a", "b"], "b", k=1) is None
    assert metrics.rank(["a"], None) is None


def _run() -> tuple[ScoringRun, dict[str, str | None], dict[str, str], list[str]]:
    """Three queries with an answer (found first, found second, missed) and two negatives."""
    run = ScoringRun(
        "default",
        keys={"q1": ["A", "X"], "q2": ["X", "B"], "q3": ["Y", "Z"], "q4": ["X"], "q5": []},
        scores={"q1": [0.9, 0.3], "q2": [0.7, 0.6], "q3": [0.4, 0.2], "q4": [0.8], "q5": []},
    )
    truth = {"q1": "A", "q2": "B", "q3": "C", "q4": None, "q5": None}
    transforms = {"q1": "t1", "q2": "t1", "q3": "t2", "q4": "t2", "q5": "t1"}
    return run, truth, transforms, ["q1", "q2", "q3", "q4", "q5"]


def test_pr_points_one_point_per_distinct_score() -> None:
    run, truth, _, queries = _run()
    # accepted in score order 0.9 (right), 0.8 (negative), 0.7 (wrong), 0.4 (wrong), no result (-1)
    expected = [(0.9, 1.0, 1 / 3), (0.8, 1 / 2, 1 / 3), (0.7, 1 / 3, 1 / 3), (0.4, 1 / 4, 1 / 3), (-1.0, 1 / 5, 1 / 3)]
    assert metrics.pr_points(run, truth, queries) == [pytest.approx(p) for p in expected]


def test_pr_points_merges_tied_scores() -> None:
    run = ScoringRun("seed", keys={"a": ["A"], "b": ["X"]}, scores={"a": [0.5], "b": [0.5]})
    assert metrics.pr_points(run, {"a": "A", "b": "B"}, ["a", "b"]) == [(0.5, 0.5, 0.5)]


def test_best_f1_picks_the_highest_f1() -> None:
    run, truth, _, queries = _run()
    # F1 at 0.9: 2 * 1 * 1/3 / (4/3) = 0.5; at 0.8: 2 * 1/2 * 1/3 / (5/6) = 0.4; lower after that
    best = metrics.best_f1(metrics.pr_points(run, truth, queries))
    assert best == {"threshold": 0.9, "precision": 1.0, "recall": pytest.approx(1 / 3)}
    assert metrics.best_f1([]) is None
    assert metrics.f1(0.0, 0.0) == 0.0
    assert metrics.f1(0.5, 1.0) == pytest.approx(2 / 3)


def test_at_threshold_precision_and_recall() -> None:
    run, truth, _, queries = _run()
    # >= 0.75 accepts q1 (right) and q4 (a negative): precision 1/2; 1 of the 3 answers found
    assert metrics.at_threshold(run, truth, queries, 0.75) == {
        "threshold": 0.75,
        "precision": 0.5,
        "recall": pytest.approx(1 / 3),
        "accepted": 2,
    }
    assert metrics.at_threshold(run, truth, queries, 0.95) == {
        "threshold": 0.95,
        "precision": None,
        "recall": 0.0,
        "accepted": 0,
    }


def test_quality_recall_mrr_auc_and_per_transform() -> None:
    run, truth, transforms, queries = _run()
    q = metrics.quality(run, truth, transforms, queries)
    assert (q["queries"], q["positives"], q["negatives"]) == (5, 3, 2)
    assert q["recall@1"] == pytest.approx(1 / 3)
    assert q["recall@5"] == pytest.approx(2 / 3)
    assert q["mrr@5"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert q["hit_scores"] == [0.9]  # only q1's original is ranked first
    assert q["neg_scores"] == [0.8]  # q5 returned nothing
    assert q["auc"] == 1.0
    assert q["per_transform"] == {
        "t1": {"n": 2, "r1": 1, "r5": 2, "neg": 1, "neg_copy": 0},
        "t2": {"n": 1, "r1": 0, "r5": 0, "neg": 1, "neg_copy": 0},
    }
    assert q["best_f1"] == {"threshold": 0.9, "precision": 1.0, "recall": pytest.approx(1 / 3)}
    assert "engine_threshold" not in q


def test_quality_reports_a_given_threshold() -> None:
    run, truth, transforms, queries = _run()
    q = metrics.quality(run, truth, transforms, queries, ("scoring.SAME_IMAGE_THRESHOLD", 0.75))
    assert q["engine_threshold"] == {
        "name": "scoring.SAME_IMAGE_THRESHOLD",
        **metrics.at_threshold(run, truth, queries, 0.75),
    }
    # negatives whose top score reaches the threshold are false copies: q4 (0.8, t2); q5 (t1) has no result
    assert {t: c["neg_copy"] for t, c in q["per_transform"].items()} == {"t1": 0, "t2": 1}


def test_quality_without_positives() -> None:
    run = ScoringRun("seed", keys={"n": ["X"]}, scores={"n": [0.3]})
    q = metrics.quality(run, {"n": None}, {"n": "t"}, ["n"])
    assert q["recall@1"] is None and q["recall@5"] is None and q["mrr@5"] is None and q["auc"] is None
    assert q["per_transform"] == {"t": {"n": 0, "r1": 0, "r5": 0, "neg": 1, "neg_copy": 0}}


def test_same_top_allows_ties_only() -> None:
    assert metrics.same_top(["a", "b"], [0.9, 0.8], ["a", "b"], [0.5, 0.1])  # same keys: scores not compared
    assert metrics.same_top(["a", "b"], [0.8, 0.8], ["b", "a"], [0.8, 0.8 - 1e-6])  # a tie, ordered differently
    # where the keys differ, the scores at that rank must agree within PARITY_TOL
    assert not metrics.same_top(["a", "b"], [0.9, 0.8], ["b", "a"], [0.85, 0.8])
    assert not metrics.same_top(["a", "b"], [0.9, 0.8], ["a", "c"], [0.9, 0.8 + 2e-5])
    assert not metrics.same_top(["a", "b"], [0.9, 0.8], ["a"], [0.9])


def test_shortlist_loss_shares() -> None:
    exhaustive_top = {"q1": ["A", "B", "C"], "q2": ["D", "E"], "q3": ["A", "B"]}
    kept = {"q1": {"A", "B", "C"}, "q2": {"X"}, "q3": {"A"}}
    truth = {"q1": "A", "q2": None, "q3": "B"}
    loss = metrics.shortlist_loss(24, kept, exhaustive_top, truth, ["q1", "q2", "q3"])
    assert loss == {
        "shortlist_size": 24,
        "queries": 3,
        "top5_items_lost": pytest.approx(3 / 7),  # D, E and q3's B of 7 items
        "queries_losing_any": pytest.approx(2 / 3),
        "top1_lost": pytest.approx(1 / 3),  # q2's D
        "answer_lost": 0.5,  # q3's original B is not kept; q1's A is
        "answer_lost_n": 1,
        "answer_lost_seed_had_n": 1,
        "positives": 2,
    }


def test_evenly_spaced_subset() -> None:
    names = [f"q{i}" for i in range(10)]
    assert evenly_spaced(names, 3) == ["q0", "q3", "q6"]  # every 10/3-th
    assert evenly_spaced(names, 10) == names
    assert evenly_spaced(names, 50) == names


def test_report_formatting() -> None:
    assert fmt(None) == "n/a" and fmt(0.12345) == "0.123" and fmt(7) == "7"
    assert pct(None) == "n/a" and pct(0.1234) == "12.3%"
    assert table_head(["a", "b"], "lr") == ["| a | b |", "|---|---:|"]
    assert table_row(["1", "2"]) == "| 1 | 2 |"
