"""The in-memory search index: catalog entries, packed for batch scoring, and ranking.

Entries are keyed by their catalog key (a path or S3 key). Adding, replacing and removing are
cheap; the packed arrays that scoring reads are rebuilt lazily on the next search.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, replace

import numpy as np

from .features import HUE_BINS, ImageFeatures
from .kernels import DescriptorPack
from .scoring import SCORINGS, VOTE_DESCRIPTORS, Candidates, score_catalog, subsample

DEFAULT_K = 5
MAX_K = 50


@dataclass(frozen=True)
class CatalogEntry:
    key: str
    url: str
    features: ImageFeatures


@dataclass(frozen=True)
class SearchResult:
    key: str
    url: str
    score: float
    ssim: float
    orb: float
    sha256: str

    def to_dict(self) -> dict:
        return asdict(self)


class PackedCatalog:
    """Arrays over all entries, in one order, as the scoring functions read them."""

    def __init__(self, entries: list[CatalogEntry]) -> None:
        n = len(entries)
        self.grays = np.empty((n, 256, 256), dtype=np.uint8)
        self.thumbs = np.empty((n, entries[0].features.thumb.size if n else 0), dtype=np.float32)
        self.colours = np.zeros((n, HUE_BINS + 1), dtype=np.float32)
        for i, entry in enumerate(entries):
            self.grays[i] = entry.features.gray
            self.thumbs[i] = entry.features.thumb
            self.colours[i] = entry.features.colours
        # The entries' grayscales and thumbnails become views into the packed arrays, so the
        # largest feature (64 KB of ~100 KB per image) is held once, not twice.
        self.entries = [
            replace(e, features=replace(e.features, gray=self.grays[i], thumb=self.thumbs[i]))
            for i, e in enumerate(entries)
        ]
        self._descriptor_sets = [e.features.descriptors for e in entries]
        self.descriptors = DescriptorPack(self._descriptor_sets)
        self.vote_descriptors = DescriptorPack([subsample(d, VOTE_DESCRIPTORS) for d in self._descriptor_sets])

    def __len__(self) -> int:
        return len(self.entries)

    def descriptors_of(self, row: int) -> np.ndarray:
        return self._descriptor_sets[row]

    def detail_planes(self, row: int) -> np.ndarray:
        """Row's detail descriptors as (4, n) uint64 planes (built on demand: few rows need them)."""
        descriptors = self.entries[row].features.detail_descriptors
        return np.ascontiguousarray(np.ascontiguousarray(descriptors).view(np.uint64).reshape(-1, 4).T)

    @property
    def nbytes(self) -> int:
        packs = (self.descriptors, self.vote_descriptors)
        keypoints = sum(
            e.features.keypoints.nbytes + e.features.detail_keypoints.nbytes + e.features.detail_descriptors.nbytes
            for e in self.entries
        )
        return int(self.grays.nbytes + self.thumbs.nbytes + keypoints + sum(p.planes.nbytes + p.offsets.nbytes for p in packs))


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

    def search(
        self,
        query: ImageFeatures,
        *,
        k: int = DEFAULT_K,
        scoring: str = "default",
        min_score: float | None = None,
    ) -> list[SearchResult]:
        """The ``k`` best distinct catalog images for ``query``, best first.

        Parameters
        ----------
        query : ImageFeatures
            From :func:`harmony_image.features.extract_features`.
        k : int
            Number of results, 1 to 50. Entries sharing a URL or a content hash count once,
            and duplicates are dropped before the cut, so ``k`` results come back whenever the
            catalog holds ``k`` distinct images.
        scoring : {"default", "seed"}
            ``seed`` is the original Harmony-Image score, computed exactly for every catalog
            image: the mean of SSIM and the cross-checked ORB match ratio. ``default`` ranks
            better (see docs/SCORING.md) and is faster on large catalogs.
        min_score : float, optional
            Drop results scoring below this value (0 to 1).
        """
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k must be between 1 and {MAX_K}; got {k}")
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {', '.join(SCORINGS)}; got {scoring!r}")
        packed = self.packed()
        if len(packed) == 0:
            return []
        candidates = score_catalog(query, packed, scoring=scoring, k=k)
        return _rank(packed, candidates, k=k, min_score=min_score)


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
