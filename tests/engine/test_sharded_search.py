"""A catalog split into shards answers ``default`` searches in two phases (first pass, then
verification of the merged shortlist) exactly as one index over all of it: keys, URLs, scores,
SSIM and ORB, on real images; ``seed`` (exhaustive) through the shards' merged results."""

from __future__ import annotations

import numpy as np
import pytest

from harmony_image import SearchIndex, SearchParams, merge_results
from harmony_image.index import merge_shortlists, merge_verified
from harmony_image.scoring import (
    FirstPass,
    best_rows,
    choices,
    mirrored,
    shortlist,
    shortlist_cut,
    shortlist_rows,
    shortlist_size,
    verify_shortlist,
)
from tests.engine.test_tiers import entries, in_memory, queries  # noqa: F401 - the ~80 real entries and queries


def phased(shards: list[SearchIndex], query, params: SearchParams, *, send: str = "whole"):
    """What harmony_aws.fanout does across functions, in process: each shard holding part of the
    merged shortlist verifies it, given the whole shortlist (``send="whole"``, as the fan-out
    does) or only its part (``"part"``: it then chooses by its part's ranks, more than its share)."""
    shortlist = merge_shortlists([s.first_pass(query, k=params.k) for s in shards], k=params.k)
    parts = []
    for s in shards:
        mine = [i for i, key in enumerate(shortlist.keys) if key in s]
        if mine:
            parts.append(s.verify(query, shortlist if send == "whole" else shortlist.take(np.array(mine))))
    return merge_verified(parts, k=params.k, min_score=params.min_score)


def split(entries, n: int) -> list[SearchIndex]:  # noqa: F811 - the fixture's value
    return [in_memory(entries[i::n]) for i in range(n)]


@pytest.mark.parametrize(("n", "send"), [(2, "whole"), (3, "whole"), (5, "whole"), (3, "part")])
def test_sharded_default_search_is_the_one_index_search(entries, queries, n, send):  # noqa: F811
    whole, shards = in_memory(entries), split(entries, n)
    assert len(entries) > 2 * shortlist_size(12)  # the cuts choose
    for name, q in queries.items():
        for params in (SearchParams(k=1), SearchParams(k=5), SearchParams(k=12), SearchParams(k=40, min_score=0.05)):
            assert phased(shards, q, params, send=send) == whole.search(q, params), (name, params)


def test_a_shard_given_the_whole_shortlist_makes_its_share_of_the_costly_checks(entries, queries):  # noqa: F811
    """Region and crop placements and the detail verifications chosen by first-pass ranks are
    the whole shortlist's choice among a shard's rows; only the best by 256 px score is the
    shard's own (it cannot see the other shards' scores)."""
    packed = in_memory(entries).packed()
    checked = 0
    for q in queries.values():
        mirror = mirrored(q, detail=False)
        rows, first = shortlist(q, mirror, packed, shortlist_size(5))
        e = verify_shortlist(q, mirror, packed, rows, first=first)
        want = choices(e)
        for own in np.array_split(np.arange(len(rows)), 3):
            got, alone = choices(e.take(own), whole=e.first, own=own), choices(e.take(own))
            mine = {int(p): i for i, p in enumerate(own.tolist())}
            share = {part: [mine[p] for p in getattr(want, part) if p in mine] for part in ("region", "crop")}
            assert sorted(got.region) == sorted(share["region"]) and sorted(got.crop) == sorted(share["crop"])
            detail_share = {mine[p] for p in want.detail if p in mine}
            assert detail_share <= set(got.detail) <= detail_share | set(alone.detail)
            assert set(got.region) <= set(alone.region) and set(got.crop) <= set(alone.crop)
            checked += len(alone.region) + len(alone.crop) - len(got.region) - len(got.crop)
    assert checked > 0  # a part alone chose placements that are not its share


def test_sharded_seed_search_is_the_one_index_search(entries, queries):  # noqa: F811
    whole, shards = in_memory(entries), split(entries, 3)
    for name, q in list(queries.items())[::3]:
        params = SearchParams(k=5, scoring="seed")
        assert merge_results([s.search(q, params) for s in shards], k=5) == whole.search(q, params), name


def test_a_shard_verifies_only_the_keys_it_holds(entries, queries):  # noqa: F811
    shards = split(entries, 2)
    q = next(iter(queries.values()))
    shortlist = merge_shortlists([s.first_pass(q, k=5) for s in shards], k=5)
    got = shards[0].verify(q, shortlist)
    assert set(got.keys) == {k for k in shortlist.keys if k in shards[0]} and list(got.keys) == sorted(got.keys)
    assert len(got.evidence) == len(got.keys) == len(got.urls) == len(got.sha256)
    assert SearchIndex().first_pass(q, k=5).keys == ()


def test_best_rows_cuts_ties_by_position_and_composes_over_parts():
    """The best N of a whole lies within the union of its parts' best N (ties by position, here
    the key order), which is what lets shards cut before the merge."""
    rng = np.random.default_rng(7)
    for _ in range(200):
        values = rng.integers(0, 4, size=int(rng.integers(1, 60))).astype(np.float64)
        size = int(rng.integers(1, 30))
        want = np.sort(best_rows(values, size))
        assert len(want) == min(size, len(values))
        order = np.lexsort((np.arange(len(values)), -values))  # by value, ties by position
        assert want.tolist() == np.sort(order[:size]).tolist()
        cuts = np.sort(rng.choice(np.arange(1, len(values) + 1), size=min(3, len(values)), replace=False))
        parts = np.split(np.arange(len(values)), cuts)  # some parts may be empty
        union = np.sort(np.concatenate([p[best_rows(values[p], size)] for p in parts]))
        assert np.sort(union[best_rows(values[union], size)]).tolist() == want.tolist()
    assert np.sort(best_rows(np.array([np.nan, 1.0, np.nan, 0.0]), 3)).tolist() == [0, 1, 3]


def test_a_cut_holds_at_most_shortlist_rows_and_can_hold_that_many():
    """Shard answers are checked against shortlist_rows: it must bound every cut, and be reached
    when the five votes pick different rows."""
    rng = np.random.default_rng(3)
    for k in (1, 5, 12, 50):
        n = 5 * shortlist_rows(k)
        for _ in range(20):
            first = FirstPass(rng.random(n), rng.integers(0, 9, n), rng.integers(0, 9, n), rng.random(n), rng.random(n))
            assert len(shortlist_cut(first, shortlist_size(k))) <= shortlist_rows(k)
        ramp = np.arange(n, dtype=np.float64)
        # each vote's best rows end where its ramp was rolled to: looks, votes, detail votes, regions
        # and crops each favour rows no other does
        apart = FirstPass(*(np.roll(ramp, i * n // 5) for i in range(5)))
        assert len(shortlist_cut(apart, shortlist_size(k))) == shortlist_rows(k)
