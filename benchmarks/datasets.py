"""The benchmark's data sets: the package's own copy-detection set, and the shared reference set.

The package set (:func:`build`) is self-contained: no network, no ../shared.

* **Originals**: the real photographs that ship inside scikit-image's wheel (``skimage/data``;
  only the bundled files — nothing is fetched). Each is re-encoded as a catalog JPEG.
* **Negatives**: a few originals (seeded choice) are held out of the catalog; their transformed
  copies are queries whose right answer is "not in the catalog".
* **Queries**: every original (held out or not) under every transform in :data:`TRANSFORMS`
  (resizes, JPEG quality, crops, pad, brightness, grayscale, blur, noise, rotations, mirror,
  caption, stretch, thumbnail).
* **Distractors**: procedurally drawn images (:func:`distractor`) that fill the catalog up to the
  requested size. Distractor ``i`` depends only on ``(seed, i)``, so the 1,000-image catalog is
  a prefix of the 10,000-image one and a cache can be extended.

Everything is deterministic for a given seed. Built sets are cached under ``.bench/``::

    .bench/pkg-v1-s<seed>/originals/<name>.jpg     catalog originals
    .bench/pkg-v1-s<seed>/distractors/d_000000.jpg  synthetic distractors
    .bench/pkg-v1-s<seed>/queries/<name>__<transform>.<ext>
    .bench/pkg-v1-s<seed>/truth.json  {"queries": {file: original file | null}, "transforms": {file: name}}

``python -m benchmarks.datasets [--distractors N]`` builds (or extends) the cache.

The shared set (:func:`load_shared`) is built by the ``make_bench.py`` of a checkout of the shared
copy-detection benchmark (``../shared/bench``) into ``.bench/shared``, rebuilt only when that
script or its arguments change.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from harmony_image.features import colour_signature
from harmony_image.scoring import COLOURFUL

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = ROOT / ".bench"
FORMAT = "pkg-v4"
MAX_SIDE = 1024

# Real photographs bundled in scikit-image's wheel. Left out on purpose: motorcycle_right (the
# other half of a stereo pair with motorcycle_left — a "negative" that is really in the catalog),
# and drawings/diagrams (logo, chessboard, phantom, horse, microaneurysms) that are not photos.
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "clock_motion.png",
    "coffee.png",
    "coins.png",
    "color.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
    "text.png",
)
HELD_OUT = 4  # originals kept out of the catalog: their copies are the negative queries

Log = Callable[..., None]


# ---------------------------------------------------------------------------------------------
# Transforms. Each takes a BGR uint8 image and a numpy Generator and returns a BGR uint8 image.


def _resize_by(img: np.ndarray, fx: float, fy: float | None = None) -> np.ndarray:
    fy = fx if fy is None else fy
    h, w = img.shape[:2]
    size = (max(8, round(w * fx)), max(8, round(h * fy)))
    shrinking = fx * fy < 1
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def _fit(img: np.ndarray, side: int) -> np.ndarray:
    h, w = img.shape[:2]
    return _resize_by(img, side / max(h, w)) if max(h, w) > side else img


def _crop(img: np.ndarray, frac: float, rng: np.random.Generator | None) -> np.ndarray:
    h, w = img.shape[:2]
    ch, cw = max(8, round(h * frac)), max(8, round(w * frac))
    if rng is None:
        y, x = (h - ch) // 2, (w - cw) // 2
    else:
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return np.ascontiguousarray(img[y : y + ch, x : x + cw])


def _pad_white(img: np.ndarray, frac: float) -> np.ndarray:
    p = round(max(img.shape[:2]) * frac)
    return np.pad(img, ((p, p), (p, p), (0, 0)), mode="constant", constant_values=255)


def _affine_light(img: np.ndarray, gain: float, bias: float) -> np.ndarray:
    return np.clip(img.astype(np.float32) * gain + bias, 0, 255).round().astype(np.uint8)


def _grayscale(img: np.ndarray) -> np.ndarray:
    luma = img.astype(np.float32) @ np.array([0.114, 0.587, 0.299], np.float32)  # BGR weights
    g = np.clip(luma.round(), 0, 255).astype(np.uint8)
    return np.repeat(g[:, :, None], 3, axis=2)


def _gaussian_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    noisy = img.astype(np.float32) + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(noisy.round(), 0, 255).astype(np.uint8)


def _rotate_small(img: np.ndarray, degrees: float) -> np.ndarray:
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), degrees, 1.0)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def _caption(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A shop-style caption: a dark translucent band near the bottom with white text."""
    out = img.copy()
    h, w = out.shape[:2]
    band_h = max(12, h // 9)
    y0 = h - band_h - h // 20
    band = out[y0 : y0 + band_h].astype(np.float32)
    out[y0 : y0 + band_h] = (band * 0.45).astype(np.uint8)
    words = ["NEW IN", "LIMITED", "BEST PRICE", "FREE SHIPPING"][int(rng.integers(0, 4))]
    label = f"{words}  shop.example.org"
    scale = band_h / 40.0
    (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_DUPLEX, scale, 1)
    if tw > w * 0.95:
        scale *= w * 0.95 / tw
    thickness = max(1, round(scale * 1.5))
    x = max(2, int(w * 0.03))
    y = y0 + (band_h + int(th * scale / max(scale, 1e-6))) // 2
    cv2.putText(out, label, (x, min(h - 2, y)), cv2.FONT_HERSHEY_DUPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out


# The hard classes of issue 13 (misses measured on real shop and animal catalogs).
INSET_AREA = 1 / 3
"""Share of the composite picture's area the copy fills in ``inset_third`` (collages,
screenshots, a product placed on a banner)."""
HEAVY_CROP_AREA = 1 / 3
"""Share of the original's area ``crop_third_q40`` keeps before strong compression."""
HEAVY_CROP_AREAS = {"fifth": 1 / 5, "half": 1 / 2}
"""The same at other shares (``crop_fifth_q40``, ``crop_half_q40``): the query's crop looks
slide it at three sizes, for about a fifth, a third and a half of the catalog image."""
COLOURWAY_HUE = 60
"""Hue rotation in OpenCV's 0-180 hue units (120 degrees) that makes a catalog original's
``colourway``: the same garment, other colours — a look-alike, not a copy."""
RECOLOURED_HUE = 120
"""Hue rotation (240 degrees) of the ``recoloured`` queries: a colourway that is not in the
catalog, so the right answer is "not in the catalog"."""


def _inset(img: np.ndarray, rng: np.random.Generator, backdrop: np.ndarray) -> np.ndarray:
    """``img`` filling :data:`INSET_AREA` of a picture whose rest is ``backdrop`` (another
    photo), at a random place."""
    h, w = img.shape[:2]
    scale = (1.0 / INSET_AREA) ** 0.5
    canvas_h, canvas_w = round(h * scale), round(w * scale)
    canvas = cv2.resize(backdrop, (canvas_w, canvas_h), interpolation=cv2.INTER_AREA)
    y, x = int(rng.integers(0, canvas_h - h + 1)), int(rng.integers(0, canvas_w - w + 1))
    canvas[y : y + h, x : x + w] = img
    return _fit(canvas, MAX_SIDE)


def _mirror(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img[:, ::-1])


def _colour_cast(img: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    """A photo filter's colour cast: each of B, G, R scaled by its gain — a copy still, which
    a colour check that separates colourways must not reject."""
    return np.clip(img.astype(np.float32) * np.asarray(gains, np.float32), 0, 255).round().astype(np.uint8)


def hue_rotated(img: np.ndarray, hue: int) -> np.ndarray:
    """``img`` with every hue turned by ``hue`` (OpenCV's 0-180 units); lightness and
    saturation kept, so a grayscale copy of it is nearly the original's."""
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.int32) + hue) % 180).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def _heavy_crop(area: float) -> Callable[[np.ndarray, np.random.Generator, np.ndarray], np.ndarray]:
    """A crop keeping ``area`` of the original, at a random place."""
    return lambda im, r, b: _crop(im, area**0.5, r)


@dataclass(frozen=True)
class Transform:
    name: str
    apply: Callable[[np.ndarray, np.random.Generator, np.ndarray], np.ndarray]
    """(original, generator, backdrop: another photo, for composites) -> query image"""
    jpeg_quality: int = 90  # how the query file is encoded


TRANSFORMS: tuple[Transform, ...] = (
    Transform("resize_half", lambda im, r, b: _resize_by(im, 0.5)),
    Transform("resize_quarter", lambda im, r, b: _resize_by(im, 0.25)),
    Transform("thumbnail_128", lambda im, r, b: _fit(im, 128)),
    Transform("jpeg_q20", lambda im, r, b: im, jpeg_quality=20),
    Transform("jpeg_q50", lambda im, r, b: im, jpeg_quality=50),
    Transform("crop_center_80", lambda im, r, b: _crop(im, 0.8, None)),
    Transform("crop_random_70", lambda im, r, b: _crop(im, 0.7, r)),
    Transform("pad_white_10", lambda im, r, b: _pad_white(im, 0.10)),
    Transform("brighter", lambda im, r, b: _affine_light(im, 1.15, 35)),
    Transform("darker", lambda im, r, b: _affine_light(im, 0.65, -5)),
    Transform("grayscale", lambda im, r, b: _grayscale(im)),
    Transform("blur", lambda im, r, b: cv2.GaussianBlur(im, (0, 0), 2.0)),
    Transform("noise", lambda im, r, b: _gaussian_noise(im, 12.0, r)),
    Transform("rotate_10", lambda im, r, b: _rotate_small(im, 10.0)),
    Transform("rotate_90", lambda im, r, b: np.ascontiguousarray(np.rot90(im, k=-1))),
    Transform("hflip", lambda im, r, b: _mirror(im)),
    Transform("text_overlay", lambda im, r, b: _caption(im, r)),
    Transform("stretch_130", lambda im, r, b: _resize_by(im, 1.3, 1.0)),
    Transform("inset_third", _inset),
    Transform("crop_third_q40", lambda im, r, b: _crop(im, HEAVY_CROP_AREA**0.5, r), jpeg_quality=40),
    *(Transform(f"crop_{share}_q40", _heavy_crop(area), jpeg_quality=40) for share, area in HEAVY_CROP_AREAS.items()),
    Transform("rotate_bright", lambda im, r, b: _affine_light(_rotate_small(im, 4.0), 1.2, 25)),
    Transform("recoloured", lambda im, r, b: hue_rotated(im, RECOLOURED_HUE), jpeg_quality=75),
    Transform("warm_filter", lambda im, r, b: _colour_cast(im, (0.8, 0.95, 1.15)), jpeg_quality=75),
    # flipped reposts of the hard classes: a flipped copy may be small or cropped too
    Transform("hflip_inset_third", lambda im, r, b: _inset(_mirror(im), r, b)),
    Transform("hflip_crop_third_q40", lambda im, r, b: _mirror(_crop(im, HEAVY_CROP_AREA**0.5, r)), jpeg_quality=40),
)
NOT_A_COPY = frozenset({"recoloured"})
"""Transforms whose queries are look-alikes, not copies: their right answer is "not in the
catalog" whatever the original."""
RECOLOURINGS = frozenset({"recoloured"})
"""Transforms applied to colourful originals only."""


def copy_group(name: str) -> str:
    """The picture a set file (``<stem>.jpg``, ``<stem>__<transform>.jpg``) is a copy of: its
    photo's stem; a colourway's, for a colourway and its copies; its own name for a look-alike."""
    stem, _, transform = Path(name).stem.partition("__")
    if transform in NOT_A_COPY:
        return Path(name).stem
    if transform.startswith("colourway"):
        return f"{stem}__colourway"
    return stem


TRANSFORM_NAMES = tuple(t.name for t in TRANSFORMS)


# ---------------------------------------------------------------------------------------------
# Synthetic distractors.


def _value_noise(rng: np.random.Generator, h: int, w: int, octaves: int) -> np.ndarray:
    """Smooth multi-octave noise in [0, 1], (h, w, 3) float32."""
    field = np.zeros((h, w, 3), np.float32)
    amp, total = 1.0, 0.0
    cells = int(rng.integers(2, 5))
    for _ in range(octaves):
        grid = rng.random((cells, cells, 3), dtype=np.float32)
        field += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= float(rng.uniform(0.4, 0.65))
        cells *= 2
    field /= total
    lo, hi = float(field[::4, ::4].min()), float(field[::4, ::4].max())
    return np.clip((field - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def distractor(seed: int, i: int) -> np.ndarray:
    """Catalog filler ``i``: a procedurally drawn BGR image, distinct per ``(seed, i)``.

    A smooth colour field (multi-octave value noise through a random colour mixing matrix),
    optionally a periodic texture, then a random number of anti-aliased shapes (ellipses,
    polygons, thick lines, rectangles), a random caption, and sensor-like grain.
    """
    rng = np.random.default_rng([seed, 0x5EED, i])
    h, w = int(rng.integers(200, 701)), int(rng.integers(200, 701))
    field = _value_noise(rng, h, w, int(rng.integers(2, 6)))
    mix = rng.normal(0, 1, (3, 3)).astype(np.float32)
    img = field @ mix + rng.normal(0, 0.5, 3).astype(np.float32)
    sample = img[::4, ::4].reshape(-1, 3)  # range from a subsample: cheap, and clipped below
    lo, hi = sample.min(axis=0), sample.max(axis=0)
    img = (img - lo) / np.maximum(hi - lo, 1e-6) * 255.0
    if rng.random() < 0.35:  # a periodic texture (fabric, tiles)
        fx, fy = rng.uniform(0.02, 0.3, 2)
        phase = np.arange(w, dtype=np.float32)[None, :] * fx + np.arange(h, dtype=np.float32)[:, None] * fy
        img += float(rng.uniform(10, 40)) * np.sin(phase)[:, :, None]
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(3, 16))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = int(rng.integers(0, 4))
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        if kind == 0:
            axes = (int(rng.integers(4, max(5, w // 3))), int(rng.integers(4, max(5, h // 3))))
            thick = -1 if rng.random() < 0.6 else int(rng.integers(1, 7))
            cv2.ellipse(img, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, colour, thick, cv2.LINE_AA)
        elif kind == 1:
            n = int(rng.integers(3, 8))
            pts = np.stack([rng.integers(0, w, n), rng.integers(0, h, n)], axis=1).astype(np.int32)
            cv2.fillPoly(img, [pts], colour, cv2.LINE_AA)
        elif kind == 2:
            cv2.line(
                img,
                (cx, cy),
                (int(rng.integers(0, w)), int(rng.integers(0, h))),
                colour,
                int(rng.integers(1, 10)),
                cv2.LINE_AA,
            )
        else:
            x2, y2 = int(rng.integers(0, w)), int(rng.integers(0, h))
            cv2.rectangle(img, (cx, cy), (x2, y2), colour, -1 if rng.random() < 0.5 else int(rng.integers(1, 6)))
    if rng.random() < 0.7:
        letters = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
        text = "".join(letters[j] for j in rng.integers(0, len(letters), int(rng.integers(3, 12))))
        font = int(rng.choice([cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX]))
        cv2.putText(
            img,
            text,
            (int(rng.integers(0, max(1, w // 2))), int(rng.integers(20, h))),
            font,
            float(rng.uniform(0.4, 2.0)),
            tuple(int(c) for c in rng.integers(0, 256, 3)),
            int(rng.integers(1, 4)),
            cv2.LINE_AA,
        )
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.6, 2.5)))
    return _gaussian_noise(img, float(rng.uniform(0, 6)), rng)


def _encode_jpeg(img: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _write_distractors(args: tuple[int, str, list[int]]) -> int:
    seed, folder, indices = args
    for i in indices:
        path = Path(folder) / f"d_{i:06d}.jpg"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(_encode_jpeg(distractor(seed, i), 88))
        os.replace(tmp, path)
    return len(indices)


# ---------------------------------------------------------------------------------------------
# The set.


PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
SKIMAGE_SOURCE = "scikit-image's bundled photos"


def source_photos(photos: Path | None) -> tuple[list[Path], str]:
    """The photos a set is built from — ``photos`` (a folder), or scikit-image's bundled ones —
    and a description of where they come from."""
    if photos is None:
        return skimage_photo_paths(), SKIMAGE_SOURCE
    paths = sorted(p for p in photos.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    if len(paths) < 2 * HELD_OUT:
        raise ValueError(f"--photos {photos}: fewer than {2 * HELD_OUT} images")
    return paths, str(photos)


def skimage_photo_paths() -> list[Path]:
    import skimage  # dev dependency; only its bundled files are read

    folder = Path(skimage.__file__).resolve().parent / "data"
    paths = [folder / name for name in SKIMAGE_PHOTOS if (folder / name).is_file()]
    if len(paths) < 8:
        raise RuntimeError(f"expected scikit-image's bundled photos in {folder}; found {len(paths)}")
    return paths


@dataclass
class BenchSet:
    root: Path
    originals: list[str]  # catalog originals (file names under originals/)
    distractors: list[str]  # file names under distractors/, in order
    queries: dict[str, str | None]  # query file -> original file (None: negative)
    transforms: dict[str, str]
    held_out: list[str]  # photos whose copies are negatives

    def catalog(self, size: int) -> list[tuple[str, Path]]:
        """(key, path) of a catalog of ``size`` images: all originals, then distractors."""
        need = size - len(self.originals)
        if need < 0:
            raise ValueError(f"catalog size {size} is below the {len(self.originals)} originals")
        if need > len(self.distractors):
            raise ValueError(f"only {len(self.distractors)} distractors built; need {need}")
        items = [(f"originals/{n}", self.root / "originals" / n) for n in self.originals]
        items += [(f"distractors/{n}", self.root / "distractors" / n) for n in self.distractors[:need]]
        return items

    def query_path(self, name: str) -> Path:
        return self.root / "queries" / name

    def truth(self, names: list[str]) -> dict[str, str | None]:
        """Query -> catalog key of its original, or None for a negative."""
        return {q: (f"originals/{self.queries[q]}" if self.queries[q] else None) for q in names}


def build(
    cache: Path | str = DEFAULT_CACHE,
    *,
    distractors: int,
    seed: int = 7,
    photos: Path | None = None,
    workers: int | None = None,
    log: Log = print,
) -> BenchSet:
    """Build (or extend) the cached set with at least ``distractors`` distractors, from
    ``photos`` (a folder; default: scikit-image's bundled photos)."""
    paths, _ = source_photos(photos)
    name = f"{FORMAT}-s{seed}"
    if photos is not None:
        listing = "\n".join(f"{p.name} {p.stat().st_size}" for p in paths)
        name += "-" + hashlib.sha256(listing.encode()).hexdigest()[:8]
    root = Path(cache) / name
    truth_path = root / "truth.json"
    if not truth_path.exists():
        _build_photos(root, paths, seed, log)
    truth = json.loads(truth_path.read_text())
    folder = root / "distractors"
    folder.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(distractors) if not (folder / f"d_{i:06d}.jpg").exists()]
    if missing:
        workers = workers or max(1, min(4, os.cpu_count() or 1))
        log(f"[dataset] drawing {len(missing)} synthetic distractors into {folder} ({workers} processes)")
        chunks = [missing[j : j + 250] for j in range(0, len(missing), 250)]
        if workers > 1 and len(chunks) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                list(pool.map(_write_distractors, [(seed, str(folder), c) for c in chunks]))
        else:
            for c in chunks:
                _write_distractors((seed, str(folder), c))
    return BenchSet(
        root=root,
        originals=truth["catalog_originals"],
        distractors=[f"d_{i:06d}.jpg" for i in range(distractors)],
        queries=truth["queries"],
        transforms=truth["transforms"],
        held_out=truth["held_out"],
    )


def _build_photos(root: Path, paths: list[Path], seed: int, log: Log) -> None:
    rng = np.random.default_rng([seed, 0xC0DE])
    order = rng.permutation(len(paths))
    held_out = {paths[i].name for i in order[:HELD_OUT]}
    (root / "originals").mkdir(parents=True, exist_ok=True)
    (root / "queries").mkdir(parents=True, exist_ok=True)
    queries: dict[str, str | None] = {}
    transforms: dict[str, str] = {}
    catalog: list[str] = []
    images = {}
    for path in paths:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise RuntimeError(f"cannot read {path}")
        images[path.name] = _fit(img, MAX_SIDE)
    backdrops = sorted(held_out)
    for path in paths:
        img = images[path.name]
        stem = path.stem
        answer = None
        colourful = colour_signature(img)[-1] >= COLOURFUL
        if path.name not in held_out:
            answer = f"{stem}.jpg"
            (root / "originals" / answer).write_bytes(_encode_jpeg(img, 92))
            catalog.append(answer)
            if colourful:
                # the same picture in other colours, as its own catalog item: queries of the
                # original must rank it below the original, and its copies must find it
                colourway = f"{stem}__colourway.jpg"
                recolour = hue_rotated(img, COLOURWAY_HUE)
                (root / "originals" / colourway).write_bytes(_encode_jpeg(recolour, 92))
                catalog.append(colourway)
                name = f"{stem}__colourway_copy.jpg"
                (root / "queries" / name).write_bytes(_encode_jpeg(_resize_by(recolour, 0.5), 50))
                queries[name] = colourway
                transforms[name] = "colourway_copy"
        others = [b for b in backdrops if b != path.name]
        for t in TRANSFORMS:
            if t.name in RECOLOURINGS and not colourful:
                continue  # turning the hues of a gray picture changes nothing
            # per (original, transform) generator: adding a transform does not shift the others
            trng = np.random.default_rng([seed, zlib.crc32(f"{stem}/{t.name}".encode())])
            brng = np.random.default_rng([seed, zlib.crc32(f"{stem}/{t.name}/backdrop".encode())])
            backdrop = images[others[int(brng.integers(0, len(others)))]]
            out = t.apply(img, trng, backdrop)
            name = f"{stem}__{t.name}.jpg"
            (root / "queries" / name).write_bytes(_encode_jpeg(out, t.jpeg_quality))
            queries[name] = None if t.name in NOT_A_COPY else answer
            transforms[name] = t.name
    truth = {
        "format": FORMAT,
        "seed": seed,
        "catalog_originals": sorted(catalog),
        "held_out": sorted(held_out),
        "queries": queries,
        "transforms": transforms,
    }
    (root / "truth.json").write_text(json.dumps(truth, indent=1, sort_keys=True))
    log(
        f"[dataset] {len(catalog)} catalog originals, {len(held_out)} held out, {len(queries)} queries "
        f"({sum(v is None for v in queries.values())} negatives) in {root}"
    )


def evenly_spaced(queries: list[str], n: int) -> list[str]:
    """A fixed subset of ``n`` of ``queries``: every (len/n)-th, all of them when n >= len."""
    if n >= len(queries):
        return list(queries)
    step = len(queries) / n
    return [queries[int(i * step)] for i in range(n)]


# ---------------------------------------------------------------------------------------------
# The shared reference set (../shared/bench).

SHARED_ARGS = (
    "--originals",
    "originals/photos",
    "--views",
    "originals/views",
    "--per-original",
    "4",
    "--negatives",
    "4",
    "--seed",
    "1",
    "--synthetic",
    "20",
)
SHARED_COMMAND = "python make_bench.py OUT " + " ".join(SHARED_ARGS)


@dataclass
class SharedSet:
    root: Path
    items: list[tuple[str, Path]]  # (key, path) of every catalog image, in key order
    truth: dict[str, str | None]  # query file -> catalog key of its original (None: negative)
    transforms: dict[str, str]

    @property
    def query_names(self) -> list[str]:
        return sorted(self.truth)

    def query_path(self, name: str) -> Path:
        return self.root / "queries" / name


def build_shared(shared: Path, cache: Path, log: Log = print) -> Path:
    """Run ``shared``'s make_bench.py into ``cache``/shared unless that build is up to date."""
    out = cache / "shared"
    script = shared.resolve() / "make_bench.py"
    # absolute paths: the script runs with cwd=shared, where relative ones would not resolve
    cmd = [sys.executable, str(script), str(out.resolve()), *SHARED_ARGS]
    stamp = hashlib.sha256(script.read_bytes() + " ".join(cmd[2:]).encode()).hexdigest()
    stamp_file = cache / "shared.stamp"
    if (out / "truth.json").exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        return out
    log(f"[shared] building the reference set: {' '.join(cmd[1:])}")
    subprocess.run(cmd, cwd=shared, check=True)  # noqa: S603 - the shared checkout's own script, on purpose
    stamp_file.write_text(stamp)
    return out


def load_shared(shared: Path, cache: Path, log: Log = print) -> SharedSet:
    root = build_shared(shared, cache, log)
    truth_file: dict[str, Any] = json.loads((root / "truth.json").read_text())
    return SharedSet(
        root=root,
        items=sorted((f"catalog/{p.name}", p) for p in (root / "catalog").iterdir() if p.is_file()),
        truth={q: (f"catalog/{t}" if t else None) for q, t in truth_file["queries"].items()},
        transforms=truth_file["transforms"],
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=str(DEFAULT_CACHE))
    ap.add_argument("--distractors", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args(argv)
    s = build(a.cache, distractors=a.distractors, seed=a.seed)
    print(f"{s.root}: {len(s.originals)} originals, {len(s.distractors)} distractors, {len(s.queries)} queries")


if __name__ == "__main__":
    main()
