"""The real-resolution set: 1-12 MP camera-size JPEGs as catalog images and as queries, so that
decoding, feature extraction and verification cost what they cost on real catalogs.

The project ships no camera photos, so by default the set is *built* from the photos bundled in
scikit-image's wheel (the same ones :mod:`benchmarks.datasets` uses): each is resampled to a
camera resolution of 1-12 MP (:data:`MEGAPIXELS`, cycled) and given sensor-like grain, which is
also what a real photo's JPEG entropy (file size, decode time) looks like. ``--photos DIR`` uses
the photos of a folder instead (e.g. ``../shared/bench/originals/photos``; read, never copied
into the repository), resampled the same way. The report says which one was used.

* **Catalog**: every photo but a few held out, at its resolution class, then synthetic
  distractors (:func:`benchmarks.datasets.distractor`, drawn at 200-700 px) resampled to the
  same classes with the same grain, up to the requested size — real-size files for the seed
  method to decode.
* **Queries**: every photo (held-out ones are negatives) under :data:`TRANSFORMS`, each
  re-encoded at a camera resolution (the resize goes to another class).

Cached under ``.bench/realres-v1-s<seed>-<source>/``; distractor ``i`` depends only on
``(seed, i)``, so a larger catalog extends a smaller one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from . import datasets

FORMAT = "realres-v1"
MEGAPIXELS = (1.0, 12.0, 2.0, 8.0, 3.0, 6.0, 1.5, 4.0)  # resolution classes, cycled
GRAIN = 2.5  # sensor-like noise (grey levels, standard deviation)
JPEG_QUALITY = 90
HELD_OUT_SHARE = 0.2

Log = Callable[..., None]


def _grain_tile(seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 0x6AA1])
    return np.clip(rng.normal(0.0, GRAIN, (509, 509, 3)).round(), -127, 127).astype(np.int16)


def to_megapixels(img: np.ndarray, megapixels: float, grain: np.ndarray) -> np.ndarray:
    """``img`` resampled (aspect kept) to about ``megapixels`` million pixels, plus grain."""
    h, w = img.shape[:2]
    f = math.sqrt(megapixels * 1e6 / (h * w))
    size = (max(16, round(w * f)), max(16, round(h * f)))
    out = cv2.resize(img, size, interpolation=cv2.INTER_CUBIC if f > 1 else cv2.INTER_AREA)
    reps = (-(-out.shape[0] // grain.shape[0]), -(-out.shape[1] // grain.shape[1]), 1)
    noise = np.tile(grain, reps)[: out.shape[0], : out.shape[1]]
    return np.clip(out.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _hflip(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.ascontiguousarray(img[:, ::-1])


# (name, transform at full resolution, resolution class offset (None: keep), JPEG quality)
TRANSFORMS: tuple[tuple[str, Callable[[np.ndarray, np.random.Generator], np.ndarray], int | None, int], ...] = (
    ("resize", lambda im, r: im, 3, JPEG_QUALITY),
    ("crop_random_70", lambda im, r: datasets._crop(im, 0.7, r), None, JPEG_QUALITY),
    ("hflip", _hflip, None, JPEG_QUALITY),
    ("jpeg_q50", lambda im, r: im, None, 50),
    ("rotate_10", lambda im, r: datasets._rotate_small(im, 10.0), None, JPEG_QUALITY),
    ("text_overlay", datasets._caption, None, JPEG_QUALITY),
)
TRANSFORM_NAMES = tuple(t[0] for t in TRANSFORMS)


@dataclass
class RealResSet:
    root: Path
    source: str  # "scikit-image's bundled photos" or the --photos folder
    photos: list[str]  # catalog photo files (under photos/)
    distractors: list[str]  # under distractors/, in order
    queries: dict[str, str | None]  # query file -> catalog key of its original (None: negative)
    transforms: dict[str, str]
    megapixels: dict[str, float]  # file (photos/..., distractors/..., queries/...) -> megapixels

    def catalog(self, size: int) -> list[tuple[str, Path]]:
        need = size - len(self.photos)
        if need < 0 or need > len(self.distractors):
            raise ValueError(f"catalog of {size}: {len(self.photos)} photos and {len(self.distractors)} distractors")
        items = [(f"photos/{n}", self.root / "photos" / n) for n in self.photos]
        items += [(f"distractors/{n}", self.root / "distractors" / n) for n in self.distractors[:need]]
        return items

    def query_path(self, name: str) -> Path:
        return self.root / "queries" / name


def _encode(img: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _write_distractors(args: tuple[int, str, list[int]]) -> dict[str, float]:
    seed, folder, indices = args
    grain = _grain_tile(seed)
    sizes = {}
    for i in indices:
        mp = MEGAPIXELS[(i + 1) % len(MEGAPIXELS)]
        img = to_megapixels(datasets.distractor(seed, i), mp, grain)
        path = Path(folder) / f"r_{i:06d}.jpg"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(_encode(img, JPEG_QUALITY))
        os.replace(tmp, path)
        sizes[path.name] = img.shape[0] * img.shape[1] / 1e6
    return sizes


def build(cache: Path, *, size: int, photos: Path | None = None, seed: int = 7, log: Log = print) -> RealResSet:
    paths, source = datasets.source_photos(photos)
    tag = hashlib.sha256("\n".join(str(p.resolve()) for p in paths).encode()).hexdigest()[:8]
    root = Path(cache) / f"{FORMAT}-s{seed}-{tag}"
    truth_path = root / "truth.json"
    if not truth_path.exists():
        _build_photos(root, paths, source, seed, log)
    truth = json.loads(truth_path.read_text())
    need = max(0, size - len(truth["photos"]))
    folder = root / "distractors"
    folder.mkdir(parents=True, exist_ok=True)
    sizes_path = root / "distractor_megapixels.json"
    sizes: dict[str, float] = json.loads(sizes_path.read_text()) if sizes_path.exists() else {}
    missing = [i for i in range(need) if f"r_{i:06d}.jpg" not in sizes or not (folder / f"r_{i:06d}.jpg").exists()]
    if missing:
        workers = max(1, min(4, os.cpu_count() or 1))
        log(f"[realres] drawing {len(missing)} distractors at 1-12 MP into {folder} ({workers} processes)")
        chunks = [missing[j : j + 50] for j in range(0, len(missing), 50)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for part in pool.map(_write_distractors, [(seed, str(folder), c) for c in chunks]):
                sizes.update(part)
        sizes_path.write_text(json.dumps(sizes, indent=0, sort_keys=True))
    names = [f"r_{i:06d}.jpg" for i in range(need)]
    megapixels = {f"photos/{k}": v for k, v in truth["megapixels"]["photos"].items()}
    megapixels |= {f"queries/{k}": v for k, v in truth["megapixels"]["queries"].items()}
    megapixels |= {f"distractors/{n}": sizes[n] for n in names}
    return RealResSet(
        root=root,
        source=truth["source"],
        photos=truth["photos"],
        distractors=names,
        queries=truth["queries"],
        transforms=truth["transforms"],
        megapixels=megapixels,
    )


def _build_photos(root: Path, paths: list[Path], source: str, seed: int, log: Log) -> None:
    grain = _grain_tile(seed)
    rng = np.random.default_rng([seed, 0xB16])
    order = rng.permutation(len(paths))
    held_out = {paths[i].name for i in order[: max(1, round(len(paths) * HELD_OUT_SHARE))]}
    (root / "photos").mkdir(parents=True, exist_ok=True)
    (root / "queries").mkdir(parents=True, exist_ok=True)
    photos: list[str] = []
    queries: dict[str, str | None] = {}
    transforms: dict[str, str] = {}
    mp_photos: dict[str, float] = {}
    mp_queries: dict[str, float] = {}
    for j, path in enumerate(paths):
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            log(f"[realres] skipped {path} (not readable)")
            continue
        cls = j % len(MEGAPIXELS)
        original = to_megapixels(img, MEGAPIXELS[cls], grain)
        stem = path.stem
        answer = None
        if path.name not in held_out:
            name = f"{stem}.jpg"
            (root / "photos" / name).write_bytes(_encode(original, JPEG_QUALITY))
            photos.append(name)
            mp_photos[name] = original.shape[0] * original.shape[1] / 1e6
            answer = f"photos/{name}"
        for tname, apply, offset, quality in TRANSFORMS:
            trng = np.random.default_rng([seed, zlib.crc32(f"{stem}/{tname}".encode())])
            out = apply(original, trng)
            if offset is not None:
                out = to_megapixels(out, MEGAPIXELS[(cls + offset) % len(MEGAPIXELS)], grain)
            qname = f"{stem}__{tname}.jpg"
            (root / "queries" / qname).write_bytes(_encode(out, quality))
            queries[qname] = answer
            transforms[qname] = tname
            mp_queries[qname] = out.shape[0] * out.shape[1] / 1e6
    truth = {
        "format": FORMAT,
        "seed": seed,
        "source": source,
        "photos": sorted(photos),
        "held_out": sorted(held_out),
        "queries": queries,
        "transforms": transforms,
        "megapixels": {"photos": mp_photos, "queries": mp_queries},
    }
    (root / "truth.json").write_text(json.dumps(truth, indent=1, sort_keys=True))
    log(
        f"[realres] {len(photos)} catalog photos at 1-12 MP, {len(held_out)} held out, {len(queries)} queries "
        f"({sum(v is None for v in queries.values())} negatives) from {source} in {root}"
    )
