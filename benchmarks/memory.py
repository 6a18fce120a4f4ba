"""Process memory per catalog image, and a segment's cold load (issue 11: two tiers).

``python -m benchmarks.memory [--images 10000] [--base 64]``

Two fresh processes hold the same ``--images`` entries:

* **records** — every entry added one by one (``SearchIndex.add``, each with arrays of its own as
  a record read from S3 has), then packed: both tiers in memory, as before segments;
* **segment** — the entries in one segment file (``SearchIndex.add_segment(Segment.open(...))``),
  then packed: the shortlist tier in memory, the verification tier memory-mapped. The file's
  pages are dropped from the page cache first (``posix_fadvise(DONTNEED)``), so the load and
  the first query read from disk.

Entries are synthetic by augmentation: ``--base`` distinct feature sets extracted from the sample
catalog's photos and copies of them (crops, mirror, rotations, scales, brightness), repeated
with distinct keys and content hashes — feature sizes are those of real photos.

Reported per image: RSS growth (``VmRSS``), its anonymous part (``RssAnon``: process memory) and
its file-backed part (``RssFile``: mapped segment pages, reclaimable page cache), and
``PackedCatalog.nbytes`` (arrays in process memory); the segment's load time (open + add +
pack) and the first and second ``default`` and ``seed`` queries after it.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from harmony_image import ImageFeatures, SearchIndex, SearchParams, decode_image, extract_features

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "src" / "harmony_local" / "samples"


def memory_mb() -> dict[str, float]:
    """VmRSS, RssAnon and RssFile of this process, MiB (Linux)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile"):
            out[name] = int(value.split()[0]) / 1024
    return out


def _copies(bgr: np.ndarray) -> list[np.ndarray]:
    h, w = bgr.shape[:2]
    return [
        bgr,
        bgr[:, ::-1],
        cv2.rotate(bgr, cv2.ROTATE_90_CLOCKWISE),
        bgr[h // 8 : h - h // 8, w // 8 : w - w // 8],
        bgr[: h * 2 // 3, w // 3 :],
        cv2.resize(bgr, (w // 2, h // 2), interpolation=cv2.INTER_AREA),
        cv2.convertScaleAbs(bgr, alpha=0.8, beta=30),
        cv2.rotate(bgr[h // 5 :, : w * 4 // 5], cv2.ROTATE_180),
    ]


def base_features(count: int) -> list[ImageFeatures]:
    """``count`` distinct catalog feature sets from the sample photos and copies of them."""
    out: list[ImageFeatures] = []
    for path in sorted((SAMPLES / "catalog").glob("*.jpg")):
        bgr = decode_image(path.read_bytes())
        for copy in _copies(bgr):
            ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(copy))
            assert ok
            out.append(extract_features(jpeg.tobytes(), query=False))
            if len(out) == count:
                return out
    return out


def entry_features(base: list[ImageFeatures], i: int, *, own_arrays: bool) -> ImageFeatures:
    """Entry i: base ``i % len(base)`` with its own content hash (and its own arrays if asked)."""
    f = replace(base[i % len(base)], sha256=hashlib.sha256(f"entry {i}".encode()).hexdigest())
    if own_arrays:  # as a record read from S3 has
        f = replace(
            f,
            gray=np.array(f.gray),
            keypoints=np.array(f.keypoints),
            descriptors=np.array(f.descriptors),
            thumb=np.array(f.thumb),
            detail_keypoints=np.array(f.detail_keypoints),
            detail_descriptors=np.array(f.detail_descriptors),
            colours=np.array(f.colours),
        )
    return f


def key_of(i: int) -> str:
    return f"catalog/products/{i:06d}.jpg"


def _timed_queries(index: SearchIndex, query: ImageFeatures) -> dict[str, float]:
    out = {}
    for scoring in ("default", "seed"):
        for attempt in ("first", "second"):
            t0 = time.perf_counter()
            index.search(query, SearchParams(k=10, scoring=scoring))
            out[f"{scoring}_{attempt}_ms"] = (time.perf_counter() - t0) * 1000
    return out


def child(mode: str, images: int, folder: Path) -> dict[str, Any]:
    base = [ImageFeatures.from_bytes(p.read_bytes()) for p in sorted(folder.glob("base-*.npz"))]
    query = extract_features((SAMPLES / "queries" / "chelsea__hflip.jpg").read_bytes())
    gc.collect()
    before = memory_mb()
    index = SearchIndex()
    t0 = time.perf_counter()
    if mode == "records":
        for i in range(images):
            index.add(key_of(i), entry_features(base, i, own_arrays=True))
    else:
        from harmony_image.segment import Segment

        index.add_segment(Segment.open(folder / "catalog.seg"))
    packed = index.packed()
    load_s = time.perf_counter() - t0
    gc.collect()
    after = memory_mb()
    result: dict[str, Any] = {
        "mode": mode,
        "images": len(index),
        "load_s": load_s,
        "packed_bytes_per_image": packed.nbytes / images,
        **{f"{name}_bytes_per_image": (after[name] - before[name]) * 2**20 / images for name in after},
    }
    if mode == "segment":
        result["shortlist_tier_bytes_per_image"] = packed.shortlist_nbytes / images
    result.update(_timed_queries(index, query))
    gc.collect()
    result.update({f"{name}_after_queries_mb": value - before[name] for name, value in memory_mb().items()})
    return result


def _drop_from_page_cache(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--base", type=int, default=64, help="distinct feature sets the entries repeat")
    parser.add_argument("--child", choices=("records", "segment"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.images, args.folder)))
        return 0

    from harmony_image.packed import CatalogEntry
    from harmony_image.segment import save_segment

    with tempfile.TemporaryDirectory(prefix="harmony-memory-") as tmp:
        folder = Path(tmp)
        base = base_features(args.base)
        for j, f in enumerate(base):
            (folder / f"base-{j:03d}.npz").write_bytes(f.to_bytes())
        t0 = time.perf_counter()
        size = save_segment(
            folder / "catalog.seg",
            (CatalogEntry(key_of(i), key_of(i), entry_features(base, i, own_arrays=False)) for i in range(args.images)),
        )
        write_s = time.perf_counter() - t0
        _drop_from_page_cache(folder / "catalog.seg")
        print(
            f"{args.images} entries from {len(base)} distinct feature sets; segment {size / 2**20:.0f} MiB "
            f"({size / args.images / 1024:.1f} KiB/image), written in {write_s:.1f} s"
        )
        runs = {}
        for mode in ("records", "segment"):
            cmd = [sys.executable, "-m", "benchmarks.memory", "--child", mode, "--images", str(args.images)]
            done = subprocess.run(  # noqa: S603 - this interpreter and this module, fixed arguments
                [*cmd, "--folder", str(folder)], capture_output=True, text=True, check=True, cwd=ROOT
            )
            runs[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    for mode, r in runs.items():
        print(f"\n{mode}: {r['images']} images, loaded and packed in {r['load_s']:.2f} s")
        print(
            f"  per image: RSS {r['VmRSS_bytes_per_image'] / 1024:.1f} KiB = anonymous "
            f"{r['RssAnon_bytes_per_image'] / 1024:.1f} KiB + file-backed "
            f"{r['RssFile_bytes_per_image'] / 1024:.1f} KiB; "
            f"packed arrays in memory {r['packed_bytes_per_image'] / 1024:.1f} KiB"
        )
        if "shortlist_tier_bytes_per_image" in r:
            print(f"  shortlist tier (arrays + row maps): {r['shortlist_tier_bytes_per_image'] / 1024:.2f} KiB/image")
        print(
            "  queries (k=10, ms): "
            + ", ".join(f"{s} {r[f'{s}_first_ms']:.0f} then {r[f'{s}_second_ms']:.0f}" for s in ("default", "seed"))
        )
        print(
            f"  after them: RSS +{r['VmRSS_after_queries_mb']:.0f} MiB "
            f"(anonymous +{r['RssAnon_after_queries_mb']:.0f}, file-backed +{r['RssFile_after_queries_mb']:.0f})"
        )
    print(json.dumps(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
