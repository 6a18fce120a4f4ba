"""Per-image features, computed once per catalog image and stored in the index.

A record holds what both scorings need, so a query never touches catalog pixels:

* ``sha256`` of the original bytes (the image's identity), its width and height;
* ``gray``: the seed's 256x256 grayscale — ``cv2.resize`` of the colour image to 256x256
  with OpenCV's default (bilinear) interpolation, then BGR to gray — from which SSIM is computed;
* ``keypoints`` / ``descriptors``: OpenCV's default ORB (500 features) on ``gray``, as the seed
  matches them;
* ``thumb``: a 32x32 zero-mean, unit-norm thumbnail of ``gray`` — the global descriptor that
  shortlists candidates for default scoring;
* ``colours``: a saturation-weighted hue histogram (12 bins) and the mean saturation — the
  features above are all grayscale, so this is what tells two colourways of a product apart;
* ``detail_keypoints`` / ``detail_descriptors``: ORB (1,000 features) on the grayscale scaled
  to 512 px on its longer side, aspect kept — finer detail for verifying crops, small copies and
  other views of the same object in default scoring.

Records are versioned (:data:`FEATURE_VERSION`); one of another version raises
:class:`~harmony_image.errors.IndexFormatError` so the caller re-extracts from the image.

A query for ``seed`` scoring needs only ``gray`` and its ORB: ``extract_features(data,
scoring="seed")`` skips the rest (features marked ``seed_only``, which default scoring and the
index refuse).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from .decode import DEFAULT_MAX_PIXELS, decode_image
from .errors import IndexFormatError
from .kernels import THREADS
from .params import DEFAULT_SCORING, Scoring, check_scoring

FEATURE_VERSION = 3
SEED_SIDE = 256
THUMB_SIDE = 32
HUE_BINS = 12
COLOUR_GRID = 8
"""Queries keep colour sums per cell of a COLOUR_GRID x COLOUR_GRID grid, so that the colours
of the part of a query that matched a catalog image can be told apart from the rest."""
COLOUR_SOURCE_SIDE = 512
"""Colours are read from the image block-averaged by the largest whole factor that keeps at
least this many pixels on its shorter side (OpenCV's fast area path), not from full size: the
two area resamplings to 64 px of a 4.5 MP photo cost 35 ms from full size and under 4 ms this
way, and the hue histograms agree with full-size ones to >= 0.99 (:func:`colour_source`)."""
DETAIL_SIDE = 512
DETAIL_FEATURES = 1000
# below OpenCV's default (20) so smooth, low-contrast images still get keypoints; textured
# images are capped at DETAIL_FEATURES by corner strength either way
DETAIL_FAST_THRESHOLD = 5

_orb = None
_detail_orb = None


def _seed_orb() -> cv2.ORB:
    global _orb
    if _orb is None:
        _orb = cv2.ORB.create()  # the seed's defaults: 500 features, 8 levels, scale 1.2
    return _orb


# ORB's pyramid rounds a 1-pixel side down to 0 pixels at its fourth level, and cv2.resize then
# asserts: a banner's 512 px detail image (1000x2 -> 512x1) failed the whole request. ORB finds no
# keypoint within edgeThreshold (31 px) of a border, so on such an image (or on it padded to 2 px,
# which ORB accepts) the answer is "no keypoints" — given here without calling ORB. Every image
# ORB does not assert on is passed to it unchanged.
ORB_MIN_SIDE = 2


def _orb_arrays(detector: cv2.ORB, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if min(gray.shape[:2]) < ORB_MIN_SIDE:
        return np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8)
    keypoints, descriptors = detector.detectAndCompute(gray, None)
    if descriptors is None or len(keypoints) == 0:
        return np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8)
    return np.array([kp.pt for kp in keypoints], dtype=np.float32).reshape(-1, 2), descriptors


def seed_gray(bgr: np.ndarray) -> np.ndarray:
    """The seed's 256x256 grayscale of a BGR image: resize first (bilinear), then convert."""
    resized = cv2.resize(bgr, (SEED_SIDE, SEED_SIDE))
    return cv2.cvtColor(resized, cv2.COLOR_BGR2GRAY)


def seed_orb(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ORB keypoint coordinates (n, 2) float32 and descriptors (n, 32) uint8 of ``gray``."""
    return _orb_arrays(_seed_orb(), gray)


def detail_gray(bgr: np.ndarray) -> np.ndarray:
    """Grayscale scaled (up or down) to DETAIL_SIDE px on its longer side, aspect kept."""
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) if bgr.ndim == 3 else bgr
    h, w = gray.shape
    shrinking = max(h, w) > DETAIL_SIDE
    return cv2.resize(gray, detail_size(w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def detail_orb(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ORB keypoints and descriptors of a :func:`detail_gray` image."""
    global _detail_orb
    if _detail_orb is None:
        _detail_orb = cv2.ORB.create(nfeatures=DETAIL_FEATURES, fastThreshold=DETAIL_FAST_THRESHOLD)
    return _orb_arrays(_detail_orb, gray)


def _saturation_and_hue_bin(hsv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's saturation in [0, 1] (float32) and its hue's bin of HUE_BINS."""
    return hsv[:, :, 1].astype(np.float32) / 255.0, (hsv[:, :, 0].astype(np.int32) * HUE_BINS) // 180


def _hue_weights(hsv: np.ndarray) -> np.ndarray:
    """(h, w, HUE_BINS + 1) float32: each pixel's saturation in [0, 1] in its hue's bin, and
    its saturation again in the last slot."""
    saturation, hue_bin = _saturation_and_hue_bin(hsv)
    out = np.zeros((*hsv.shape[:2], HUE_BINS + 1), dtype=np.float32)
    np.put_along_axis(out, hue_bin[:, :, None], saturation[:, :, None], axis=2)
    out[:, :, -1] = saturation
    return out


def _signature(sums: np.ndarray, pixels: int) -> np.ndarray:
    """A colour signature from per-bin saturation sums and the saturation total of ``pixels``."""
    hist = sums[:-1].astype(np.float32)
    total = float(hist.sum())
    if total > 0:
        hist = hist / total
    return np.append(hist, np.float32(sums[-1] / max(1, pixels))).astype(np.float32)


def colour_source(bgr: np.ndarray) -> np.ndarray:
    """``bgr`` block-averaged by the largest whole factor that keeps :data:`COLOUR_SOURCE_SIDE`
    pixels on its shorter side (the last rows and columns that do not fill a block dropped), or
    ``bgr`` itself when that factor is 1: what :func:`colour_signature` and :func:`colour_grid`
    read. Measured on the real-resolution benchmark's 1-12 MP queries: histogram intersection
    with the full-size signature >= 0.99 (mean 0.9997)."""
    h, w = bgr.shape[:2]
    factor = min(h, w) // COLOUR_SOURCE_SIDE
    if factor < 2:
        return bgr
    whole = bgr[: h - h % factor, : w - w % factor]
    return cv2.resize(whole, (w // factor, h // factor), interpolation=cv2.INTER_AREA)


def colour_signature(bgr: np.ndarray) -> np.ndarray:
    """Hue histogram (HUE_BINS bins, weighted by saturation, summing to 1 or all 0 for a gray
    image) followed by the mean saturation in [0, 1]; float32 of length HUE_BINS + 1."""
    h, w = bgr.shape[:2]
    f = 64 / max(h, w)
    small = cv2.resize(bgr, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    saturation, hue_bin = (a.ravel() for a in _saturation_and_hue_bin(cv2.cvtColor(small, cv2.COLOR_BGR2HSV)))
    hist = np.bincount(hue_bin, weights=saturation, minlength=HUE_BINS).astype(np.float32)
    total = float(hist.sum())
    if total > 0:
        hist /= total
    return np.append(hist, np.float32(saturation.mean())).astype(np.float32)


def colour_grid(bgr: np.ndarray) -> np.ndarray:
    """(COLOUR_GRID, COLOUR_GRID, HUE_BINS + 1) float32 per-cell sums of :func:`_hue_weights`
    over the image stretched to a square (the 256x256 grayscale's frame), for
    :func:`region_colours`."""
    side = COLOUR_GRID * 8
    hsv = cv2.cvtColor(cv2.resize(bgr, (side, side), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2HSV)
    cells: np.ndarray = _hue_weights(hsv).reshape(COLOUR_GRID, 8, COLOUR_GRID, 8, HUE_BINS + 1).sum(axis=(1, 3))
    return cells


def region_colours(grid: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """The :func:`colour_signature` of the part of an image inside ``box`` = (x0, y0, x1, y1)
    in its 256x256 grayscale's pixels, from its :func:`colour_grid`: the cells whose centres
    the box holds (the cell nearest its centre when it holds none)."""
    cell = SEED_SIDE / COLOUR_GRID
    centres = (np.arange(COLOUR_GRID) + 0.5) * cell
    x0, y0, x1, y1 = box
    cols = np.flatnonzero((centres >= x0) & (centres <= x1))
    rows = np.flatnonzero((centres >= y0) & (centres <= y1))
    if not len(cols):
        cols = np.array([np.abs(centres - (x0 + x1) / 2).argmin()])
    if not len(rows):
        rows = np.array([np.abs(centres - (y0 + y1) / 2).argmin()])
    cells = grid[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return _signature(cells.sum(axis=(0, 1)), cells.shape[0] * cells.shape[1] * 64)


def detail_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) of the :func:`detail_gray` image of a ``width`` x ``height`` image."""
    f = DETAIL_SIDE / max(width, height)
    return max(1, round(width * f)), max(1, round(height * f))


def thumbnail(gray: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-norm 32x32 float32 thumbnail (flattened) of a 256x256 grayscale."""
    small = cv2.resize(gray, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)
    small -= small.mean()
    norm = float(np.linalg.norm(small))
    return (small / norm if norm > 0 else small).reshape(-1)


# What damaged bytes raise while numpy reads a record: the zip's structure or its deflate stream
# (BadZipFile, zlib.error, EOFError, OSError), a member, header or field that is missing or malformed
# (KeyError, ValueError, TypeError, AttributeError). Only these mean "re-index"; see from_bytes.
_RECORD_DAMAGE: tuple[type[Exception], ...] = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
)


@dataclass(frozen=True)
class ImageFeatures:
    """Everything the engine keeps about one image. Arrays are read-only by convention."""

    sha256: str
    width: int
    height: int
    gray: np.ndarray
    keypoints: np.ndarray
    descriptors: np.ndarray
    thumb: np.ndarray
    detail_keypoints: np.ndarray
    detail_descriptors: np.ndarray
    colours: np.ndarray
    # Queries keep their detail image so the mirrored query can be featurised, and their
    # colour_grid for the colours of a matched region; neither is stored.
    detail_image: np.ndarray | None = field(default=None, repr=False, compare=False)
    colour_cells: np.ndarray | None = field(default=None, repr=False, compare=False)
    # A seed scoring query's features: the detail features are empty and the colours zero.
    seed_only: bool = field(default=False, compare=False)

    @property
    def keypoint_count(self) -> int:
        return int(self.descriptors.shape[0])

    def to_bytes(self, *, compress: bool = True) -> bytes:
        """Serialise as a versioned ``.npz`` record (no pickle); ``compress=False`` for bytes that
        travel once and are read at once (a query sent to shards): zlib costs ~6 ms a query and
        saves a third of ~0.2 MB."""
        meta = {"version": FEATURE_VERSION, "sha256": self.sha256, "width": self.width, "height": self.height}
        if self.seed_only:  # a query's, sent to shards; catalog records never are
            meta["seed_only"] = True
        buffer = io.BytesIO()
        (np.savez_compressed if compress else np.savez)(
            buffer,
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            gray=self.gray,
            keypoints=self.keypoints,
            descriptors=self.descriptors,
            thumb=self.thumb,
            detail_keypoints=self.detail_keypoints,
            detail_descriptors=self.detail_descriptors,
            colours=self.colours,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ImageFeatures:
        """Load a record written by :meth:`to_bytes`.

        Raises
        ------
        IndexFormatError
            The record is damaged or was written by another :data:`FEATURE_VERSION`;
            re-extract the features from the image. Any other exception (``MemoryError``, an
            interpreter's ``SystemError``) says nothing about the bytes: it propagates, and the
            caller tries the same record again later.
        """
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                meta = json.loads(npz["meta"].tobytes())
                if meta.get("version") != FEATURE_VERSION:
                    raise IndexFormatError(
                        f"feature record version {meta.get('version')} is not {FEATURE_VERSION}; re-index the image"
                    )
                return cls(
                    sha256=meta["sha256"],
                    width=int(meta["width"]),
                    height=int(meta["height"]),
                    gray=npz["gray"],
                    keypoints=npz["keypoints"],
                    descriptors=npz["descriptors"],
                    thumb=npz["thumb"],
                    detail_keypoints=npz["detail_keypoints"],
                    detail_descriptors=npz["detail_descriptors"],
                    colours=npz["colours"],
                    seed_only=meta.get("seed_only") is True,
                )
        except _RECORD_DAMAGE as exc:
            raise IndexFormatError(f"feature record is damaged ({exc}); re-index the image") from exc


def features_from_images(
    gray: np.ndarray,
    detail: np.ndarray | None,
    colours: np.ndarray,
    *,
    sha256: str,
    width: int,
    height: int,
    keep_detail_image: bool = False,
    detail_features: Future[tuple[np.ndarray, np.ndarray]] | None = None,
) -> ImageFeatures:
    """Features from the seed's 256x256 ``gray``, the 512 px ``detail`` grayscale (None: no
    detail features) and a :func:`colour_signature`; ``detail_features``, the
    :func:`detail_orb` of ``detail`` already under way, is waited for instead of computed."""
    keypoints, descriptors = seed_orb(gray)
    if detail is None:
        detail_keypoints, detail_descriptors = np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8)
    elif detail_features is not None:
        detail_keypoints, detail_descriptors = detail_features.result()
    else:
        detail_keypoints, detail_descriptors = detail_orb(detail)
    return ImageFeatures(
        sha256=sha256,
        width=width,
        height=height,
        gray=gray,
        keypoints=keypoints,
        descriptors=descriptors,
        thumb=thumbnail(gray),
        detail_keypoints=detail_keypoints,
        detail_descriptors=detail_descriptors,
        colours=colours,
        detail_image=detail if keep_detail_image else None,
    )


# A query's 512 px ORB is most of its extraction; it runs here beside the rest (OpenCV releases
# the GIL), so a query waits for the longer of the two, not their sum. Catalog images are
# extracted one per thread by the indexers, which keep the cores busy without this.
_detail_workers = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="harmony-detail-orb")


def features_from_bgr(bgr: np.ndarray, *, sha256: str, keep_detail_image: bool = False) -> ImageFeatures:
    """Features of an already decoded BGR image whose original bytes hash to ``sha256``
    (``keep_detail_image``: a query's, with its detail image and :func:`colour_grid`)."""
    detail = detail_gray(bgr)
    pending = _detail_workers.submit(detail_orb, detail) if keep_detail_image else None
    colours = colour_source(bgr)
    cells = colour_grid(colours) if keep_detail_image else None
    features = features_from_images(
        seed_gray(bgr),
        detail,
        colour_signature(colours),
        sha256=sha256,
        width=int(bgr.shape[1]),
        height=int(bgr.shape[0]),
        keep_detail_image=keep_detail_image,
        detail_features=pending,
    )
    return replace(features, colour_cells=cells) if cells is not None else features


def seed_features_from_bgr(bgr: np.ndarray, *, sha256: str) -> ImageFeatures:
    """What ``seed`` scoring reads of a query — the 256x256 ``gray``, its ORB and thumbnail —
    without the 512 px detail features and colours that only default scoring reads (those are
    empty and zero; the features are marked ``seed_only``)."""
    no_colours = np.zeros(HUE_BINS + 1, np.float32)
    features = features_from_images(
        seed_gray(bgr), None, no_colours, sha256=sha256, width=int(bgr.shape[1]), height=int(bgr.shape[0])
    )
    return replace(features, seed_only=True)


def extract_features(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, query: bool = True, scoring: Scoring = DEFAULT_SCORING
) -> ImageFeatures:
    """Decode image bytes and compute their features.

    Raises
    ------
    ImageError
        The bytes are not a usable image (see :func:`harmony_image.decode.decode_image`).
    InvalidParameterError
        ``scoring`` is not one of :data:`~harmony_image.params.SCORINGS`.

    ``query=True`` keeps the 512 px grayscale in memory so default scoring can also match the
    mirrored query at full detail; indexers pass ``query=False``. Records never store it.
    ``scoring="seed"``: a query to be searched with seed scoring only
    (:func:`seed_features_from_bgr`; its 512 px ORB and colours are most of the extraction of a
    small image); default scoring and :meth:`SearchIndex.add` refuse such features.
    """
    if check_scoring(scoring) == "seed" and not query:
        raise ValueError("scoring='seed' extracts a query's features; a catalog image needs them all (query=False)")
    bgr = decode_image(data, max_pixels=max_pixels)
    sha256 = hashlib.sha256(data).hexdigest()
    if scoring == "seed":
        return seed_features_from_bgr(bgr, sha256=sha256)
    return features_from_bgr(bgr, sha256=sha256, keep_detail_image=query)
