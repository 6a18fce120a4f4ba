"""The in-memory search index: catalog entries, packed for batch scoring, and ranking.

Entries are keyed by their catalog key (a path or S3 key). Adding, replacing and removing are
cheap; the packed arrays that scoring reads are rebuilt lazily on the next search.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from .features import ImageFeatures
from .packed import CatalogEntry, PackedCatalog
from .params import SearchParams
from .scoring import Candidates, score_catalog

DEFAULT_PARAMS = SearchParams()


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
    """Catalog entries and search over them. Thread-safe for concurrent searches and updates."""

    def __init__(self) -> None:
        self._entries: dict[str, CatalogEntry] = {}
        self._packed: PackedCatalog | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def keys(self) -> list[str]:
        return list(self._entries)

    def get(self, key: str) -> CatalogEntry | None:
        return self._entries.get(key)

    def add(self, key: str, features: ImageFeatures, *, url: str | None = None) -> None:
        """Add or replace the entry ``key``; its result URL is ``url`` or else the key."""
        if features.detail_image is not None:  # only queries need it; don't hold 200 KB per entry
            features = replace(features, detail_image=None)
        with self._lock:
            self._entries[key] = CatalogEntry(key=key, url=url or key, features=features)
            self._packed = None

    def remove(self, key: str) -> bool:
        """Remove ``key``; returns whether it was present."""
        with self._lock:
            found = self._entries.pop(key, None) is not None
            if found:
                self._packed = None
            return found

    def packed(self) -> PackedCatalog:
        with self._lock:
            if self._packed is None:
                self._packed = PackedCatalog(sorted(self._entries.values(), key=lambda e: e.key))
                self._entries = {e.key: e for e in self._packed.entries}
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
    seen_urls: set[str] = set()
    seen_hashes: set[str] = set()
    results: list[SearchResult] = []
    for i in order:
        if min_score is not None and c.score[i] < min_score:
            break
        entry = packed.entries[int(c.rows[i])]
        if entry.url in seen_urls or entry.features.sha256 in seen_hashes:
            continue
        seen_urls.add(entry.url)
        seen_hashes.add(entry.features.sha256)
        results.append(
            SearchResult(
                key=entry.key,
                url=entry.url,
                score=float(c.score[i]),
                ssim=float(c.ssim[i]),
                orb=float(c.orb[i]),
                sha256=entry.features.sha256,
            )
        )
        if len(results) == k:
            break
    return results
