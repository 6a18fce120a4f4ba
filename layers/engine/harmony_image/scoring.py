"""Scoring a query against a packed catalog: ``seed`` (exact, exhaustive) and ``default``.

``seed`` — the original Harmony-Image score, for every catalog image:
    ssim  = SSIM of the two 256x256 grayscales (scikit-image defaults)
    orb   = cross-checked Hamming brute-force matches / query keypoints
    score = (ssim + orb) / 2

``default`` — shortlist, then verify (docs/SCORING.md has the reasoning and measurements):

1. Shortlist: every catalog image gets two cheap votes — how many of (a subsample of) the
   query's ORB descriptors have a near neighbour (<= 50 bits) among a subsample of the image's,
   and how well 32x32 thumbnails correlate — both for the query and its mirror image. The best
   few dozen by either vote go on.
2. Verify each candidate, for the query and its mirror: ORB matches that pass Lowe's ratio
   test, then a RANSAC affine fit; the number of inliers is geometric evidence that the two
   images show the same thing, robust to crops, padding, overlays and rotation. SSIM of the
   256x256 grayscales (the seed's) is evidence of a near-identical copy.
3. Calibrate: ``evidence = max(inlier term, SSIM term)`` in [0, 1]; the score is
   ``evidence + (1 - evidence) * 0.3 * seed_score``, so images without evidence still rank by
   the seed's score but stay below 0.3. A score >= :data:`SAME_IMAGE_THRESHOLD` means "the same
   image or a copy of it".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .features import ImageFeatures, seed_orb, thumbnail
from .kernels import DescriptorPack, count_close, cross_check_counts, nearest_two, ssim_scores

if TYPE_CHECKING:
    from .index import PackedCatalog

SCORINGS = ("default", "seed")

VOTE_DESCRIPTORS = 96
VOTE_QUERY_DESCRIPTORS = 200
VOTE_THRESHOLD = 50
SHORTLIST_MIN = 24
SHORTLIST_PER_RESULT = 4
RATIO = 0.8
MAX_MATCH_DISTANCE = 64
RANSAC_THRESHOLD = 4.0
INLIER_FLOOR = 8.0
INLIER_SCALE = 12.0
SSIM_FLOOR = 0.85
SSIM_SPAN = 0.12
PRIOR_WEIGHT = 0.3
SAME_IMAGE_THRESHOLD = 0.5


@dataclass(frozen=True)
class Candidates:
    """Scores of some catalog rows (indices into the packed catalog)."""

    rows: np.ndarray
    score: np.ndarray
    ssim: np.ndarray
    orb: np.ndarray


def subsample(descriptors: np.ndarray, count: int) -> np.ndarray:
    """At most ``count`` rows, evenly spread over the (scale-ordered) ORB descriptors."""
    if len(descriptors) <= count:
        return descriptors
    return descriptors[np.linspace(0, len(descriptors) - 1, count).astype(int)]


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
        descriptors = DescriptorPack([packed.descriptors_of(int(r)) for r in rows])
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
    """Sorted rows of up to ``2 * size`` candidates: the best ``size`` by keypoint votes and by thumbnails."""
    n = len(packed)
    if size >= n:
        return np.arange(n)
    votes = np.maximum(
        count_close(subsample(query.descriptors, VOTE_QUERY_DESCRIPTORS), packed.vote_descriptors, VOTE_THRESHOLD),
        count_close(subsample(mirror.descriptors, VOTE_QUERY_DESCRIPTORS), packed.vote_descriptors, VOTE_THRESHOLD),
    )
    looks = np.maximum(packed.thumbs @ query.thumb, packed.thumbs @ mirror.thumb)
    by_votes = np.argpartition(-votes, size - 1)[:size]
    by_looks = np.argpartition(-looks, size - 1)[:size]
    return np.union1d(by_votes, by_looks)


def verified_inliers(query: ImageFeatures, keypoints: np.ndarray, planes: np.ndarray) -> int:
    """Ratio-test ORB matches that agree with one RANSAC affine transform."""
    if query.keypoint_count < 3 or planes.shape[1] < 3:
        return 0
    idx, d1, d2 = nearest_two(query.descriptors, planes)
    good = (d1.astype(np.float32) < RATIO * d2) & (d1 <= MAX_MATCH_DISTANCE)
    if np.count_nonzero(good) < 4:
        return 0
    _, mask = cv2.estimateAffine2D(
        query.keypoints[good], keypoints[idx[good]], method=cv2.RANSAC, ransacReprojThreshold=RANSAC_THRESHOLD
    )
    return 0 if mask is None else int(mask.sum())


def calibrated(inliers: np.ndarray, ssim: np.ndarray, seed_score: np.ndarray) -> np.ndarray:
    """Score in [0, 1]; >= SAME_IMAGE_THRESHOLD means the same image or a copy."""
    geometric = 1.0 - np.exp(-np.maximum(0.0, inliers - INLIER_FLOOR) / INLIER_SCALE)
    structural = np.clip((ssim - SSIM_FLOOR) / SSIM_SPAN, 0.0, 1.0)
    evidence = np.maximum(geometric, structural)
    return evidence + (1.0 - evidence) * PRIOR_WEIGHT * np.clip(seed_score, 0.0, 1.0)


def default_candidates(query: ImageFeatures, packed: "PackedCatalog", *, k: int) -> Candidates:
    mirror = mirrored(query)
    rows = shortlist(query, mirror, packed, max(SHORTLIST_MIN, SHORTLIST_PER_RESULT * k))
    direct = seed_candidates(query, packed, rows)
    flipped = seed_candidates(mirror, packed, rows)
    inliers = np.zeros(len(rows))
    flipped_inliers = np.zeros(len(rows))
    for i, row in enumerate(rows):
        planes = packed.descriptors.words(int(row))
        keypoints = packed.entries[int(row)].features.keypoints
        inliers[i] = verified_inliers(query, keypoints, planes)
        flipped_inliers[i] = verified_inliers(mirror, keypoints, planes)
    score_direct = calibrated(inliers, direct.ssim, direct.score)
    score_flipped = calibrated(flipped_inliers, flipped.ssim, flipped.score)
    use_flip = score_flipped > score_direct
    return Candidates(
        rows=rows,
        score=np.where(use_flip, score_flipped, score_direct),
        ssim=np.where(use_flip, flipped.ssim, direct.ssim),
        orb=np.where(use_flip, flipped.orb, direct.orb),
    )


def score_catalog(query: ImageFeatures, packed: "PackedCatalog", *, scoring: str, k: int) -> Candidates:
    if scoring == "seed":
        return seed_candidates(query, packed)
    return default_candidates(query, packed, k=k)
