"""The catalog packed for batch scoring: every entry's arrays, in one order.

:class:`~harmony_image.index.SearchIndex` builds one lazily after changes; the scoring functions
read only this.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .features import HUE_BINS, ImageFeatures
from .kernels import DescriptorPack

VOTE_DESCRIPTORS = 96
"""Catalog descriptors per image that take part in the shortlist's keypoint vote."""


@dataclass(frozen=True)
class CatalogEntry:
    key: str
    url: str
    features: ImageFeatures


def subsample(descriptors: np.ndarray, count: int) -> np.ndarray:
    """At most ``count`` rows, evenly spread over the (scale-ordered) ORB descriptors."""
    if len(descriptors) <= count:
        return descriptors
    rows: np.ndarray = descriptors[np.linspace(0, len(descriptors) - 1, count).astype(int)]
    return rows


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
        return int(
            self.grays.nbytes + self.thumbs.nbytes + keypoints + sum(p.planes.nbytes + p.offsets.nbytes for p in packs)
        )
