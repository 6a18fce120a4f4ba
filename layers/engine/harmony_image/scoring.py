"""Scoring a query against a packed catalog: ``seed`` (exact, exhaustive) and ``default``.

``seed`` — the original Harmony-Image score for every catalog image:
    ssim  = SSIM of the two 256x256 grayscales (scikit-image defaults)
    orb   = cross-checked Hamming brute-force matches / query keypoints
    score = (ssim + orb) / 2

``default`` — a cheap first pass over the whole catalog shortlists candidates (global
thumbnail correlation, with the query mirrored too), then each candidate gets the seed's
score for the query and for its mirror image, keeping the better. See docs/SCORING.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .features import ImageFeatures, seed_orb, thumbnail
from .kernels import DescriptorPack, cross_check_counts, ssim_scores

if TYPE_CHECKING:
    from .index import PackedCatalog

SCORINGS = ("default", "seed")
SHORTLIST_MIN = 64
SHORTLIST_PER_RESULT = 8


@dataclass(frozen=True)
class Candidates:
    """Scores of some catalog rows (indices into the packed catalog)."""

    rows: np.ndarray
    score: np.ndarray
    ssim: np.ndarray
    orb: np.ndarray


def orb_ratio(matches: np.ndarray, query_keypoints: int) -> np.ndarray:
    """The seed's ORB score: matches over query keypoints (0 when the query has none)."""
    if query_keypoints == 0:
        return np.zeros(matches.shape, dtype=np.float64)
    return matches.astype(np.float64) / query_keypoints


def seed_candidates(query: ImageFeatures, packed: "PackedCatalog", rows: np.ndarray | None = None) -> Candidates:
    """The exact seed score of ``query`` against ``rows`` of the catalog (all rows if None)."""
    if rows is None:
        rows = np.arange(len(packed))
        grays, descriptors = packed.grays, packed.descriptors
    else:
        grays = packed.grays[rows]
        descriptors = DescriptorPack([packed.descriptors_of(int(r)) for r in rows]) if len(rows) else DescriptorPack([])
    ssim = ssim_scores(query.gray, grays)
    orb = orb_ratio(cross_check_counts(query.descriptors, descriptors), query.keypoint_count)
    return Candidates(rows=rows, score=(ssim + orb) / 2.0, ssim=ssim, orb=orb)


def mirrored(query: ImageFeatures) -> ImageFeatures:
    """The query flipped left-right, with its features recomputed."""
    gray = np.ascontiguousarray(query.gray[:, ::-1])
    keypoints, descriptors = seed_orb(gray)
    return ImageFeatures(
        sha256=query.sha256,
        width=query.width,
        height=query.height,
        gray=gray,
        keypoints=keypoints,
        descriptors=descriptors,
        thumb=thumbnail(gray),
    )


def shortlist(query: ImageFeatures, mirror: ImageFeatures, packed: "PackedCatalog", size: int) -> np.ndarray:
    """Rows of the ``size`` catalog images whose thumbnails correlate best with the query or its mirror."""
    similarity = np.maximum(packed.thumbs @ query.thumb, packed.thumbs @ mirror.thumb)
    if size >= len(similarity):
        return np.arange(len(similarity))
    rows = np.argpartition(-similarity, size - 1)[:size]
    return np.sort(rows)


def default_candidates(query: ImageFeatures, packed: "PackedCatalog", *, k: int) -> Candidates:
    mirror = mirrored(query)
    rows = shortlist(query, mirror, packed, max(SHORTLIST_MIN, SHORTLIST_PER_RESULT * k))
    direct = seed_candidates(query, packed, rows)
    flipped = seed_candidates(mirror, packed, rows)
    use_flip = flipped.score > direct.score
    return Candidates(
        rows=rows,
        score=np.where(use_flip, flipped.score, direct.score),
        ssim=np.where(use_flip, flipped.ssim, direct.ssim),
        orb=np.where(use_flip, flipped.orb, direct.orb),
    )


def score_catalog(query: ImageFeatures, packed: "PackedCatalog", *, scoring: str, k: int) -> Candidates:
    if scoring == "seed":
        return seed_candidates(query, packed)
    return default_candidates(query, packed, k=k)
