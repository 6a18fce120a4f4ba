"""Where the time goes: the kernels per CPU level (each forced in turn), per catalog image and per
query, beside OpenCV's matcher and the seed's method; the stages of a query (extraction, and each
scoring's steps from :func:`harmony_image.scoring.stage_times`); the real-resolution set with k
from 5 to 50.

Every level of :func:`harmony_image.kernels.levels` is measured in the same process, switched
with :func:`harmony_image.kernels.using` (what ``HARMONY_KERNEL=<level>`` does at import).
Per-image kernel timings run on one thread (:func:`harmony_image.kernels.serial`): they are
"per core"; per-query timings use the engine's kernel threads, as a search does.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from harmony_image import ImageFeatures, Scoring, SearchIndex, SearchParams, kernels, scoring
from harmony_image.decode import decode_image
from harmony_image.features import (
    colour_grid,
    colour_signature,
    colour_source,
    detail_gray,
    detail_orb,
    seed_gray,
    seed_orb,
    thumbnail,
)
from harmony_image.packed import VOTE_DESCRIPTORS, VOTE_KEY_BITS, subsample

from . import metrics, seed_method

REFERENCE_LEVEL = "avx2"  # the level the targets are stated for


def log(*parts: object) -> None:
    print(*parts, flush=True)


def ms(seconds: float) -> float:
    return seconds * 1000.0


def compiled_levels() -> list[str]:
    return [lv for lv in kernels.levels() if lv != "numpy"]


def reference_level() -> str:
    """AVX2 where the machine has it (the targets' level), else the fastest level."""
    levels = kernels.levels()
    return REFERENCE_LEVEL if REFERENCE_LEVEL in levels else levels[0]


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls (the least disturbed on a shared machine)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


# ---------------------------------------------------------------------------------------------
# Stages


def extract_stages(data: bytes) -> dict[str, float]:
    """ms per step of :func:`harmony_image.extract_features` on ``data`` (the same calls, timed one
    by one; the features are not assembled)."""
    out: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        out[name] = ms(now - t)
        t = now

    bgr = decode_image(data)
    lap("decode")
    hashlib.sha256(data).hexdigest()
    lap("sha256")
    gray = seed_gray(bgr)
    lap("seed gray (resize + gray)")
    detail = detail_gray(bgr)
    lap("detail gray (512 px)")
    colours = colour_source(bgr)
    lap("colour source (block average)")
    colour_signature(colours)
    colour_grid(colours)
    lap("colour histogram + grid")
    seed_orb(gray)
    thumbnail(gray)
    lap("ORB 256 px + thumbnail")
    detail_orb(detail)
    lap("detail ORB 512 px")
    return out


def stage_summary(per_query: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Median and mean ms of each stage over queries (a stage a query skipped counts 0)."""
    names: list[str] = []
    for d in per_query:
        names += [n for n in d if n not in names]
    return {
        n: {
            "median": float(np.median([d.get(n, 0.0) for d in per_query])),
            "mean": float(np.mean([d.get(n, 0.0) for d in per_query])),
        }
        for n in names
    }


def timed_search(idx: SearchIndex, f: ImageFeatures, scoring_name: Scoring, k: int) -> tuple[float, dict[str, float]]:
    """ms of one search and its stages."""
    with scoring.stage_times() as stages:
        t0 = time.perf_counter()
        idx.search(f, SearchParams(k=k, scoring=scoring_name))
        elapsed = ms(time.perf_counter() - t0)
    return elapsed, dict(stages)


def scoring_profile(
    idx: SearchIndex, features: dict[str, ImageFeatures], names: Sequence[str], scoring_name: Scoring, k: int
) -> dict[str, Any]:
    """Search time and stages of ``names`` (after one warm-up search)."""
    if names:
        idx.search(features[names[0]], SearchParams(k=k, scoring=scoring_name))
    totals, stages = [], []
    for q in names:
        t, st = timed_search(idx, features[q], scoring_name, k)
        totals.append(t)
        stages.append(st)
    return {"search": metrics.summary(totals), "stages": stage_summary(stages), "queries": len(names)}


# ---------------------------------------------------------------------------------------------
# Kernels per level, per catalog image (one thread)


def _per_image(queries: Sequence[ImageFeatures], fn: Callable[[ImageFeatures], object], count: int, reps: int) -> float:
    """Median over queries of the best-of-``reps`` ms of ``fn(query)``, per catalog image."""
    return float(np.median([ms(best_of(functools.partial(fn, q), reps)) / count for q in queries]))


def _kernels_per_image(
    catalog: Sequence[ImageFeatures], grays: np.ndarray, queries: Sequence[ImageFeatures], reps: int
) -> dict[str, float]:
    """ms per catalog image of each kernel at the level in use."""
    pack = kernels.DescriptorPack([f.descriptors for f in catalog])
    votes = kernels.DescriptorPack([subsample(f.descriptors, VOTE_DESCRIPTORS) for f in catalog])
    vote_keys = kernels.pack_keys(votes, VOTE_KEY_BITS)
    n = len(catalog)
    return {
        "ssim": _per_image(queries, lambda q: kernels.ssim_scores(q.gray, grays), n, reps),
        "cross_check": _per_image(queries, lambda q: kernels.cross_check_counts(q.descriptors, pack), n, reps),
        "votes": _per_image(
            queries,
            lambda q: kernels.hashed_close(
                subsample(q.descriptors, scoring.VOTE_QUERY_DESCRIPTORS),
                votes,
                vote_keys,
                VOTE_KEY_BITS,
                scoring.VOTE_THRESHOLD,
            ),
            n,
            reps,
        ),
        "votes_every_pair": _per_image(
            queries,
            lambda q: kernels.count_close(
                subsample(q.descriptors, scoring.VOTE_QUERY_DESCRIPTORS), votes, scoring.VOTE_THRESHOLD
            ),
            n,
            reps,
        ),
        "match_two": _per_image(queries, lambda q: kernels.match_two(q.descriptors, pack), n, reps),
    }


def kernel_table(features: Sequence[ImageFeatures], n_queries: int = 6, repeats: int = 5) -> dict[str, Any]:
    """ms per catalog image, one thread, of each kernel at every level, OpenCV's matcher and the
    seed's own tools, on the same real-photo descriptors and grayscales.

    ``features`` are both the catalog and (every n-th) the queries: real photos under the
    benchmark's transforms, ~500 ORB descriptors each, as a photo catalog has.
    """
    catalog = [f for f in features if len(f.descriptors)]
    queries = [catalog[int(i)] for i in np.linspace(0, len(catalog) - 1, n_queries)]
    grays = np.stack([f.gray for f in catalog])
    n = len(catalog)
    pairs = float(np.mean([len(q.descriptors) for q in queries]) * np.mean([len(f.descriptors) for f in catalog]))
    out: dict[str, Any] = {
        "images": n,
        "queries": len(queries),
        "descriptors_per_image": float(np.mean([len(f.descriptors) for f in catalog])),
        "pairs_per_image": pairs,
        "levels": {},
    }

    with kernels.serial():
        for level in kernels.levels():
            # the numpy fallback is slow: a slice of the catalog
            m = 24 if level == "numpy" else n
            with kernels.using(level):
                out["levels"][level] = _kernels_per_image(catalog[:m], grays[:m], queries, 1 if m < n else repeats)
            log(f"    kernels {level:>8}: " + ", ".join(f"{k} {v:.4f}" for k, v in out["levels"][level].items()))
    # OpenCV's matcher on the same descriptors, one thread
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        matcher = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
        m = min(n, 150)
        out["opencv_cross_check"] = _per_image(
            queries, lambda q: [matcher.match(q.descriptors, f.descriptors) for f in catalog[:m]], m, 2
        )
        # the seed's method per catalog image, without decoding: scikit-image SSIM, ORB of both,
        # the cross-checked matcher (benchmarks/seed_method.py)
        m = min(n, 12)
        out["seed_method_per_image"] = _per_image(
            queries, lambda q: [seed_method.compare(q.gray, f.gray) for f in catalog[:m]], m, 1
        )
        out["skimage_ssim"] = _per_image(
            queries, lambda q: [seed_method.ssim(q.gray, f.gray) for f in catalog[:m]], m, 1
        )
    finally:
        cv2.setNumThreads(threads)
    for lv in out["levels"].values():
        lv["opencv_ratio"] = out["opencv_cross_check"] / lv["cross_check"]
    return out


# ---------------------------------------------------------------------------------------------
# Queries per level


def level_timings(
    idx: SearchIndex, features: dict[str, ImageFeatures], names: Sequence[str], *, size: int, queries: int
) -> dict[str, Any]:
    """ms per query of both scorings at every level (forced), on ``queries`` evenly spaced queries
    (fewer for the slow levels), with the stages of each."""
    out: dict[str, Any] = {}
    for level in kernels.levels():
        if level == "numpy" and size > 2000:
            continue  # seconds per query: the per-image table has its rate
        count = max(3, queries // 4) if level in ("numpy", "portable") else queries
        subset = list(names[:: max(1, len(names) // count)][:count])
        with kernels.using(level):
            out[level] = {s: scoring_profile(idx, features, subset, s, metrics.K) for s in ("seed", "default")}
        log(
            f"    {level:>8} at {size:,}: seed {out[level]['seed']['search']['median']:.1f} ms, "
            f"default {out[level]['default']['search']['median']:.1f} ms (median of {len(subset)})"
        )
    return out
