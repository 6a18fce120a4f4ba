"""Region looks: finding a catalog image that fills only part of the query — a collage, a
screenshot, a product placed on a banner (issue 13) — when it has too few keypoints for the votes
and the geometric fits (smooth, low-contrast photos: product shots on white, retinas, skies).

First pass (every catalog image): its thumbnail, 16x16, against windows of the query that span
:data:`REGION_SCALES` of its side at every position of that window size's pixel grid, for the
query and its mirror; an image's *region look* is its best normalised correlation. Both sides are
quantised to int8 (:data:`QUANT_LEVELS`): their dot products are exact integers
(:func:`~harmony_image.kernels.region_max`, |sum| <= 256 * 127 * 127 < 2**24), so one index and
the shards of a catalog compute the same values and cut the same shortlist.

The other way round, *crop looks* find a heavy crop — the query is a part of the catalog image
— when it has too few keypoints (or too few survive strong compression) for the votes: the
query, scaled to :data:`CROP_SCALES` of a region thumbnail's side, slides over every position of
every catalog image's region thumbnail (:func:`~harmony_image.kernels.crop_max`, exact integer
sums as above); an image's crop look is its best normalised correlation, for the query and its
mirror (measured on the benchmark: every heavy crop the other votes missed ranked among the
first four by crop look; docs/SCORING.md).

Verification (the few candidates with the best region looks): the catalog image is placed — its
256x256 grayscale matched (``cv2.matchTemplate``, normalised correlation) at
:data:`PLACE_SIZES` over the whole query view of its best window at :data:`PLACE_SIDE` px, the
best placement refined at :data:`FINE_SIDE` px — and the detail of the two is compared there at
256 px: the correlation of what a
Gaussian blur of :data:`DETAIL_SIGMA` px takes away. Smooth images agree in their large shapes by
chance (a sky and a gradient correlate at 0.9 and more); only a copy agrees in its detail
(measured on the benchmark: copies 0.35-0.88, other images at most 0.34 — docs/SCORING.md). That
detail correlation is the evidence (:func:`~harmony_image.scoring.calibrated`), and the window is
where the colour check looks. The few with the best crop looks are verified the same way with the
roles swapped (:func:`refine_crop`): the query placed over the catalog image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from .features import SEED_SIDE, THUMB_SIDE
from .kernels import crop_max, from_bfloat16, region_group_max, region_max, require_bfloat16

REGION_SIDE = 16
"""Side in pixels of a region thumbnail: the catalog's 32x32 thumbnail averaged over 2x2 blocks.
Derived when an index is loaded, never stored."""
REGION_SCALES = (0.45, 0.58, 0.72)
"""Window sides as fractions of the query's side: a copy filling about 20%, 33% and 50% of the
query's area (the benchmark's ``inset_third`` fills 33%; a window within ~12% of a copy's size
still finds it)."""
REGION_STRIDES = (2, 1, 1)
"""Window grid step per scale, in region-thumbnail pixels: every other position at the smallest
scale (its 21x21 positions cost as much as the other two scales together; measured on the
benchmark: no small copy lost), every position at the others (every other lost 5 of 30)."""
CROP_SCALES = (0.45, 0.58, 0.72)
"""Sides of the query slid over a region thumbnail, as fractions of the thumbnail's side: a
crop keeping about 20%, 33% and 50% of the catalog image's area (the benchmark's
``crop_third_q40`` keeps 33%)."""
QUANT_LEVELS = 127
"""Region thumbnails and windows are zero-mean and scaled so their largest magnitude is this."""
PLACE_SIDE = 64
"""Side of the query's grayscale over which a catalog image is placed."""
PLACE_SIZES = tuple(np.geomspace(0.38, 0.85, 14).round(3).tolist())
"""Sides of the placed image (the catalog image in the query, or the query in the catalog image),
as fractions of the other's: the window and crop scales' range and beyond, 6% apart. The best
window's own size is not trusted: a window half a grid step off a copy can look best at the
next size."""
FINE_SIDE = 128
"""Side of the query's grayscale at which the best placement is refined."""
FINE_SIZES = (0.96, 1.0, 1.04)
"""Template sizes tried in refinement, as fractions of the placed one's."""
FINE_SLACK = 3
"""Refinement searches this many pixels (at FINE_SIDE) around the placement."""
DETAIL_SIGMA = 2.0
"""Standard deviation in pixels (at 256 px) of the blur whose residual is the detail compared."""
FLAT = 1.0
"""A template whose gray levels vary less than this (standard deviation) is refused: normalised
correlation of a flat patch is meaningless."""


@dataclass(frozen=True)
class RegionThumbs:
    """Catalog images' region thumbnails."""

    codes: np.ndarray
    """(n, REGION_SIDE**2) int8."""
    inverse_norms: np.ndarray
    """(n,) float32: 1 / the L2 norm of each row of ``codes`` (0 for a flat image)."""

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes + self.inverse_norms.nbytes)


def _quantised(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero-mean int8 codes of float ``rows`` (peak magnitude :data:`QUANT_LEVELS`) and their
    inverse L2 norms (float32; 0 for a flat row)."""
    centred = rows - rows.mean(axis=1, keepdims=True)
    peak = np.abs(centred).max(axis=1, keepdims=True)
    codes = np.round(centred * (QUANT_LEVELS / np.where(peak > 0, peak, 1.0))).astype(np.int8)
    norms = np.sqrt((codes.astype(np.float32) ** 2).sum(axis=1))
    inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0).astype(np.float32)
    return codes, inverse


@dataclass(frozen=True)
class CoarseThumbs:
    """Region thumbnails' coarse copies, from which the first pass bounds every region look
    (:func:`region_bounds`): a thumbnail ``a`` is its 2x2 block means ``m`` (each repeated over
    its block) plus what varies within the blocks, ``f``; ``m`` is held rounded, ``q``, off by
    ``e = m - q``. The norms are of the int8 codes, times the thumbnail's inverse norm."""

    codes: np.ndarray
    """(n, COARSE_SIDE**2) int8: ``q``."""
    inverse_norms: np.ndarray
    """(n,) float32: :attr:`RegionThumbs.inverse_norms`."""
    size: np.ndarray
    """(n,) float32: ``4 |q| / |a|``."""
    rounding: np.ndarray
    """(n,) float32: ``4 |e| / |a|``."""
    fine: np.ndarray
    """(n,) float32: ``|f| / |a|``, the share of the thumbnail that varies within its blocks."""

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in (self.codes, self.inverse_norms, self.size, self.rounding, self.fine)))

    @staticmethod
    def concatenate(parts: list[CoarseThumbs]) -> CoarseThumbs:
        def joined(field: str, dtype: type, width: int = 0) -> np.ndarray:
            empty: np.ndarray = np.zeros((0, width) if width else 0, dtype)
            whole: np.ndarray = np.concatenate([getattr(p, field) for p in parts] or [empty])
            return whole

        return CoarseThumbs(
            joined("codes", np.int8, COARSE_SIDE**2),
            joined("inverse_norms", np.float32),
            joined("size", np.float32),
            joined("rounding", np.float32),
            joined("fine", np.float32),
        )


COARSE_SIDE = REGION_SIDE // 2
"""Side of a coarse copy (:class:`CoarseThumbs`): 2x2 blocks of a region thumbnail, so its
products cost a quarter of the thumbnail's."""
BOUND_GROUPS = 8
"""The query's windows are bounded in this many groups, by the share of each that varies within
its blocks: the bound adds the group's largest share, so windows of like share go together.
In a one-off study on 30,000 of the benchmark's photos and 40 of its queries, the median query's
best 12 region looks needed the exact look of 39% of the images with one group, 10% with 4, 5%
with 8."""
BOUND_SLACK = 1e-5
"""Added to every bound, and as much again relatively: the float32 rounding of the bound's few
terms and of the look it bounds (~1e-7 relative each) stays far below it."""


def _coarse_parts(codes: np.ndarray, inverse: np.ndarray) -> tuple[np.ndarray, ...]:
    """``q`` (int8 values) and, times ``inverse``, ``|m|``, ``|q|``, ``|e|`` and ``|f|`` of each row
    of ``codes`` (:class:`CoarseThumbs`)."""
    pixels = codes.reshape(len(codes), REGION_SIDE, REGION_SIDE).astype(np.int32)
    sums = pixels[:, 0::2, 0::2] + pixels[:, 0::2, 1::2] + pixels[:, 1::2, 0::2] + pixels[:, 1::2, 1::2]
    sums = sums.reshape(len(codes), COARSE_SIDE**2)  # exact: 4 x the block means
    rounded = np.round(sums / 4.0)
    squares = (pixels.reshape(len(codes), -1) ** 2).sum(axis=1).astype(np.float64)
    sum_squares = (sums.astype(np.float64) ** 2).sum(axis=1)
    fine = np.sqrt(np.maximum(squares - sum_squares / 4.0, 0.0))  # |a|^2 = 4 |m|^2 + |f|^2
    error = np.sqrt(((sums / 4.0 - rounded) ** 2).sum(axis=1))
    return (
        rounded,
        np.sqrt(sum_squares) / 4.0 * inverse,
        np.sqrt((rounded**2).sum(axis=1)) * inverse,
        error * inverse,
        fine * inverse,
    )


def coarse_thumbs(thumbs: RegionThumbs) -> CoarseThumbs:
    """The coarse copies of catalog images' region thumbnails."""
    parts = []
    for lo in range(0, len(thumbs), ROWS_AT_ONCE):
        inverse = thumbs.inverse_norms[lo : lo + ROWS_AT_ONCE]
        rounded, _, size, rounding, fine = _coarse_parts(
            thumbs.codes[lo : lo + ROWS_AT_ONCE], inverse.astype(np.float64)
        )
        parts.append(
            CoarseThumbs(
                codes=rounded.astype(np.int8),
                inverse_norms=inverse,
                size=(4.0 * size).astype(np.float32),
                rounding=(4.0 * rounding).astype(np.float32),
                fine=fine.astype(np.float32),
            )
        )
    return CoarseThumbs.concatenate(parts)


@dataclass(frozen=True)
class WindowGroups:
    """A query's windows, coarse (:func:`region_bounds`), in groups of like fine share."""

    codes: np.ndarray
    """(m, COARSE_SIDE**2) int16 holding int8 values: each window's rounded block means, group by group."""
    scale: np.ndarray
    """(m,) float32: 4 / each window's norm."""
    ends: np.ndarray
    """(groups,) int64: where each group's windows end."""
    size: np.ndarray
    """(groups,) float64: each group's largest ``|m| / |w|``."""
    rounding: np.ndarray
    """(groups,) float64: each group's largest ``|e| / |w|``."""
    fine: np.ndarray
    """(groups,) float64: each group's largest ``|f| / |w|``."""


def window_groups(codes: np.ndarray, inverse: np.ndarray) -> WindowGroups:
    """A query's (m, REGION_SIDE**2) window ``codes`` and their inverse norms, coarse, in
    :data:`BOUND_GROUPS` groups of like fine share (whole vectors of 16 each but the last)."""
    rounded, size, _, rounding, fine = _coarse_parts(codes, inverse.astype(np.float64))
    order = np.argsort(fine, kind="stable")
    per_group = -(-len(order) // BOUND_GROUPS // 16) * 16 or 16
    ends = np.minimum(np.arange(per_group, len(order) + per_group, per_group), len(order)).astype(np.int64)
    starts = ends - np.diff(ends, prepend=0)

    def largest(values: np.ndarray) -> np.ndarray:
        return np.array([values[order[lo:hi]].max() for lo, hi in zip(starts, ends, strict=True)], dtype=np.float64)

    return WindowGroups(
        codes=rounded[order].astype(np.int16),
        scale=(4.0 * inverse[order]).astype(np.float32),
        ends=ends,
        size=largest(size),
        rounding=largest(rounding),
        fine=largest(fine),
    )


def region_bounds(coarse: CoarseThumbs, groups: WindowGroups) -> np.ndarray:
    """Per catalog image, an upper bound (float32) of its region look with the windows of
    ``groups``. For a thumbnail ``a`` and a window ``w`` (:class:`CoarseThumbs`),
    ``a . w = 4 m_a . m_w + f_a . f_w`` (the block means are orthogonal to what varies within the
    blocks) and ``4 m_a . m_w = 4 q_a . q_w + 4 q_a . e_w + 4 e_a . m_w``; Cauchy-Schwarz bounds
    each of the last three terms by its norms. So the look ``a . w / (|a| |w|)`` is at most the
    exact coarse product (:func:`~harmony_image.kernels.region_group_max`, a quarter of the
    thumbnail's products) plus terms of the image's shares and the group's largest."""
    if len(groups.ends) == 0:  # no windows: nothing to bound with
        return np.full(len(coarse), np.inf)
    products = region_group_max(coarse.codes, groups.codes, groups.scale, groups.ends)
    bounds = np.full(len(coarse), -np.inf, dtype=np.float32)
    for g, group in enumerate(products):  # float32: its rounding (~1e-7 relative) is far below the slack
        group *= coarse.inverse_norms
        group += coarse.rounding * np.float32(groups.size[g])
        group += coarse.size * np.float32(groups.rounding[g])
        group += coarse.fine * np.float32(groups.fine[g])
        np.maximum(bounds, group, out=bounds)
    return bounds + np.abs(bounds) * BOUND_SLACK + BOUND_SLACK


def best_looks(bounds: np.ndarray, looks_of: Callable[[np.ndarray], np.ndarray], keep: int) -> np.ndarray:
    """Looks (float32) of the rows that can be among the best ``keep``, NaN for the others:
    ``looks_of(rows)`` gives the rows' looks, each at most its ``bounds``. First the rows of the
    :data:`FIRST_LOOKED` highest bounds are looked at, then every row whose bound reaches the
    ``keep``-th best look among them: a row left out looks strictly worse than each of the best
    ``keep`` (those looked at later only raise the ``keep``-th best), so it cannot tie with them."""
    n = len(bounds)
    looks = np.full(n, np.nan, dtype=np.float32)
    if keep <= 0 or n == 0:
        return looks
    first = max(FIRST_LOOKED, keep)
    if n <= first:
        looks[:] = looks_of(np.arange(n))
        return looks
    top = np.argpartition(-bounds, first - 1)[:first]
    looks[top] = looks_of(top)
    kth = np.partition(looks[top], first - keep)[first - keep]
    rest = np.flatnonzero((bounds >= kth) & np.isnan(looks))
    if len(rest):
        looks[rest] = looks_of(rest)
    return looks


FIRST_LOOKED = 256
"""Rows :func:`best_looks` looks at before it knows a ``keep``-th best: a few hundred cost about as
much as the bounds of a few thousand."""


ROWS_AT_ONCE = 1024
"""Catalog thumbnails converted per step (bounds the temporaries: ~4 KB per row)."""


def region_thumbs(thumbs: np.ndarray) -> RegionThumbs:
    """The region thumbnails of catalog images from their (n, 32*32) bfloat16 thumbnails
    (:attr:`~harmony_image.packed.ShortlistTier.thumbs`)."""
    require_bfloat16(thumbs, "region_thumbs: thumbs")
    n, factor = len(thumbs), THUMB_SIDE // REGION_SIDE
    codes = np.empty((n, REGION_SIDE * REGION_SIDE), dtype=np.int8)
    inverse = np.empty(n, dtype=np.float32)
    for lo in range(0, n, ROWS_AT_ONCE):
        part = from_bfloat16(thumbs[lo : lo + ROWS_AT_ONCE]).reshape(-1, REGION_SIDE, factor, REGION_SIDE, factor)
        codes[lo : lo + len(part)], inverse[lo : lo + len(part)] = _quantised(
            part.mean(axis=(2, 4)).reshape(len(part), REGION_SIDE * REGION_SIDE)
        )
    return RegionThumbs(codes, inverse)


@dataclass(frozen=True)
class QueryRegions:
    """A query's windows, for the first pass, and its grayscale at the sizes verification reads."""

    codes: np.ndarray
    """(m, REGION_SIDE**2) int16 holding int8 values: the windows, of the query then of its
    mirror."""
    inverse_norms: np.ndarray
    """(m,) float32."""
    mirrored: np.ndarray
    """(m,) bool: a window of the mirror."""
    views: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]
    """The query's and its mirror's grayscale at 256, FINE_SIDE and PLACE_SIDE px."""
    templates: CropTemplates
    """The query and its mirror at :data:`CROP_SCALES`, for crop looks."""
    groups: WindowGroups
    """The windows, coarse, for :func:`region_bounds`."""


@dataclass(frozen=True)
class CropTemplates:
    """Square templates of a query (:func:`~harmony_image.kernels.crop_max`), the query's then
    its mirror's."""

    taps: np.ndarray
    """int16 holding int8 values: each template's, one after the other."""
    sizes: np.ndarray
    """(m,) int32: each template's side in region-thumbnail pixels."""
    scale: np.ndarray
    """(m,) float32: ``1 / sqrt(s**2 * sum(t**2) - sum(t)**2)`` (0 for a flat template)."""


def crop_templates(gray: np.ndarray) -> CropTemplates:
    """A query's 256x256 ``gray`` and its mirror at every :data:`CROP_SCALES`, quantised as
    region thumbnails are."""
    own: list[np.ndarray] = []
    for fraction in CROP_SCALES:
        side = round(REGION_SIDE * fraction)
        small = cv2.resize(gray, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
        own.append(_quantised(small.reshape(1, -1))[0].reshape(side, side))
    templates = own + [t[:, ::-1] for t in own]
    sizes = np.array([len(t) for t in templates], dtype=np.int32)
    spreads = np.array(
        [t.size * float((t.astype(np.int64) ** 2).sum()) - float(t.astype(np.int64).sum()) ** 2 for t in templates]
    )
    scale = np.divide(1.0, np.sqrt(spreads), out=np.zeros_like(spreads), where=spreads > 0).astype(np.float32)
    return CropTemplates(
        taps=np.concatenate([t.reshape(-1) for t in templates]).astype(np.int16), sizes=sizes, scale=scale
    )


def query_regions(gray: np.ndarray) -> QueryRegions:
    """Every window of a query's 256x256 ``gray`` (:data:`REGION_SCALES`) and, flipped, of its
    mirror."""
    codes, norms = [], []
    for fraction, stride in zip(REGION_SCALES, REGION_STRIDES, strict=True):
        side = round(REGION_SIDE / fraction)
        small = cv2.resize(gray, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
        windows = np.lib.stride_tricks.sliding_window_view(small, (REGION_SIDE, REGION_SIDE))[::stride, ::stride]
        c, n = _quantised(windows.reshape(-1, REGION_SIDE * REGION_SIDE))
        codes.append(c)
        norms.append(n)
    own = np.concatenate(codes)
    flipped = own.reshape(-1, REGION_SIDE, REGION_SIDE)[:, :, ::-1].reshape(len(own), -1)
    views = []
    for view in (gray, np.ascontiguousarray(gray[:, ::-1])):
        views.append((view, *_fine_and_coarse(view)))
    codes_all, inverse = np.concatenate([own, flipped]), np.concatenate([*norms, *norms])
    return QueryRegions(
        codes=codes_all.astype(np.int16),
        inverse_norms=inverse,
        mirrored=np.repeat([False, True], len(own)),
        views=(views[0], views[1]),
        templates=crop_templates(gray),
        groups=window_groups(codes_all, inverse),
    )


def best_windows(thumbs: RegionThumbs, query: QueryRegions) -> tuple[np.ndarray, np.ndarray]:
    """Per catalog row of ``thumbs``, its best normalised correlation with any of the query's
    windows (float32, -1 to 1) and that window's index (the first of equal ones)."""
    best, which = region_max(thumbs.codes, query.codes, query.inverse_norms)
    looks: np.ndarray = best * thumbs.inverse_norms
    return looks, which


def best_crops(thumbs: RegionThumbs, query: QueryRegions) -> tuple[np.ndarray, np.ndarray]:
    """Per catalog row of ``thumbs``, its crop look — the best normalised correlation (float32,
    -1 to 1) of the query or its mirror at :data:`CROP_SCALES` with a window of the row's region
    thumbnail — and whether the mirror gave it."""
    t = query.templates
    looks, where = crop_max(thumbs.codes, REGION_SIDE, t.taps, t.sizes, t.scale)
    mirrored: np.ndarray = where // (REGION_SIDE * REGION_SIDE) >= len(t.sizes) // 2
    return looks, mirrored


@dataclass(frozen=True)
class RegionMatch:
    """Where a catalog image lies in the query (or the query in a catalog image) by placement, and
    how well the two agree there."""

    correlation: float
    """Normalised correlation of the catalog's grayscale with the query there (-1 to 1), at
    FINE_SIDE px."""
    detail: float
    """Normalised correlation of their detail there (-1 to 1; :data:`DETAIL_SIGMA`), at 256 px."""
    mirrored: bool
    box: tuple[float, float, float, float]
    """x0, y0, x1, y1 in the query's 256x256 frame (flipped back when found in the mirror); the
    whole frame for a query placed in a catalog image."""


NO_MATCH = RegionMatch(0.0, 0.0, False, (np.nan, np.nan, np.nan, np.nan))


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    norms = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / norms if norms > 0 else 0.0


def _detail(gray: np.ndarray) -> np.ndarray:
    image = gray.astype(np.float32)
    residual: np.ndarray = image - cv2.GaussianBlur(image, (0, 0), DETAIL_SIGMA)
    return residual


def detail_agreement(view: np.ndarray, box: tuple[float, float, float, float], catalog_gray: np.ndarray) -> float:
    """Correlation of the detail (:func:`_detail`) of ``view`` (a 256x256 grayscale) inside
    ``box`` (its own frame) with that of ``catalog_gray`` scaled to the box."""
    x0, y0 = max(0, round(box[0])), max(0, round(box[1]))
    x1, y1 = min(SEED_SIDE, round(box[2])), min(SEED_SIDE, round(box[3]))
    if x1 - x0 < REGION_SIDE or y1 - y0 < REGION_SIDE:
        return 0.0
    template = cv2.resize(catalog_gray, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    return _correlation(_detail(view[y0:y1, x0:x1]), _detail(template))


def _placed(
    view: np.ndarray, source: np.ndarray, sides: list[int], area: tuple[int, int, int, int]
) -> tuple[float, int, int, int]:
    """The best (correlation, x, y, side) of ``source`` (an image at ``view``'s scale, no smaller
    than any of ``sides``) scaled to each of ``sides`` px, matched within ``area`` (x0, y0, x1,
    y1) of ``view``; correlation -inf when none fits."""
    best = (-np.inf, 0, 0, 0)
    x0, y0, x1, y1 = area
    for side in sides:
        if side < REGION_SIDE // 2 or x1 - x0 < side or y1 - y0 < side:
            continue
        template = cv2.resize(source, (side, side), interpolation=cv2.INTER_AREA)
        if float(template.std()) < FLAT:
            continue
        scores = cv2.matchTemplate(view[y0:y1, x0:x1], template, cv2.TM_CCOEFF_NORMED)
        _, peak, _, (px, py) = cv2.minMaxLoc(scores)
        if np.isfinite(peak) and peak > best[0]:
            best = (float(peak), x0 + px, y0 + py, side)
    return best


def _place(
    image: tuple[np.ndarray, np.ndarray], template: tuple[np.ndarray, np.ndarray], sides: list[int]
) -> tuple[float, tuple[float, float, float, float]]:
    """Where ``template`` lies in ``image``, each given at FINE_SIDE and PLACE_SIDE px: placed at
    each of ``sides`` px over the coarse image, the best placement refined over the fine one.
    The fine correlation (-inf when nothing fits) and the box in the image's 256 px frame. The
    template is scaled from its own coarse or fine copy, not from 256 px: area resampling by a
    fraction costs with the pixels it reads (from 256 px it took half of a placement's time)."""
    (fine, coarse), (template_fine, template_coarse) = image, template
    peak, x, y, side = _placed(coarse, template_coarse, sides, (0, 0, PLACE_SIDE, PLACE_SIDE))
    if not np.isfinite(peak):
        return -np.inf, (np.nan, np.nan, np.nan, np.nan)
    up = FINE_SIDE / PLACE_SIDE
    sides = sorted({round(side * up * f) for f in FINE_SIZES})
    slack = FINE_SLACK + (max(sides) - side * up) / 2
    area = (
        max(0, int(x * up - slack)),
        max(0, int(y * up - slack)),
        min(FINE_SIDE, int(np.ceil((x + side) * up + slack))),
        min(FINE_SIDE, int(np.ceil((y + side) * up + slack))),
    )
    fine_peak, fx, fy, fine_side = _placed(fine, template_fine, sides, area)
    to_full = SEED_SIDE / FINE_SIDE
    return fine_peak, (fx * to_full, fy * to_full, (fx + fine_side) * to_full, (fy + fine_side) * to_full)


_PLACED_SIDES = sorted({round(f * PLACE_SIDE) for f in PLACE_SIZES})


def _fine_and_coarse(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 256x256 grayscale at FINE_SIDE and PLACE_SIDE px."""
    return (
        cv2.resize(gray, (FINE_SIDE, FINE_SIDE), interpolation=cv2.INTER_AREA),
        cv2.resize(gray, (PLACE_SIDE, PLACE_SIDE), interpolation=cv2.INTER_AREA),
    )


def refine(query: QueryRegions, window: int, catalog_gray: np.ndarray) -> RegionMatch:
    """Where ``catalog_gray`` (256x256) lies in the view (the query or its mirror) of ``window``,
    and the agreement of their detail there."""
    flip = bool(query.mirrored[window])
    full, fine, coarse = query.views[int(flip)]
    peak, placed = _place((fine, coarse), _fine_and_coarse(catalog_gray), _PLACED_SIDES)
    if not np.isfinite(peak):
        return NO_MATCH
    box = (SEED_SIDE - placed[2], placed[1], SEED_SIDE - placed[0], placed[3]) if flip else placed
    return RegionMatch(peak, detail_agreement(full, placed, catalog_gray), flip, box)


def refine_crop(query: QueryRegions, mirrored: bool, catalog_gray: np.ndarray) -> RegionMatch:
    """Where the query (its mirror if ``mirrored``) lies in ``catalog_gray`` (256x256), and the
    agreement of their detail there; the box is the whole query's (the catalog image holds it
    all)."""
    full, fine, coarse = query.views[int(mirrored)]
    peak, placed = _place(_fine_and_coarse(catalog_gray), (fine, coarse), _PLACED_SIDES)
    if not np.isfinite(peak):
        return NO_MATCH
    whole = (0.0, 0.0, float(SEED_SIDE), float(SEED_SIDE))
    return RegionMatch(peak, detail_agreement(catalog_gray, placed, full), mirrored, whole)
