"""The search index: catalog entries, packed for batch scoring, and ranking.

Entries are keyed by their catalog key (a path or S3 key). Adding, replacing and removing are
cheap; the packed arrays that scoring reads are rebuilt lazily on the next search (a segment's
arrays are used where they are, not copied).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from .features import ImageFeatures
from .packed import Block, CatalogEntry, PackedCatalog, build_block
from .params import SearchParams
from .scoring import Candidates, score_catalog
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
        """Add or replace the entry ``key``; its result URL is ``url`` or else the key."""
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
        candidates = score_catalog(query, packed, scoring=params.scoring, k=params.k)
        return _rank(packed, candidates, k=params.k, min_score=params.min_score)


def _rank(packed: PackedCatalog, c: Candidates, *, k: int, min_score: float | None) -> list[SearchResult]:
    order = np.lexsort((c.rows, -c.score))  # best score first; ties by catalog order (key)

    def ranked() -> Iterator[SearchResult]:
        for i in order:
            if min_score is not None and c.score[i] < min_score:
                return
            row = int(c.rows[i])
            yield SearchResult(
                key=packed.keys[row],
                url=packed.url(row),
                score=float(c.score[i]),
                ssim=float(c.ssim[i]),
                orb=float(c.orb[i]),
                sha256=packed.sha256(row),
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
