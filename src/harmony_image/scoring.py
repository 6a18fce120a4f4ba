"""Scoring a query against a packed catalog: ``seed`` (exact, exhaustive) and ``default``.

``seed`` — the original Harmony-Image score, for every catalog image:
    ssim  = SSIM of the two 256x256 grayscales (scikit-image defaults)
    orb   = cross-checked Hamming brute-force matches / query keypoints
    score = (ssim + orb) / 2

``default`` — shortlist, then verify (docs/SCORING.md has the reasoning and measurements):

1. Shortlist: every catalog image gets three cheap votes — how many of (a subsample of) the
   query's ORB descriptors have a near neighbour (<= 50 bits) among a subsample of the image's,
   at 256 px (query or mirror) and at 512 px (the query's detail: small copies), and how well
   32x32 thumbnails correlate (query or mirror). The best few dozen by each vote go on.
2. Verify each candidate, for the query and its mirror: ORB matches that pass Lowe's ratio
   test, then a RANSAC affine fit; the number of inliers is geometric evidence that the two
   images show the same thing, robust to crops, padding, overlays and rotation. SSIM of the
   256x256 grayscales (the seed's) is evidence of a near-identical copy.
3. Calibrate: ``evidence = max(inlier term, SSIM term)`` in [0, 1]; the score is
   ``evidence + (1 - evidence) * 0.3 * seed_score``, so images without evidence still rank by
   the seed's score but stay below 0.3. A score >= :data:`SAME_IMAGE_THRESHOLD` means "the same
   image or a copy of it".
4. Colour: all evidence above is grayscale. The hues of the part of the query where the catalog
   image lies (where the fit maps its frame) are compared with the catalog image's: a small
   difference breaks ties; an outright one (another colourway) makes it a look-alike, scored
   below the copy threshold. Nearly gray images have no say.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace

import cv2
import numpy as np

from .features import (
    COLOUR_GRID,
    DETAIL_SIDE,
    SEED_SIDE,
    ImageFeatures,
    detail_orb,
    detail_size,
    features_from_images,
    region_colours,
)
from .kernels import (
    DescriptorPack,
    cross_check_counts,
    map_threads,
    match_two,
    nearest_two,
    ssim_pair,
    ssim_scores,
)
from .packed import PackedCatalog, subsample
from .params import Scoring
from .regions import NO_MATCH, QueryRegions, RegionMatch, query_regions, refine, refine_crop

VOTE_QUERY_DESCRIPTORS = 200
"""Query descriptors that vote: a subsample of the 256 px ORB's, the query's and its mirror's.
A third vote, by :data:`DETAIL_VOTE_DESCRIPTORS` of the query's 512 px detail ORB, finds small
copies: one filling a third of the query is, in the query's detail image, at about the scale of
the catalog's 256 px image (issue 13)."""
DETAIL_VOTE_DESCRIPTORS = 100
"""Query detail descriptors that vote (the third vote). 200 found 2 more of 40 small copies on
a 1,000-image catalog of real photos but made the first pass cost 1.7x instead of 1.35x, which
put a 10,000-image query past issue 13's 1.5x budget (docs/SCORING.md)."""
DETAIL_VOTE_ROWS = 12
"""Rows the third vote shortlists, whatever ``k``: it is there for small copies, and every row it
adds is verified in both views."""
REGION_ROWS = 12
"""Rows the region looks (:mod:`~harmony_image.regions`) shortlist, whatever ``k``: small copies
with too few keypoints for the votes."""
CROP_ROWS = 8
"""Rows the crop looks (:mod:`~harmony_image.regions`) shortlist, whatever ``k``: heavy crops
with too few keypoints for the votes (measured on the benchmark: each ranked among the first four)."""
CROP_CANDIDATES = 3
"""Shortlisted rows the query is placed in (the best by crop look above :data:`CROP_LOOK_FLOOR`,
while the 256 px evidence is short of certain)."""
CROP_LOOK_FLOOR = 0.8
"""Crop looks below this are not placed: heavy crops of smooth images, which keypoints miss,
measured at 0.89-1.0 (textured ones as low as 0.49 are found by keypoints)."""
CROP_FLOOR = 0.3
CROP_SPAN = 0.25
"""Detail agreement of the query placed in a catalog image (:func:`~harmony_image.regions.refine_crop`):
CROP_FLOOR counts for nothing, CROP_FLOOR + CROP_SPAN and above is full evidence of a copy.
Lower than :data:`REGION_FLOOR`: a heavy crop under JPEG quality 40 keeps less detail. Measured
on the benchmark's 1,000-image catalog: heavy crops 0.32-0.84, other images placed at most 0.26
(docs/SCORING.md)."""
REGION_CANDIDATES = 4
"""Shortlisted rows whose best window is refined (the best by region look above
:data:`REGION_LOOK_FLOOR`, while the 256 px evidence is short of certain)."""
REGION_LOOK_FLOOR = 0.8
"""Region looks below this are not refined: copies measured at 0.81-1.0, most other images
below 0.8 (docs/SCORING.md)."""
REGION_MATCH_FLOOR = 0.85
"""A refined window whose grayscale correlates below this with the catalog image is no match."""
REGION_FLOOR = 0.35
REGION_SPAN = 0.25
"""Detail agreement (:attr:`~harmony_image.regions.RegionMatch.detail`) of a matched region:
REGION_FLOOR counts for nothing, REGION_FLOOR + REGION_SPAN and above is full evidence of a copy
(:func:`calibrated`). Measured on the benchmark's 1,000-image catalog: small copies 0.35-0.88,
the other images refined at most 0.34."""
VOTE_THRESHOLD = 50
SHORTLIST_MIN = 24
SHORTLIST_BASE = 12
SHORTLIST_PER_RESULT = 1
RATIO = 0.8
MAX_MATCH_DISTANCE = 64
RANSAC_THRESHOLD = 4.0
RANSAC_ITERATIONS = 400
MAX_RANSAC_MATCHES = 100
MIN_AREA_SCALE = 1.0 / 16
MIN_INLIER_SPREAD = 8.0
DETAIL_RANSAC_THRESHOLD = 5.0 * DETAIL_SIDE / 512
INLIER_FLOOR = 8.0
INLIER_SCALE = 12.0
DETAIL_INLIER_FLOOR = 8.0
DETAIL_INLIER_SCALE = 10.0
DETAIL_CANDIDATES = 6
DETAIL_BY_LOOKS = 3
DETAIL_BY_VOTES = 6
DETAIL_BY_DETAIL_VOTES = 3
DETAIL_SKIP_ABOVE = 0.95
SSIM_FLOOR = 0.85
SSIM_SPAN = 0.12
PRIOR_WEIGHT = 0.3
SAME_IMAGE_THRESHOLD = 0.5
COLOURFUL = 0.12
COLOUR_TIEBREAK = 0.02
LOOKALIKE_AGREEMENT = 0.4
"""Below this hue agreement (:func:`colour_agreement`, 0-1) of the part of the query a catalog
image lies in with that image, both colourful, the two are colourways of one thing — a
look-alike, not a copy (docs/SCORING.md; the benchmark's colourway, recoloured and colour-cast
queries check both sides)."""
LOOKALIKE_CEILING = 0.45
"""A look-alike's score is scaled by this: below :data:`SAME_IMAGE_THRESHOLD`, above images
without evidence (< :data:`PRIOR_WEIGHT`) when its evidence was strong."""


_stage_times: ContextVar[dict[str, float] | None] = ContextVar("harmony_stage_times", default=None)


@contextmanager
def stage_times() -> Iterator[dict[str, float]]:
    """``with stage_times() as t:`` — milliseconds per stage of the scorings run in the block,
    summed over calls (the benchmark's profile). Off otherwise: one context lookup per stage."""
    times: dict[str, float] = {}
    token = _stage_times.set(times)
    try:
        yield times
    finally:
        _stage_times.reset(token)


class _Clock:
    """Laps of wall-clock time into the active :func:`stage_times`, if any."""

    def __init__(self) -> None:
        self.times = _stage_times.get()
        self.start = time.perf_counter() if self.times is not None else 0.0

    def lap(self, stage: str) -> None:
        if self.times is not None:
            now = time.perf_counter()
            self.times[stage] = self.times.get(stage, 0.0) + (now - self.start) * 1000.0
            self.start = now


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


def seed_candidates(
    query: ImageFeatures,
    packed: PackedCatalog,
    rows: np.ndarray | None = None,
    *,
    subset: tuple[np.ndarray, DescriptorPack] | None = None,
) -> Candidates:
    """The exact seed score of ``query`` against ``rows`` of the catalog (all rows if None).
    ``subset`` is :func:`catalog_subset` of those rows, when the caller scores several queries."""
    if rows is None:  # every row: the whole verification tier, block by block
        rows = np.arange(len(packed))
        ssim, counts = packed.seed_scores(query.gray, query.descriptors)
    else:
        grays, descriptors = subset if subset is not None else catalog_subset(packed, rows)
        ssim, counts = ssim_scores(query.gray, grays), cross_check_counts(query.descriptors, descriptors)
    orb = orb_ratio(counts, query.keypoint_count)
    return Candidates(rows=rows, score=(ssim + orb) / 2.0, ssim=ssim, orb=orb)


def catalog_subset(packed: PackedCatalog, rows: np.ndarray) -> tuple[np.ndarray, DescriptorPack]:
    """The grayscales and packed seed descriptors of ``rows``, as the seed kernels read them."""
    return packed.gather(rows)


def shortlist_size(k: int) -> int:
    """Rows the first pass keeps by votes and by looks for ``k`` results: 24 up to k = 12, then
    one more per result. It was max(24, 4k): at k = 50 default scoring verified ~400 of 1,000
    rows in both views (and detail-verified the best 50) and cost 1.5-3x the exhaustive seed
    scoring. Measured on the benchmark's two 1,000-image catalogs for k = 10-50: every answer
    found at the same or a better rank, the same copies, fewer unrelated images scored >= 0.5
    (commit message and docs/BENCHMARKS.md)."""
    return max(SHORTLIST_MIN, SHORTLIST_BASE + SHORTLIST_PER_RESULT * k)


def shortlist_rows(k: int) -> int:
    """The most rows :func:`shortlist_cut` keeps for ``k`` results (each vote's best, none in
    common)."""
    return 2 * shortlist_size(k) + DETAIL_VOTE_ROWS + REGION_ROWS + CROP_ROWS


def mirrored(query: ImageFeatures, *, detail: bool = True) -> ImageFeatures:
    """The query flipped left-right, with its features recomputed.

    Detail features are recomputed only when the query kept its detail image (queries do,
    stored records do not) and ``detail`` is set; otherwise the mirror has none
    (:func:`mirror_detail` adds them later).
    """
    mirror = features_from_images(
        np.ascontiguousarray(query.gray[:, ::-1]),
        None,
        query.colours,  # a hue histogram does not change with a flip
        sha256=query.sha256,
        width=query.width,
        height=query.height,
    )
    return mirror_detail(mirror, query) if detail else mirror


def mirror_detail(mirror: ImageFeatures, query: ImageFeatures) -> ImageFeatures:
    """``mirror`` (of ``query``) with the detail features of the flipped detail image."""
    if query.detail_image is None:
        return mirror
    image = np.ascontiguousarray(query.detail_image[:, ::-1])
    keypoints, descriptors = detail_orb(image)
    return replace(mirror, detail_keypoints=keypoints, detail_descriptors=descriptors, detail_image=image)


def look_scores(query: ImageFeatures, mirror: ImageFeatures, packed: PackedCatalog) -> np.ndarray:
    """Thumbnail correlation of every catalog row with the query or its mirror, the better."""
    return packed.look_scores(query.thumb, mirror.thumb)


def best_rows(values: np.ndarray, size: int) -> np.ndarray:
    """Positions of the ``size`` largest ``values`` (NaN counts as smallest), unordered; among
    equal values at the cut, the first positions. The catalog's rows are in key order, so this
    cut is the same whether one index or the shards of a catalog make it (shard fan-out: each
    shard's cut, then the cut of their union)."""
    n = len(values)
    if size >= n:
        return np.arange(n)
    if size <= 0:
        return np.zeros(0, dtype=np.intp)
    ranked = -np.nan_to_num(values.astype(np.float64), nan=-np.inf)
    kth = np.partition(ranked, size - 1)[size - 1]
    above = np.flatnonzero(ranked < kth)
    tied = np.flatnonzero(ranked == kth)[: size - len(above)]
    return np.concatenate([above, tied])


@dataclass(frozen=True)
class FirstPass:
    """Per catalog row (or shortlisted row), the cheap votes of default scoring's first pass."""

    looks: np.ndarray
    """Thumbnail correlation, the better of the query's and its mirror's."""
    votes: np.ndarray
    """Query descriptors (256 px; the query's or its mirror's, the more) with a near neighbour
    among the row's vote descriptors."""
    detail_votes: np.ndarray
    """The same for the query's detail (512 px) descriptors."""
    regions: np.ndarray
    """Region look (:mod:`~harmony_image.regions`): the best correlation of the row's thumbnail
    with a window of the query or its mirror. Of every row of a shortlist (:func:`shortlist`); of
    a whole catalog (:func:`first_pass`), NaN where it cannot be among the best
    :data:`REGION_ROWS` (:meth:`~harmony_image.packed.PackedCatalog.region_looks`)."""
    crops: np.ndarray
    """Crop look (:mod:`~harmony_image.regions`): the best correlation of the query or its
    mirror with a window of the row's thumbnail."""

    def __len__(self) -> int:
        return len(self.looks)

    def take(self, positions: np.ndarray) -> FirstPass:
        return FirstPass(
            self.looks[positions],
            self.votes[positions],
            self.detail_votes[positions],
            self.regions[positions],
            self.crops[positions],
        )

    @staticmethod
    def concatenate(parts: list[FirstPass]) -> FirstPass:
        """The rows of ``parts``, one after the other (no part: no rows): looks and region looks
        as float64, votes as int64, whatever each part held (shards' answers arrive as JSON)."""

        def joined(field: str, dtype: type) -> np.ndarray:
            values: list[np.ndarray] = [np.asarray(getattr(p, field), dtype=dtype) for p in parts]
            whole: np.ndarray = np.concatenate(values or [np.zeros(0, dtype)])
            return whole

        return FirstPass(
            joined("looks", np.float64),
            joined("votes", np.int64),
            joined("detail_votes", np.int64),
            joined("regions", np.float64),
            joined("crops", np.float64),
        )


def first_pass(
    query: ImageFeatures,
    mirror: ImageFeatures,
    packed: PackedCatalog,
    *,
    clock: _Clock | None = None,
    looks: np.ndarray | None = None,
    regions: QueryRegions | None = None,
) -> FirstPass:
    """Every row's thumbnail correlation (``looks``: :func:`look_scores`, computed unless given),
    region looks (those that can be among the best :data:`REGION_ROWS`) and crop looks (of the
    query's ``regions``, computed unless given) and keypoint votes: the query's, its mirror's and
    its detail rows' in one pass (:class:`FirstPass`)."""
    clock = clock or _Clock()
    correlation = look_scores(query, mirror, packed) if looks is None else looks
    clock.lap("thumbnails")
    regions = regions or query_regions(query.gray)
    region_looks = packed.region_looks(regions, keep=REGION_ROWS)
    clock.lap("region looks")
    crop_looks = packed.crop_looks(regions)
    clock.lap("crop looks")
    counts = packed.vote_counts(
        [
            subsample(query.descriptors, VOTE_QUERY_DESCRIPTORS),
            subsample(mirror.descriptors, VOTE_QUERY_DESCRIPTORS),
            subsample(query.detail_descriptors, DETAIL_VOTE_DESCRIPTORS),
        ],
        VOTE_THRESHOLD,
    )
    votes, detail_votes = np.maximum(counts[:, 0], counts[:, 1]), counts[:, 2]
    clock.lap("votes")
    return FirstPass(correlation, votes, detail_votes, region_looks, crop_looks)


def shortlist_cut(first: FirstPass, size: int) -> np.ndarray:
    """Sorted positions of the best ``size`` by votes and by looks, the best
    :data:`DETAIL_VOTE_ROWS` by detail votes, the best :data:`REGION_ROWS` by region looks and
    the best :data:`CROP_ROWS` by crop looks (:func:`best_rows`: ties by position)."""
    by_each = [
        best_rows(first.votes, size),
        best_rows(first.looks, size),
        best_rows(first.detail_votes, DETAIL_VOTE_ROWS),
        best_rows(first.regions, REGION_ROWS),
        best_rows(first.crops, CROP_ROWS),
    ]
    return np.unique(np.concatenate(by_each))


def require_default_features(query: ImageFeatures) -> None:
    """Refuse a query extracted for seed scoring only (``extract_features(..., scoring="seed")``):
    default scoring reads its detail features and colours, which such a query lacks."""
    if query.seed_only:
        raise ValueError(
            "these query features were extracted for seed scoring only (extract_features(..., scoring='seed')); "
            "extract them with scoring='default' to search with default scoring"
        )


def shortlist(
    query: ImageFeatures,
    mirror: ImageFeatures,
    packed: PackedCatalog,
    size: int,
    *,
    clock: _Clock | None = None,
    looks: np.ndarray | None = None,
    regions: QueryRegions | None = None,
) -> tuple[np.ndarray, FirstPass]:
    """Sorted rows of up to ``2 * size + DETAIL_VOTE_ROWS + REGION_ROWS + CROP_ROWS`` candidates
    (:func:`first_pass`, :func:`shortlist_cut`) and their votes."""
    require_default_features(query)
    clock = clock or _Clock()
    regions = regions or query_regions(query.gray)
    first = first_pass(query, mirror, packed, clock=clock, looks=looks, regions=regions)
    rows = shortlist_cut(first, size)
    taken = first.take(rows)
    unseen = np.flatnonzero(np.isnan(taken.regions))  # shortlisted by another vote
    if len(unseen):
        taken.regions[unseen] = packed.region_looks_at(rows[unseen], regions)
    clock.lap("shortlist cut")
    return rows, taken


def verified_inliers(
    query_descriptors: np.ndarray,
    query_keypoints: np.ndarray,
    keypoints: np.ndarray,
    planes: np.ndarray,
    *,
    homography: bool = False,
    floor: float = 0.0,
) -> Fit:
    """The ratio-test ORB matches that agree with one RANSAC transform (affine, or a homography
    for detail features, where viewpoint changes show). No inliers, without fitting, when there
    are no more candidate matches than ``floor`` (fewer inliers than that count for nothing)."""
    if len(query_descriptors) < 4 or planes.shape[1] < 4:
        return _NO_FIT
    idx, d1, d2 = nearest_two(query_descriptors, planes)
    return fitted_inliers(query_keypoints, keypoints, idx, d1, d2, homography=homography, floor=floor)


@dataclass(frozen=True)
class Fit:
    """A RANSAC fit of query keypoints to a catalog image's: the inliers' query coordinates
    (m, 2) and the model mapping query to catalog coordinates (2x3 affine or 3x3 homography;
    None when nothing plausible fits)."""

    inliers: np.ndarray
    model: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.inliers)

    def catalog_box(self, width: float, height: float) -> tuple[float, float, float, float] | None:
        """Where the catalog image's ``width`` x ``height`` frame lies in the query: the
        bounding box (x0, y0, x1, y1) of its corners mapped back, in query coordinates; None
        without a model or when a corner maps to infinity."""
        if self.model is None:
            return None
        h = self.model if self.model.shape[0] == 3 else np.vstack([self.model, [0.0, 0.0, 1.0]])
        try:
            back = np.linalg.inv(h)
        except np.linalg.LinAlgError:
            return None
        corners = np.array([[0, 0, 1], [width, 0, 1], [width, height, 1], [0, height, 1]], dtype=np.float64)
        mapped = corners @ back.T
        if not (mapped[:, 2] > 1e-9).all():
            return None
        xy = mapped[:, :2] / mapped[:, 2:]
        (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)


_NO_FIT = Fit(np.zeros((0, 2), dtype=np.float32))


def fitted_inliers(
    query_keypoints: np.ndarray,
    keypoints: np.ndarray,
    idx: np.ndarray,
    d1: np.ndarray,
    d2: np.ndarray,
    *,
    homography: bool = False,
    floor: float = 0.0,
) -> Fit:
    """:func:`verified_inliers` from the query's nearest neighbours among ``keypoints``
    (:func:`~harmony_image.kernels.nearest_two`: index, smallest and second smallest distance)."""
    good = ratio_test(d1, d2)
    if np.count_nonzero(good) <= fit_floor(floor):
        return _NO_FIT
    return ransac_fit(query_keypoints, keypoints, idx, d1, good, homography=homography)


def ratio_test(d1: np.ndarray, d2: np.ndarray) -> np.ndarray:
    """Which nearest neighbours count as matches (any shape): Lowe's ratio test (:data:`RATIO`)
    and at most :data:`MAX_MATCH_DISTANCE` bits apart."""
    good: np.ndarray = (d1.astype(np.float32) < RATIO * d2) & (d1 <= MAX_MATCH_DISTANCE)
    return good


def fit_floor(floor: float) -> float:
    """:func:`fitted_inliers` fits nothing to this many matches or fewer (a transform needs at
    least 4, and fewer inliers than ``floor`` count for nothing)."""
    return max(4.0, floor)


def ransac_fit(
    query_keypoints: np.ndarray,
    keypoints: np.ndarray,
    idx: np.ndarray,
    d1: np.ndarray,
    good: np.ndarray,
    *,
    homography: bool = False,
) -> Fit:
    """The RANSAC fit of :func:`fitted_inliers` to the ``good`` matches (:func:`ratio_test`)."""
    # Closest first: RHO (PROSAC) samples in that order, and RANSAC time grows with matches
    # while the closest carry the signal.
    matches = np.flatnonzero(good)
    matches = matches[np.argsort(d1[matches], kind="stable")[:MAX_RANSAC_MATCHES]]
    src, dst = query_keypoints[matches], keypoints[idx[matches]]
    if homography:
        model, mask = cv2.findHomography(src, dst, cv2.RHO, DETAIL_RANSAC_THRESHOLD, maxIters=RANSAC_ITERATIONS)
    else:
        model, mask = cv2.estimateAffine2D(
            src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_THRESHOLD, maxIters=RANSAC_ITERATIONS
        )
    if model is None or mask is None:
        return _NO_FIT
    inliers: np.ndarray = src[mask.ravel() > 0]
    return Fit(inliers, model) if plausible(model, inliers) else _NO_FIT


def plausible(model: np.ndarray, inlier_points: np.ndarray) -> bool:
    """Reject transforms no copy or photo of the same thing produces, which RANSAC still fits
    to chance matches: mirror images (the mirrored query covers those), extreme scaling,
    points mapped behind the camera, and inliers bunched in one spot.

    The scale and orientation tests use the transform's local Jacobian at the inliers'
    centroid, which for a homography differs from its upper-left 2x2 block.
    """
    if not np.isfinite(model).all() or len(inlier_points) < 3:
        return False
    if float(inlier_points.std(axis=0).min()) < MIN_INLIER_SPREAD:
        return False
    h = model if model.shape[0] == 3 else np.vstack([model, [0.0, 0.0, 1.0]])
    w = inlier_points @ h[2, :2] + h[2, 2]
    if not (w > 0).all() and not (w < 0).all():
        return False
    x, y = inlier_points.mean(axis=0)
    wc = h[2, 0] * x + h[2, 1] * y + h[2, 2]
    u = (h[0, 0] * x + h[0, 1] * y + h[0, 2]) / wc
    v = (h[1, 0] * x + h[1, 1] * y + h[1, 2]) / wc
    jacobian = (h[:2, :2] - np.outer([u, v], h[2, :2])) / wc
    det = float(np.linalg.det(jacobian))
    return MIN_AREA_SCALE < det < 1.0 / MIN_AREA_SCALE


def region_evidence(region: np.ndarray) -> np.ndarray:
    """Evidence in [0, 1] of a matched region's detail agreement (:data:`REGION_FLOOR`, :data:`REGION_SPAN`)."""
    evidence: np.ndarray = np.clip((region - REGION_FLOOR) / REGION_SPAN, 0.0, 1.0)
    return evidence


def crop_evidence(crop: np.ndarray) -> np.ndarray:
    """Evidence in [0, 1] of a placed query's detail agreement (:data:`CROP_FLOOR`, :data:`CROP_SPAN`)."""
    evidence: np.ndarray = np.clip((crop - CROP_FLOOR) / CROP_SPAN, 0.0, 1.0)
    return evidence


def geometric_evidence(inliers: np.ndarray, detail_inliers: np.ndarray) -> np.ndarray:
    """Evidence in [0, 1] of the RANSAC inliers at 256 px and of the detail features."""
    evidence: np.ndarray = np.maximum(
        1.0 - np.exp(-np.maximum(0.0, inliers - INLIER_FLOOR) / INLIER_SCALE),
        1.0 - np.exp(-np.maximum(0.0, detail_inliers - DETAIL_INLIER_FLOOR) / DETAIL_INLIER_SCALE),
    )
    return evidence


def calibrated(
    inliers: np.ndarray,
    detail_inliers: np.ndarray,
    ssim: np.ndarray,
    seed_score: np.ndarray,
    region: np.ndarray | float = 0.0,
    crop: np.ndarray | float = 0.0,
) -> np.ndarray:
    """Score in [0, 1]; >= SAME_IMAGE_THRESHOLD means the same image or a copy."""
    geometric = geometric_evidence(inliers, detail_inliers)
    placed = np.maximum(region_evidence(np.asarray(region)), crop_evidence(np.asarray(crop)))
    structural = np.maximum(np.clip((ssim - SSIM_FLOOR) / SSIM_SPAN, 0.0, 1.0), placed)
    evidence = np.maximum(geometric, structural)
    score: np.ndarray = evidence + (1.0 - evidence) * PRIOR_WEIGHT * np.clip(seed_score, 0.0, 1.0)
    return score


def colour_agreement(colours: np.ndarray, catalog_colours: np.ndarray) -> np.ndarray:
    """Hue-histogram intersection in [0, 1] of ``colours`` (a query's
    :func:`~harmony_image.features.colour_signature`, or its rows') with each catalog row's;
    1 (no opinion) where either is nearly gray — a grayscale copy is still a copy."""
    colours = np.broadcast_to(colours, catalog_colours.shape)
    agreement = np.minimum(catalog_colours[:, :-1], colours[:, :-1]).sum(axis=1)
    neutral = (catalog_colours[:, -1] < COLOURFUL) | (colours[:, -1] < COLOURFUL)
    return np.where(neutral, 1.0, agreement)


def matched_colours(query: ImageFeatures, boxes: np.ndarray) -> np.ndarray:
    """Per row, the colour signature of the part of ``query`` the catalog image lies in
    (``boxes``: (n, 4) x0, y0, x1, y1 in the 256 px frame, NaN: not located), or of the whole
    query where it was not located or the query keeps no
    :func:`~harmony_image.features.colour_grid`."""
    out = np.repeat(query.colours[None, :], len(boxes), axis=0)
    if query.colour_cells is not None:
        # a box holding every cell's centre is the whole query: its own signature, exactly
        half_cell = SEED_SIDE / COLOUR_GRID / 2
        whole = (boxes[:, :2] <= half_cell).all(axis=1) & (boxes[:, 2:] >= SEED_SIDE - half_cell).all(axis=1)
        for i in np.flatnonzero(~np.isnan(boxes[:, 0]) & ~whole).tolist():
            x0, y0, x1, y1 = boxes[i].tolist()
            out[i] = region_colours(query.colour_cells, (x0, y0, x1, y1))
    return out


@dataclass(frozen=True)
class Evidence:
    """What default scoring's verification finds for some shortlisted rows, in key order: all a
    shard of a catalog returns for its part of the shortlist (:func:`verify_shortlist`), and all
    :func:`decide` needs. Per view arrays have shape (2, n): row 0 the query, row 1 its mirror."""

    first: FirstPass
    """(n,) the first pass's votes."""
    ssim: np.ndarray
    """(2, n) the seed's SSIM."""
    orb: np.ndarray
    """(2, n) the seed's ORB ratio."""
    inliers: np.ndarray
    """(2, n) RANSAC inliers at 256 px."""
    detail_inliers: np.ndarray
    """(2, n) RANSAC inliers of the detail features; 0 where not verified (:func:`choices`)."""
    colour: np.ndarray
    """(n,) :func:`colour_agreement` of the part of the query where the 256 px fit locates the
    catalog image (:func:`matched_colours`; the whole query where none does)."""
    detail_colour: np.ndarray
    """(n,) the same where the detail fit locates it; ``colour`` where it was not verified.
    :func:`decide` reads it only for the rows it chose for detail verification, so that a shard
    verifying more rows than the catalog's choice answers as one index does."""
    region: np.ndarray
    """(2, n) detail agreement of the refined region (:func:`~harmony_image.regions.refine`) in
    the view it was found in; 0 where not refined (:func:`choices`) or not matched
    (:data:`REGION_MATCH_FLOOR`)."""
    region_colour: np.ndarray
    """(n,) :func:`colour_agreement` of the refined region; ``colour`` where not refined."""
    crop: np.ndarray
    """(2, n) detail agreement of the query placed in the catalog image
    (:func:`~harmony_image.regions.refine_crop`) in the view it was placed in; 0 where not placed
    (:func:`choices`) or not matched (:data:`REGION_MATCH_FLOOR`)."""

    def __len__(self) -> int:
        return len(self.first)

    def take(self, order: np.ndarray) -> Evidence:
        """These rows in ``order`` (positions)."""
        return Evidence(
            first=self.first.take(order),
            ssim=self.ssim[:, order],
            orb=self.orb[:, order],
            inliers=self.inliers[:, order],
            detail_inliers=self.detail_inliers[:, order],
            colour=self.colour[order],
            detail_colour=self.detail_colour[order],
            region=self.region[:, order],
            region_colour=self.region_colour[order],
            crop=self.crop[:, order],
        )

    @staticmethod
    def concatenate(parts: list[Evidence]) -> Evidence:
        """The rows of ``parts``, one after the other (no part: no rows)."""
        if not parts:
            none, pairs = np.zeros(0), np.zeros((2, 0))
            return Evidence(FirstPass.concatenate([]), pairs, pairs, pairs, pairs, none, none, pairs, none, pairs)
        return Evidence(
            first=FirstPass.concatenate([p.first for p in parts]),
            ssim=np.concatenate([p.ssim for p in parts], axis=1),
            orb=np.concatenate([p.orb for p in parts], axis=1),
            inliers=np.concatenate([p.inliers for p in parts], axis=1),
            detail_inliers=np.concatenate([p.detail_inliers for p in parts], axis=1),
            colour=np.concatenate([p.colour for p in parts]),
            detail_colour=np.concatenate([p.detail_colour for p in parts]),
            region=np.concatenate([p.region for p in parts], axis=1),
            region_colour=np.concatenate([p.region_colour for p in parts]),
            crop=np.concatenate([p.crop for p in parts], axis=1),
        )


def _view_scores(
    e: Evidence,
    detail_inliers: np.ndarray | None = None,
    region: np.ndarray | None = None,
    crop: np.ndarray | None = None,
) -> np.ndarray:
    """(2, n) :func:`calibrated` scores of both views (without the evidence not given)."""
    seed = (e.ssim + e.orb) / 2.0
    none = np.zeros_like(e.inliers)
    detail_inliers, region, crop = (none if a is None else a for a in (detail_inliers, region, crop))
    return np.stack(
        [calibrated(e.inliers[v], detail_inliers[v], e.ssim[v], seed[v], region[v], crop[v]) for v in (0, 1)]
    )


@dataclass(frozen=True)
class Choices:
    """Positions of the rows that get the costly checks, from the 256 px evidence, only while it
    is short of certain. Each is a best-N by a per-row value, ties by position (key order). Those
    by first-pass values are cut over the whole shortlist (a shard is given it), so a shard
    chooses exactly the whole's choice among its rows; the best by 256 px score is cut over the
    rows at hand, so over a shard's part it holds the whole's choice among them and maybe more."""

    detail: list[int]
    """Detail verification (~1 ms per image and view): the best candidates so far, the
    best-looking ones (keypoint-poor images have no evidence yet) and the most voted (heavy
    crops: keypoints agree before a transform fits at 256 px; small copies: the query's detail
    keypoints agree)."""
    region: list[int]
    """Region refinement: the best :data:`REGION_CANDIDATES` by region look at or above
    :data:`REGION_LOOK_FLOOR`."""
    crop: list[int]
    """The query placed in the catalog image: the best :data:`CROP_CANDIDATES` by crop look at
    or above :data:`CROP_LOOK_FLOOR`."""


def choices(e: Evidence, *, whole: FirstPass | None = None, own: np.ndarray | None = None) -> Choices:
    """The :class:`Choices` of ``e``'s rows. ``whole`` is the first pass of the whole shortlist
    that ``e``'s rows are part of (a shard's share of a catalog's) and ``own`` each row's
    position in it; without them ``e`` is the whole shortlist."""
    if whole is None or own is None:
        whole, own = e.first, np.arange(len(e))
    at = {int(p): i for i, p in enumerate(own.tolist())}
    scores = _view_scores(e).max(axis=0)
    uncertain = scores < DETAIL_SKIP_ABOVE

    def best_in_whole(values: np.ndarray, count: int) -> list[int]:
        """Positions in ``e`` of the whole shortlist's best ``count`` by ``values`` that it holds."""
        return [at[p] for p in np.argsort(-values, kind="stable")[:count].tolist() if p in at]

    candidates = dict.fromkeys(
        [
            *np.argsort(-scores, kind="stable")[:DETAIL_CANDIDATES].tolist(),  # max(6, k) before issue 10
            *best_in_whole(whole.looks, DETAIL_BY_LOOKS),
            *best_in_whole(whole.votes, DETAIL_BY_VOTES),
            *best_in_whole(whole.detail_votes, DETAIL_BY_DETAIL_VOTES),
        ]
    )

    def looked(looks: np.ndarray, count: int, floor: float) -> list[int]:
        return [i for i in best_in_whole(looks, count) if looks[own[i]] >= floor and uncertain[i]]

    return Choices(
        detail=[i for i in candidates if uncertain[i]],
        region=looked(whole.regions, REGION_CANDIDATES, REGION_LOOK_FLOOR),
        crop=looked(whole.crops, CROP_CANDIDATES, CROP_LOOK_FLOOR),
    )


def decide(e: Evidence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score, SSIM and ORB ratio of each row of ``e`` (a whole shortlist, in key order): the
    better view's calibrated score with the detail, region and crop evidence of the rows of its
    :func:`choices` only, less the colour tie-break."""
    chosen = choices(e)
    verified, refined, placed = (np.zeros(len(e), dtype=bool) for _ in range(3))
    verified[chosen.detail], refined[chosen.region], placed[chosen.crop] = True, True, True
    detail_inliers = np.where(verified, e.detail_inliers, 0.0)
    region = np.where(refined, e.region, 0.0)
    scores = _view_scores(e, detail_inliers, region, np.where(placed, e.crop, 0.0))
    # All evidence above is grayscale: among equally strong candidates (two colourways of one
    # product), the one whose colours agree with the query's goes first; where the colours
    # disagree outright, it is another colourway — a look-alike, never "the same image". The
    # colours compared are where the strongest evidence puts the catalog image: the fit with
    # the most inliers, or the refined region when that is stronger than either fit.
    colour = np.where(detail_inliers.max(axis=0) > e.inliers.max(axis=0), e.detail_colour, e.colour)
    fitted = geometric_evidence(e.inliers, detail_inliers).max(axis=0)
    colour = np.where(refined & (region_evidence(region.max(axis=0)) > fitted), e.region_colour, colour)
    scores -= COLOUR_TIEBREAK * (1.0 - colour)
    np.clip(scores, 0.0, 1.0, out=scores)
    scores[:, colour < LOOKALIKE_AGREEMENT] *= LOOKALIKE_CEILING
    use_flip = scores[1] > scores[0]
    return (
        np.where(use_flip, scores[1], scores[0]),
        np.where(use_flip, e.ssim[1], e.ssim[0]),
        np.where(use_flip, e.orb[1], e.orb[0]),
    )


# One background thread for the query's region windows (beside the mirror's 256 px ORB) and the
# mirror image's 512 px ORB: that does not depend on the first pass or on 256 px verification, so
# it runs beside them (OpenCV releases the GIL); its result is waited for only when detail
# verification starts.
_background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="harmony-mirror")


def verify_shortlist(
    query: ImageFeatures,
    mirror: ImageFeatures,
    packed: PackedCatalog,
    rows: np.ndarray,
    *,
    first: FirstPass,
    mirror_with_detail: Future[ImageFeatures] | None = None,
    regions: QueryRegions | None = None,
    whole: FirstPass | None = None,
    own: np.ndarray | None = None,
    clock: _Clock | None = None,
) -> Evidence:
    """The :class:`Evidence` of ``rows`` (sorted) for ``query`` and its ``mirror`` (without
    detail features: ``mirror_with_detail`` brings them, else they are computed here), with
    their votes from the ``first`` pass. Detail verification runs for the
    :func:`choices` of these rows, and region refinement and crop placement (of the query's ``regions``,
    computed unless given) for theirs: for one index those are the choices
    :func:`decide` makes; for a shard's part of a catalog's shortlist (``shortlist`` the whole
    first pass ``whole``, ``own`` the rows' positions in it), at least its share of them."""
    require_default_features(query)
    clock = clock or _Clock()
    views = (query, mirror)
    grays, descriptors = catalog_subset(packed, rows)  # gathered once for the query and its mirror
    clock.lap("gather shortlist")
    # the seed's cross-check and the nearest two for Lowe's ratio test: one pass over the pairs
    matches = [match_two(view.descriptors, descriptors) for view in views]
    clock.lap("cross-check + 2-NN")
    ssim = np.stack(ssim_pair(query.gray, mirror.gray, grays))
    orb = np.stack([orb_ratio(counts, view.keypoint_count) for view, (counts, *_) in zip(views, matches, strict=True)])
    clock.lap("SSIM")
    inliers = np.zeros((2, len(rows)))
    detail_inliers = np.zeros((2, len(rows)))
    detail_views = [query, mirror]  # the mirror's detail features are added when detail verification runs
    catalog_counts = np.diff(descriptors.offsets)
    # per row, where the fit with the most inliers puts the catalog image in the query, at 256 px
    # (boxes[0]) and at detail (boxes[1]): x0, y0, x1, y1 in the 256 px frame (the mirror's
    # flipped back), clipped to it; NaN where no fit does
    boxes = np.full((2, len(rows), 4), np.nan)
    box_support = np.zeros((2, len(rows)))
    detail_shape = query.detail_image.shape if query.detail_image is not None else None

    def keep_box(
        i: int, fit: Fit, v: int, at_detail: int, catalog_frame: tuple[int, int], scale: tuple[float, float]
    ) -> None:
        if len(fit) <= box_support[at_detail, i] or (box := fit.catalog_box(*catalog_frame)) is None:
            return
        box_support[at_detail, i] = len(fit)
        x0, x1 = np.clip([box[0] * scale[0], box[2] * scale[0]], 0, SEED_SIDE)
        y0, y1 = np.clip([box[1] * scale[1], box[3] * scale[1]], 0, SEED_SIDE)
        boxes[at_detail, i] = (x0, y0, x1, y1) if v == 0 else (SEED_SIDE - x1, y0, SEED_SIDE - x0, y1)

    # The ratio test of every row in one pass; RANSAC runs (on the kernel threads) only where
    # :func:`fitted_inliers` would fit: most shortlisted rows have too few matches, and a call
    # each cost more than the test.
    fits = np.zeros((2, len(rows)), dtype=bool)
    good = [ratio_test(d1, d2) for _, _, d1, d2 in matches]
    for v, view in enumerate(views):
        if len(view.descriptors) >= 4:
            fits[v] = (catalog_counts >= 4) & (np.count_nonzero(good[v], axis=1) > fit_floor(INLIER_FLOOR))

    def verify(i: int) -> None:
        keypoints = packed.keypoints_of(int(rows[i]))
        for v, (view, (_, idx, d1, _)) in enumerate(zip(views, matches, strict=True)):
            if fits[v, i]:
                fit = ransac_fit(view.keypoints, keypoints, idx[i], d1[i], good[v][i])
                inliers[v, i] = len(fit)
                keep_box(i, fit, v, 0, (SEED_SIDE, SEED_SIDE), (1.0, 1.0))

    def verify_detail(i: int) -> None:
        keypoints = packed.detail_keypoints_of(int(rows[i]))
        planes = packed.detail_planes(int(rows[i]))
        frame = detail_size(*packed.size_of(int(rows[i])))
        for v, view in enumerate(detail_views):
            fit = verified_inliers(
                view.detail_descriptors,
                view.detail_keypoints,
                keypoints,
                planes,
                homography=True,
                floor=DETAIL_INLIER_FLOOR,
            )
            detail_inliers[v, i] = len(fit)
            if detail_shape is not None:
                keep_box(i, fit, v, 1, frame, (SEED_SIDE / detail_shape[1], SEED_SIDE / detail_shape[0]))

    map_threads(verify, np.flatnonzero(fits.any(axis=0)).tolist())
    clock.lap("verify")
    region = np.zeros((2, len(rows)))
    ones = np.ones(len(rows))
    crop = np.zeros((2, len(rows)))
    partial = Evidence(first, ssim, orb, inliers, detail_inliers, ones, ones, region, ones, crop)
    chosen = choices(partial, whole=whole, own=own)
    todo, to_refine, to_place = chosen.detail, chosen.region, chosen.crop
    matches_found: list[RegionMatch] = []
    if to_refine or to_place:
        looked = regions or query_regions(query.gray)
        windows = packed.region_windows(rows[to_refine], looked).tolist() if to_refine else []
        mirrored = packed.crop_views(rows[to_place], looked).tolist() if to_place else []
        placements: list[Callable[[], RegionMatch]] = [
            *(functools.partial(refine, looked, int(w), grays[i]) for i, w in zip(to_refine, windows, strict=True)),
            *(
                functools.partial(refine_crop, looked, bool(m), grays[i])
                for i, m in zip(to_place, mirrored, strict=True)
            ),
        ]
        matches_found = [NO_MATCH] * len(placements)

        def place(j: int) -> None:
            matches_found[j] = placements[j]()

        map_threads(place, range(len(placements)))  # OpenCV releases the GIL
        for chosen_rows, found, evidence in (
            (to_refine, matches_found[: len(to_refine)], region),
            (to_place, matches_found[len(to_refine) :], crop),
        ):
            for i, match in zip(chosen_rows, found, strict=True):
                if match.correlation >= REGION_MATCH_FLOOR:
                    evidence[int(match.mirrored), i] = match.detail
        clock.lap("region + crop placement")
    if mirror_with_detail is not None:  # waited for even when unused: no work outlives a search
        detail_views[1] = mirror_with_detail.result()
    elif todo:
        detail_views[1] = mirror_detail(mirror, query)
    clock.lap("mirror detail ORB (wait)")
    if todo:
        map_threads(verify_detail, todo)  # fills detail_inliers, which ``partial`` holds
        clock.lap("detail verify")
    catalog_colours = packed.colours_of(rows)
    colour = colour_agreement(matched_colours(query, boxes[0]), catalog_colours)
    located = ~np.isnan(boxes[1, :, 0])
    detail_colour = colour.copy()
    detail_colour[located] = colour_agreement(matched_colours(query, boxes[1, located]), catalog_colours[located])
    region_colour = colour.copy()
    if to_refine:
        region_boxes = np.array([m.box for m in matches_found[: len(to_refine)]])
        found = ~np.isnan(region_boxes[:, 0])
        at = np.asarray(to_refine)[found]
        region_colour[at] = colour_agreement(matched_colours(query, region_boxes[found]), catalog_colours[at])
    return replace(partial, colour=colour, detail_colour=detail_colour, region_colour=region_colour)


def default_candidates(query: ImageFeatures, packed: PackedCatalog, *, k: int) -> Candidates:
    require_default_features(query)  # before the background work starts
    clock = _Clock()
    windows = _background.submit(query_regions, query.gray)  # beside the mirror's ORB
    mirror = mirrored(query, detail=False)
    clock.lap("mirror ORB")
    looks = look_scores(query, mirror, packed)
    clock.lap("thumbnails")
    regions = windows.result()
    clock.lap("region windows (wait)")
    mirror_with_detail = _background.submit(mirror_detail, mirror, query)
    rows, first = shortlist(query, mirror, packed, shortlist_size(k), clock=clock, looks=looks, regions=regions)
    evidence = verify_shortlist(
        query, mirror, packed, rows, first=first, mirror_with_detail=mirror_with_detail, regions=regions, clock=clock
    )
    score, ssim, orb = decide(evidence)
    clock.lap("colour + calibrate")
    return Candidates(rows=rows, score=score, ssim=ssim, orb=orb)


def score_catalog(query: ImageFeatures, packed: PackedCatalog, *, scoring: Scoring, k: int) -> Candidates:
    if scoring == "seed":
        clock = _Clock()
        result = seed_candidates(query, packed)
        clock.lap("seed: SSIM + cross-check")
        return result
    return default_candidates(query, packed, k=k)
