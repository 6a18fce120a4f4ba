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
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field

import cv2
import numpy as np

from .decode import DEFAULT_MAX_PIXELS, decode_image
from .errors import IndexFormatError

FEATURE_VERSION = 3
SEED_SIDE = 256
THUMB_SIDE = 32
HUE_BINS = 12
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
    f = DETAIL_SIDE / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)


def detail_orb(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ORB keypoints and descriptors of a :func:`detail_gray` image."""
    global _detail_orb
    if _detail_orb is None:
        _detail_orb = cv2.ORB.create(nfeatures=DETAIL_FEATURES, fastThreshold=DETAIL_FAST_THRESHOLD)
    return _orb_arrays(_detail_orb, gray)


def colour_signature(bgr: np.ndarray) -> np.ndarray:
    """Hue histogram (HUE_BINS bins, weighted by saturation, summing to 1 or all 0 for a gray
    image) followed by the mean saturation in [0, 1]; float32 of length HUE_BINS + 1."""
    h, w = bgr.shape[:2]
    f = 64 / max(h, w)
    small = cv2.resize(bgr, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
    saturation = hsv[:, :, 1].astype(np.float32).ravel() / 255.0
    hue_bin = (hsv[:, :, 0].astype(np.int32).ravel() * HUE_BINS) // 180
    hist = np.bincount(hue_bin, weights=saturation, minlength=HUE_BINS).astype(np.float32)
    total = float(hist.sum())
    if total > 0:
        hist /= total
    return np.append(hist, np.float32(saturation.mean())).astype(np.float32)


def thumbnail(gray: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-norm 32x32 float32 thumbnail (flattened) of a 256x256 grayscale."""
    small = cv2.resize(gray, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)
    small -= small.mean()
    norm = float(np.linalg.norm(small))
    return (small / norm if norm > 0 else small).reshape(-1)


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
    # Queries keep their detail image so the mirrored query can be featurised; not stored.
    detail_image: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def keypoint_count(self) -> int:
        return int(self.descriptors.shape[0])

    def to_bytes(self) -> bytes:
        """Serialise as a versioned ``.npz`` record (no pickle)."""
        meta = {"version": FEATURE_VERSION, "sha256": self.sha256, "width": self.width, "height": self.height}
        buffer = io.BytesIO()
        np.savez_compressed(
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
            re-extract the features from the image.
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
                )
        except IndexFormatError:
            raise
        except Exception as exc:  # zipfile/ValueError/KeyError: any damage means "rebuild"
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
) -> ImageFeatures:
    """Features from the seed's 256x256 ``gray``, the 512 px ``detail`` grayscale (None: no
    detail features) and a :func:`colour_signature`."""
    keypoints, descriptors = seed_orb(gray)
    if detail is None:
        detail_keypoints, detail_descriptors = np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8)
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


def features_from_bgr(bgr: np.ndarray, *, sha256: str, keep_detail_image: bool = False) -> ImageFeatures:
    """Features of an already decoded BGR image whose original bytes hash to ``sha256``."""
    return features_from_images(
        seed_gray(bgr),
        detail_gray(bgr),
        colour_signature(bgr),
        sha256=sha256,
        width=int(bgr.shape[1]),
        height=int(bgr.shape[0]),
        keep_detail_image=keep_detail_image,
    )


def extract_features(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, query: bool = True) -> ImageFeatures:
    """Decode image bytes and compute their features.

    Raises
    ------
    ImageError
        The bytes are not a usable image (see :func:`harmony_image.decode.decode_image`).

    ``query=True`` keeps the 512 px grayscale in memory so default scoring can also match the
    mirrored query at full detail; indexers pass ``query=False``. Records never store it.
    """
    bgr = decode_image(data, max_pixels=max_pixels)
    return features_from_bgr(bgr, sha256=hashlib.sha256(data).hexdigest(), keep_detail_image=query)
