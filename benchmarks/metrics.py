"""The benchmark's numbers, as pure functions of a scoring run and the ground truth.

``truth`` maps each query to the catalog key of its original, or to None for a negative (a query
whose right answer is "not in the catalog"). A :class:`ScoringRun` holds each query's top-K keys
and scores, best first. Everything here is deterministic: no engine, no clock, no files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

K = 5  # results per query: recall@5 and MRR@5 are over these
PARITY_TOL = 1e-5  # score difference that counts as a tie when comparing two top-K lists

Truth = Mapping[str, str | None]
# (threshold, precision, recall) of "accept the top-1 result when its score >= threshold"
PrPoint = tuple[float, float, float]
# per-transform counts: queries with an answer, found first, found in the top K; negatives, and
# negatives whose top score reaches the engine's "same image" threshold (a false "copy")
NO_QUERIES: Mapping[str, int] = {"n": 0, "r1": 0, "r5": 0, "neg": 0, "neg_copy": 0}


@dataclass
class ScoringRun:
    """One scoring's answers to a set of queries."""

    name: str
    keys: dict[str, list[str]] = field(default_factory=dict)  # query -> top-K keys
    scores: dict[str, list[float]] = field(default_factory=dict)
    search_ms: dict[str, float] = field(default_factory=dict)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)  # query -> ms per scoring stage


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Count, median, 90th percentile and mean (None for each when there are no values)."""
    if not values:
        return {"n": 0, "median": None, "p90": None, "mean": None}
    a = np.asarray(values, dtype=np.float64)
    return {
        "n": int(a.size),
        "median": float(np.median(a)),
        "p90": float(np.percentile(a, 90)),
        "mean": float(a.mean()),
    }


def rank(keys: Sequence[str], answer: str | None, k: int = K) -> int | None:
    """1-based rank of ``answer`` in the first ``k`` keys; None when it is not there."""
    top = list(keys[:k])
    return top.index(answer) + 1 if answer in top else None


def top1_correct(keys: Sequence[str], answer: str | None) -> bool:
    return bool(keys) and answer is not None and keys[0] == answer


def count_positives(truth: Truth, queries: Sequence[str]) -> int:
    return sum(truth[q] is not None for q in queries)


def auc(pos: Sequence[float], neg: Sequence[float]) -> float | None:
    """P(random hit score > random negative score), ties count half (Mann-Whitney)."""
    if not pos or not neg:
        return None
    p = np.asarray(pos)[:, None]
    n = np.asarray(neg)[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))


def f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def pr_points(run: ScoringRun, truth: Truth, queries: Sequence[str]) -> list[PrPoint]:
    """(threshold, precision, recall) of "accept the top-1 result when its score >= t", one per distinct score.

    A true positive is an accepted top-1 that is the query's original; precision is over all
    accepted queries (negatives included), recall over the queries that have an original.
    """
    items = [(run.scores[q][0] if run.scores[q] else -1.0, top1_correct(run.keys[q], truth[q])) for q in queries]
    positives = count_positives(truth, queries)
    items.sort(key=lambda x: -x[0])
    out: list[PrPoint] = []
    tp = fp = 0
    for i, (score, correct) in enumerate(items):
        tp += correct
        fp += not correct
        if i + 1 < len(items) and items[i + 1][0] == score:
            continue
        out.append((score, tp / (tp + fp), tp / positives if positives else 0.0))
    return out


def best_f1(pr: Sequence[PrPoint]) -> dict[str, float] | None:
    """The point of ``pr`` with the highest F1 (the first of equals), or None for an empty curve."""
    best = max(pr, key=lambda x: f1(x[1], x[2]), default=None)
    return None if best is None else {"threshold": best[0], "precision": best[1], "recall": best[2]}


def at_threshold(run: ScoringRun, truth: Truth, queries: Sequence[str], t: float) -> dict[str, Any]:
    """Precision and recall of accepting the top-1 result when its score >= ``t``."""
    accepted = [q for q in queries if run.scores[q] and run.scores[q][0] >= t]
    tp = sum(top1_correct(run.keys[q], truth[q]) for q in accepted)
    positives = count_positives(truth, queries)
    return {
        "threshold": t,
        "precision": tp / len(accepted) if accepted else None,
        "recall": tp / positives if positives else None,
        "accepted": len(accepted),
    }


def quality(
    run: ScoringRun,
    truth: Truth,
    transforms: Mapping[str, str],
    queries: Sequence[str],
    threshold: tuple[str, float] | None = None,
) -> dict[str, Any]:
    """Recall, MRR, AUC, per-transform counts and the precision-recall curve of ``run``.

    ``threshold`` (name, value): also report precision and recall at that score.
    """
    pos = [q for q in queries if truth[q] is not None]
    neg = [q for q in queries if truth[q] is None]
    ranks = {q: rank(run.keys[q], truth[q]) for q in pos}
    hit_scores = [run.scores[q][0] for q in pos if ranks[q] == 1]
    neg_scores = [run.scores[q][0] for q in neg if run.scores[q]]
    per_transform: dict[str, dict[str, int]] = {}
    for q in queries:
        counts = per_transform.setdefault(transforms.get(q, "?"), dict(NO_QUERIES))
        if truth[q] is None:
            counts["neg"] += 1
            counts["neg_copy"] += bool(threshold and run.scores[q] and run.scores[q][0] >= threshold[1])
        else:
            counts["n"] += 1
            counts["r1"] += ranks[q] == 1
            counts["r5"] += ranks[q] is not None
    pr = pr_points(run, truth, queries)
    out = {
        "queries": len(queries),
        "positives": len(pos),
        "negatives": len(neg),
        "recall@1": sum(r == 1 for r in ranks.values()) / len(pos) if pos else None,
        "recall@5": sum(r is not None for r in ranks.values()) / len(pos) if pos else None,
        "mrr@5": sum(1.0 / r for r in ranks.values() if r) / len(pos) if pos else None,
        "auc": auc(hit_scores, neg_scores),
        "hit_scores": hit_scores,
        "neg_scores": neg_scores,
        "per_transform": per_transform,
        "pr": pr,
        "best_f1": best_f1(pr),
    }
    if threshold:
        out["engine_threshold"] = {"name": threshold[0], **at_threshold(run, truth, queries, threshold[1])}
    return out


def same_top(
    a_keys: Sequence[str], a_scores: Sequence[float], b_keys: Sequence[str], b_scores: Sequence[float]
) -> bool:
    """Same top-K keys, or any difference is a tie within PARITY_TOL."""
    if list(a_keys) == list(b_keys):
        return True
    if len(a_keys) != len(b_keys):
        return False
    return all(
        ka == kb or abs(sa - sb) <= PARITY_TOL
        for ka, kb, sa, sb in zip(a_keys, b_keys, a_scores, b_scores, strict=False)
    )


def shortlist_loss(
    shortlist_size: int,
    kept: Mapping[str, set[str]],
    exhaustive_top: Mapping[str, list[str]],
    truth: Truth,
    queries: Sequence[str],
) -> dict[str, Any]:
    """How much of the exhaustive top-K a first pass that keeps only ``kept[q]`` loses.

    Shares of the exhaustive top-K items missing from the kept set, of queries missing any of
    them, of queries missing the exhaustive top-1, and of queries with an answer whose original
    was not kept (``answer_lost_seed_had_n``: how many of those the exhaustive top-K held).
    """
    lost_items = total_items = lost_queries = lost_top1 = 0
    answer_lost = answer_lost_seed_had = positives = 0
    for q in queries:
        top = exhaustive_top[q]
        missing = [key for key in top if key not in kept[q]]
        lost_items += len(missing)
        total_items += len(top)
        lost_queries += bool(missing)
        lost_top1 += bool(top) and top[0] not in kept[q]
        answer = truth[q]
        if answer is not None:
            positives += 1
            if answer not in kept[q]:
                answer_lost += 1
                answer_lost_seed_had += answer in top
    return {
        "shortlist_size": shortlist_size,
        "queries": len(queries),
        "top5_items_lost": lost_items / total_items if total_items else None,
        "queries_losing_any": lost_queries / len(queries) if queries else None,
        "top1_lost": lost_top1 / len(queries) if queries else None,
        "answer_lost": answer_lost / positives if positives else None,
        "answer_lost_n": answer_lost,
        "answer_lost_seed_had_n": answer_lost_seed_had,
        "positives": positives,
    }
