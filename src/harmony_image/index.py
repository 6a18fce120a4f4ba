"""The search index: catalog entries, packed for batch scoring, and ranking.

Entries are keyed by their catalog key (a path or S3 key). Adding, replacing and removing are
cheap; the packed arrays that scoring reads are rebuilt lazily on the next search (a segment's
arrays are used where they are, not copied).

A catalog split into shards (one index each) answers ``default`` searches exactly as one index
over all of it, in two phases (harmony_aws/fanout.py carries them between functions):

1. each shard's :meth:`SearchIndex.first_pass`: its best rows by each first-pass vote;
   :func:`merge_shortlists` cuts their union to the catalog's shortlist;
2. each shard's :meth:`SearchIndex.verify` of the rows of that shortlist it holds (the per-row
   evidence);
   :func:`merge_verified` chooses the detail evidence and calibrates over all of it, and ranks.

Every cut is a best-N by a per-row value with ties by key, so the best N of the whole catalog
lies within the union of the shards' best N (:func:`~harmony_image.scoring.best_rows`).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from .features import ImageFeatures
from .packed import Block, CatalogEntry, PackedCatalog, build_block
from .params import SearchParams
from .scoring import (
    Candidates,
    Evidence,
    FirstPass,
    decide,
    mirrored,
    score_catalog,
    shortlist,
    shortlist_cut,
    shortlist_size,
    verify_shortlist,
)
from .segment import Segment

DEFAULT_PARAMS = SearchParams()
_ROW_MASK = (1 << 32) - 1


@dataclass(frozen=True)
class SearchResult:
    key: str
    url: str
    score: float
    ssim: float
    orb: float
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Shortlist:
    """Catalog rows by key, in key order, with their first-pass votes: a shard's best of each,
    or the catalog's shortlist."""

    keys: tuple[str, ...]
    first: FirstPass

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, positions: np.ndarray) -> Shortlist:
        """These rows (positions, in key order)."""
        return Shortlist(tuple(self.keys[i] for i in positions.tolist()), self.first.take(positions))


@dataclass(frozen=True)
class Verified:
    """A shard's part of the catalog's shortlist, verified: each row's key, result URL and
    content hash, and its :class:`~harmony_image.scoring.Evidence`, in key order."""

    keys: tuple[str, ...]
    urls: tuple[str, ...]
    sha256: tuple[str, ...]
    evidence: Evidence


class SearchIndex:
    """Catalog entries and search over them. Thread-safe for concurrent searches and updates.

    Entries come one by one (:meth:`add`: both tiers in memory) or by the thousand in stored
    segments (:meth:`add_segment`: the shortlist tier in memory, the verification tier mapped);
    the latest :meth:`add`, :meth:`add_segment` or :meth:`remove` of a key wins.
    """

    def __init__(self) -> None:
        self._entries: dict[str, CatalogEntry] = {}  # added one by one
        self._segments: list[Block] = []
        self._alive: list[np.ndarray] = []  # per segment: which of its entries are current
        self._located: dict[str, int] = {}  # a current segment entry's key -> segment << 32 | row
        self._packed: PackedCatalog | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries) + len(self._located)

    def __contains__(self, key: str) -> bool:
        return key in self._entries or key in self._located

    def keys(self) -> list[str]:
        return [*self._entries, *self._located]

    def get(self, key: str) -> CatalogEntry | None:
        """The entry ``key`` (a segment's: views of its arrays, see :meth:`Block.features
        <harmony_image.packed.Block.features>`)."""
        entry = self._entries.get(key)
        if entry is not None:
            return entry
        where = self._located.get(key)
        if where is None:
            return None
        block, i = self._segments[where >> 32], where & _ROW_MASK
        return CatalogEntry(key=key, url=block.shortlist.url(i), features=block.features(i))

    def add(self, key: str, features: ImageFeatures, *, url: str | None = None) -> None:
        """Add or replace the entry ``key``; its result URL is ``url`` or else the key.

        Raises
        ------
        ValueError
            ``features`` were extracted for seed scoring only: a catalog entry needs them all.
        """
        if features.seed_only:
            raise ValueError(
                f"the features of {key!r} were extracted for seed scoring only (scoring='seed'); "
                "index catalog images with extract_features(data, query=False)"
            )
        if features.detail_image is not None:  # only queries need it; don't hold 200 KB per entry
            features = replace(features, detail_image=None)
        with self._lock:
            self._retire(key)
            self._entries[key] = CatalogEntry(key=key, url=url or key, features=features)
            self._packed = None

    def add_segment(self, segment: Segment) -> None:
        """Add or replace every entry of ``segment`` (:class:`~harmony_image.segment.Segment`);
        its verification tier stays where the segment has it (mapped from its file)."""
        with self._lock:
            number = len(self._segments)
            for i, key in enumerate(segment.keys):
                self._retire(key)
                self._entries.pop(key, None)
                self._located[key] = number << 32 | i
            self._segments.append(segment.block)
            self._alive.append(np.ones(len(segment), dtype=bool))
            self._packed = None

    def remove(self, key: str) -> bool:
        """Remove ``key``; returns whether it was present."""
        with self._lock:
            found = self._entries.pop(key, None) is not None or self._retire(key)
            if found:
                self._packed = None
            return found

    def _retire(self, key: str) -> bool:
        """Mark a segment's entry ``key`` as no longer current; whether there was one."""
        where = self._located.pop(key, None)
        if where is None:
            return False
        self._alive[where >> 32][where & _ROW_MASK] = False
        return True

    def packed(self) -> PackedCatalog:
        with self._lock:
            if self._packed is None:
                block, viewed = build_block(sorted(self._entries.values(), key=lambda e: e.key))
                # segments' masks are copied: a packed catalog in use never changes
                self._packed = PackedCatalog([*self._segments, block], [*(a.copy() for a in self._alive), None])
                self._entries = {e.key: e for e in viewed}
            return self._packed

    def search(self, query: ImageFeatures, params: SearchParams = DEFAULT_PARAMS) -> list[SearchResult]:
        """The ``params.k`` best distinct catalog images for ``query`` (from
        :func:`~harmony_image.features.extract_features`), best first; see :class:`SearchParams`."""
        packed = self.packed()
        if len(packed) == 0:
            return []
        c = score_catalog(query, packed, scoring=params.scoring, k=params.k)
        return _rank(
            c.rows,
            c,
            lambda row: (packed.keys[row], packed.url(row), packed.sha256(row)),
            k=params.k,
            min_score=params.min_score,
        )

    def first_pass(self, query: ImageFeatures, *, k: int, mirror: ImageFeatures | None = None) -> Shortlist:
        """Phase 1 of a sharded ``default`` search for ``k`` results: this index's best rows by
        keypoint votes and by looks (:func:`~harmony_image.scoring.shortlist`). ``mirror``: the
        query's :func:`~harmony_image.scoring.mirrored` features, made here unless given."""
        packed = self.packed()
        if len(packed) == 0:
            return Shortlist((), FirstPass.concatenate([]))
        mirror = mirror or mirrored(query, detail=False)
        rows, first = shortlist(query, mirror, packed, shortlist_size(k))
        return Shortlist(tuple(packed.keys[r] for r in rows.tolist()), first)

    def verify(self, query: ImageFeatures, part: Shortlist, *, mirror: ImageFeatures | None = None) -> Verified:
        """Phase 2: the evidence for the rows of ``part`` that this index holds; keys it does not
        hold (another shard's, or removed since phase 1) are left out. ``part`` is the catalog's
        shortlist (:func:`merge_shortlists`) or this index's share of it: given the whole, the
        rows it refines and detail-verifies by their first-pass ranks are the whole's choice
        (:func:`~harmony_image.scoring.choices`), not its share's best. ``mirror``: the query's
        :func:`~harmony_image.scoring.mirrored` features with their detail features, made here
        (the detail ones only if detail verification runs) unless given."""
        packed = self.packed()
        found = [(row, i) for i, key in enumerate(part.keys) if (row := _row_of(packed, key)) is not None]
        found.sort()
        rows = np.array([row for row, _ in found], dtype=np.int64)
        mine = np.array([i for _, i in found], dtype=np.int64)
        with_detail: Future[ImageFeatures] | None = None
        if mirror is not None:
            with_detail = Future()
            with_detail.set_result(mirror)
        evidence = verify_shortlist(
            query,
            mirror or mirrored(query, detail=False),
            packed,
            rows,
            first=part.first.take(mine),
            mirror_with_detail=with_detail,
            whole=part.first,
            own=mine,
        )
        r = rows.tolist()
        return Verified(
            keys=tuple(packed.keys[i] for i in r),
            urls=tuple(packed.url(i) for i in r),
            sha256=tuple(packed.sha256(i) for i in r),
            evidence=evidence,
        )


def _row_of(packed: PackedCatalog, key: str) -> int | None:
    """The row of ``key`` (the rows are in key order), or None."""
    i = bisect_left(packed.keys, key)
    return i if i < len(packed.keys) and packed.keys[i] == key else None


def _key_order(keys: Iterable[str]) -> tuple[list[str], np.ndarray]:
    """``keys`` sorted with each one's first position (a repeated key: its first place only)."""
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    ordered = sorted(first)
    return ordered, np.array([first[key] for key in ordered], dtype=np.int64)


def merge_shortlists(parts: Iterable[Shortlist], *, k: int) -> Shortlist:
    """The catalog's shortlist for ``k`` results from its shards' :meth:`SearchIndex.first_pass`
    answers: the catalog's cut (:func:`~harmony_image.scoring.shortlist_cut`), ties by key —
    the rows one index over the whole catalog shortlists."""
    parts = list(parts)
    keys, at = _key_order(key for p in parts for key in p.keys)
    merged = Shortlist(tuple(keys), FirstPass.concatenate([p.first for p in parts]).take(at))
    return merged.take(shortlist_cut(merged.first, shortlist_size(k)))


def merge_verified(parts: Iterable[Verified], *, k: int, min_score: float | None = None) -> list[SearchResult]:
    """The ``k`` best distinct results from the shards' :meth:`SearchIndex.verify` answers for one
    shortlist (:func:`merge_shortlists`): detail choice, calibration and ranking over all of it
    (:func:`~harmony_image.scoring.decide`), as one index does."""
    parts = list(parts)
    described = [(key, url, sha) for p in parts for key, url, sha in zip(p.keys, p.urls, p.sha256, strict=True)]
    _, at = _key_order(d[0] for d in described)
    evidence = Evidence.concatenate([p.evidence for p in parts]).take(at)
    score, ssim, orb = decide(evidence)
    c = Candidates(rows=np.arange(len(at)), score=score, ssim=ssim, orb=orb)
    return _rank(c.rows, c, lambda i: described[int(at[i])], k=k, min_score=min_score)


def _rank(
    order_key: np.ndarray,
    c: Candidates,
    describe: Callable[[int], tuple[str, str, str]],
    *,
    k: int,
    min_score: float | None,
) -> list[SearchResult]:
    """The ``k`` best distinct of ``c``: best score first, ties by ``order_key`` (key order);
    ``describe(c.rows[i])`` is a row's key, URL and content hash."""
    order = np.lexsort((order_key, -c.score))

    def ranked() -> Iterator[SearchResult]:
        for i in order:
            if min_score is not None and c.score[i] < min_score:
                return
            key, url, sha256 = describe(int(c.rows[i]))
            yield SearchResult(
                key=key, url=url, score=float(c.score[i]), ssim=float(c.ssim[i]), orb=float(c.orb[i]), sha256=sha256
            )

    return _distinct(ranked(), k=k)


def merge_results(lists: Iterable[list[SearchResult]], *, k: int) -> list[SearchResult]:
    """The ``k`` best of several searches' results (one per shard of a catalog), best first,
    ties by key; a result whose URL or content hash an earlier one has is dropped before the
    cut, as :meth:`SearchIndex.search` does within one index."""
    return _distinct(sorted((r for results in lists for r in results), key=lambda r: (-r.score, r.key)), k=k)


def _distinct(ranked: Iterable[SearchResult], *, k: int) -> list[SearchResult]:
    """The first ``k`` of ``ranked`` whose URL and content hash no earlier one has."""
    seen_urls: set[str] = set()
    seen_hashes: set[str] = set()
    results: list[SearchResult] = []
    for r in ranked:
        if r.url in seen_urls or r.sha256 in seen_hashes:
            continue
        seen_urls.add(r.url)
        seen_hashes.add(r.sha256)
        results.append(r)
        if len(results) == k:
            break
    return results
