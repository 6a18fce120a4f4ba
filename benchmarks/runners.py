"""What runs and is timed: indexing a catalog, the engine's scorings over the queries, the seed's
original method, and the engine's shortlist; and, per catalog, the sequence of those runs whose
result dicts (plain JSON data) the report and the plot read.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2
import numpy as np

import harmony_image
from harmony_image import ImageFeatures, Scoring, SearchIndex, SearchParams, SearchResult, extract_features, kernels
from harmony_image import scoring as engine_scoring

from . import baseline, datasets, metrics, realres, speed
from .metrics import K, ScoringRun
from .report import fmt
from .seed_method import search as seed_search

# the seed method runs on a few queries: the first with an original not used yet, for each transform in turn
SEED_METHOD_TRANSFORMS = ("crop_random_70", "hflip", "jpeg_q50", "resize_half", "text_overlay", "rotate_10")


def log(*parts: object) -> None:
    print(*parts, flush=True)


def ms(seconds: float) -> float:
    return seconds * 1000.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def cpu_name(cpuinfo: str, *, fallback: str = "unknown") -> str:
    """The first CPU's model name in ``cpuinfo`` (the text of /proc/cpuinfo). A bare name that
    virtual machines give several generations ("AMD EPYC") gets its x86 family and model
    appended, so that figures from two machines are not read as one CPU's."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first processor's block ends
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    cpu = fields.get("model name") or fallback
    if not any(ch.isdigit() for ch in cpu) and "cpu family" in fields and "model" in fields:
        cpu += f" (family {fields['cpu family']}, model {fields['model']})"
    return cpu


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        cpu = cpu_name(Path("/proc/cpuinfo").read_text(), fallback=cpu)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        skimage_version = metadata.version("scikit-image")
    except metadata.PackageNotFoundError:  # pragma: no cover
        skimage_version = "not installed"
    return {
        "cpu": cpu,
        "cores": cores,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "scikit-image": skimage_version,
        "kernels": kernels.IMPLEMENTATION,
        "levels": list(kernels.levels()),
        "kernel_threads": getattr(kernels, "THREADS", None),
        "loadavg_start": os.getloadavg(),
    }


def engine_threshold() -> tuple[str, float] | None:
    """The engine's documented "same image" threshold, if it exposes one."""
    for module in (engine_scoring, harmony_image):
        value = getattr(module, "SAME_IMAGE_THRESHOLD", None)
        if isinstance(value, float):
            return f"{module.__name__}.SAME_IMAGE_THRESHOLD", value
    for module in (engine_scoring, harmony_image):
        for name in dir(module):
            value = getattr(module, name)
            if "THRESHOLD" in name.upper() and isinstance(value, float) and 0.0 < value < 1.0:
                return f"{module.__name__}.{name}", float(value)
    return None


@dataclass
class Settings:
    """How much of the slow work to do (see ``python -m benchmarks.run --help``)."""

    seed_method_queries: int
    seed_method_max: int
    seed_full_max: int
    seed_queries_large: int
    repeats: int
    level_queries: int = 20  # queries per kernel level for the per-level ms/query
    baseline_commit: str | None = None  # also run the engine at this commit (benchmarks/baseline.py)


@dataclass
class Queries:
    """Query files read and their features extracted, once for all catalogs."""

    names: list[str]
    data: dict[str, bytes]
    features: dict[str, ImageFeatures]
    extract_ms: dict[str, float]
    seed_extract_ms: dict[str, float] = field(default_factory=dict)
    """``extract_features(data, scoring="seed")``: what a seed scoring query extracts."""

    def extract_ms_for(self, scoring: str) -> dict[str, float]:
        return self.seed_extract_ms if scoring == "seed" else self.extract_ms


def load_queries(names: list[str], path_of: Callable[[str], Path]) -> Queries:
    data = {q: path_of(q).read_bytes() for q in names}
    features, extract_ms, seed_extract_ms = {}, {}, {}
    for q in names:
        t0 = time.perf_counter()
        features[q] = extract_features(data[q])
        extract_ms[q] = ms(time.perf_counter() - t0)
        t0 = time.perf_counter()
        extract_features(data[q], scoring="seed")
        seed_extract_ms[q] = ms(time.perf_counter() - t0)
    return Queries(names, data, features, extract_ms, seed_extract_ms)


# ---------------------------------------------------------------------------------------------
# The engine


def index_catalog(items: list[tuple[str, Path]]) -> tuple[SearchIndex, dict[str, Any]]:
    """Index ``items`` (key, path); time it, and measure record size and memory per image."""
    rss0 = current_rss_mb()
    idx, elapsed = index_items(items)
    t0 = time.perf_counter()
    packed = idx.packed()
    pack_s = time.perf_counter() - t0
    # stored record size and serialisation cost, on a sample
    step = max(1, len(items) // 200)
    sample = items[::step]
    rec_bytes, rec_s = [], 0.0
    for key, _ in sample:
        t0 = time.perf_counter()
        entry = idx.get(key)
        assert entry is not None
        rec_bytes.append(len(entry.features.to_bytes()))
        rec_s += time.perf_counter() - t0
    n = len(items)
    rss_delta_mb = current_rss_mb() - rss0
    info = {
        "images": n,
        "index_s": elapsed,
        "images_per_s": n / elapsed if elapsed else None,
        "pack_s": pack_s,
        "record_bytes_mean": float(np.mean(rec_bytes)),
        "record_sample": len(sample),
        "record_ms_mean": ms(rec_s / len(sample)),
        "packed_bytes_per_image": packed.nbytes / n,
        "rss_delta_mb": rss_delta_mb,
        "rss_bytes_per_image": rss_delta_mb * 2**20 / n,
    }
    return idx, info


def keys_and_scores(results: list[SearchResult]) -> tuple[list[str], list[float]]:
    return [r.key for r in results], [r.score for r in results]


def run_engine(idx: SearchIndex, queries: Queries, names: list[str], scoring: Scoring, warmup: int = 2) -> ScoringRun:
    """Search every query of ``names`` with ``scoring``, after ``warmup`` untimed searches."""
    run = ScoringRun(scoring)
    for q in names[:warmup]:
        idx.search(queries.features[q], SearchParams(k=K, scoring=scoring))
    for q in names:
        with engine_scoring.stage_times() as stages:
            t0 = time.perf_counter()
            results = idx.search(queries.features[q], SearchParams(k=K, scoring=scoring))
            run.search_ms[q] = ms(time.perf_counter() - t0)
        run.stages[q] = dict(stages)
        run.keys[q], run.scores[q] = keys_and_scores(results)
    return run


def search_timing(run: ScoringRun) -> dict[str, Any]:
    stages = speed.stage_summary(list(run.stages.values()))
    return {"search": metrics.summary(list(run.search_ms.values())), "stages": stages}


def scoring_quality(
    run: ScoringRun, truth: metrics.Truth, transforms: dict[str, str], names: list[str]
) -> dict[str, Any]:
    # calibrated for default only (also the baseline's, "default@<commit>")
    threshold = engine_threshold() if run.name.partition("@")[0] == "default" else None
    return metrics.quality(run, truth, transforms, names, threshold)


def shortlist_loss(
    idx: SearchIndex, queries: Queries, seed_run: ScoringRun, truth: metrics.Truth, names: list[str]
) -> dict[str, Any]:
    """How often default scoring's first pass drops what exhaustive scoring would keep.

    Per query, the exhaustive ``seed`` top-5 against the rows default scoring's first pass keeps
    for k=5 (``scoring.shortlist`` of the query and its mirror,
    ``scoring.shortlist_size(5)`` rows by each vote); see :func:`metrics.shortlist_loss`.
    """
    try:
        size = engine_scoring.shortlist_size(K)
        packed = idx.packed()
        kept = {}
        for q in names:
            f = queries.features[q]
            rows, _ = engine_scoring.shortlist(f, engine_scoring.mirrored(f), packed, size)
            kept[q] = {packed.keys[int(r)] for r in rows}
        return metrics.shortlist_loss(int(size), kept, seed_run.keys, truth, names)
    except Exception as exc:  # noqa: BLE001 - the engine's internals moved: report, don't fail the benchmark
        return {"error": f"{type(exc).__name__}: {exc}"}


# ---------------------------------------------------------------------------------------------
# The seed's original method against the engine


def pick_seed_method_queries(names: list[str], truth: metrics.Truth, transforms: dict[str, str], n: int) -> list[str]:
    """n positive queries, one per distinct transform and original, in a fixed order."""
    chosen: list[str] = []
    used: set[str] = set()
    for t in SEED_METHOD_TRANSFORMS:
        for q in names:
            answer = truth[q]
            if transforms[q] == t and answer is not None and answer not in used:
                chosen.append(q)
                used.add(answer)
                break
        if len(chosen) == n:
            break
    return chosen


def _extract_and_search(
    idx: SearchIndex, data: bytes, scoring: Scoring, repeats: int
) -> tuple[float, list[SearchResult]]:
    """Median ms of ``repeats`` warm extract+search runs of one query, and the last run's results."""
    samples = []
    results: list[SearchResult] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f = extract_features(data, scoring=scoring)
        results = idx.search(f, SearchParams(k=K, scoring=scoring))
        samples.append(ms(time.perf_counter() - t0))
    return float(np.median(samples)), results


def seed_method_vs_engine(
    idx: SearchIndex, items: list[tuple[str, Path]], queries: Queries, picks: list[str], repeats: int
) -> dict[str, Any]:
    """Time the seed method and the engine on ``picks``; check the engine's ``seed`` scoring returns its top-5.

    The engine runs at the reference kernel level (AVX2 where the CPU has it: the level the
    targets are stated for, forced) and at the fastest level the CPU has."""
    catalog = [(key, key, path.read_bytes()) for key, path in items]
    level, fastest = speed.reference_level(), kernels.levels()[0]
    rows = []
    for q in picks:
        t0 = time.perf_counter()
        ref = seed_search(queries.data[q], catalog, k=K)
        seed_s = time.perf_counter() - t0
        timings: dict[str, float] = {}
        for lv in dict.fromkeys((level, fastest)):
            with kernels.using(lv):
                timings[f"seed/{lv}"], seed_results = _extract_and_search(idx, queries.data[q], "seed", repeats)
                timings[f"default/{lv}"], _ = _extract_and_search(idx, queries.data[q], "default", repeats)
        eng_keys, eng_scores = keys_and_scores(seed_results)
        ref_keys, ref_scores = [r["key"] for r in ref], [r["score"] for r in ref]
        ok = metrics.same_top(ref_keys, ref_scores, eng_keys, eng_scores)
        max_diff = max((abs(a - b) for a, b in zip(ref_scores, eng_scores, strict=False)), default=0.0)
        rows.append(
            {
                "query": q,
                "seed_method_s": seed_s,
                "engine_seed_ms": timings[f"seed/{level}"],
                "engine_default_ms": timings[f"default/{level}"],
                "engine_seed_ms_fastest": timings[f"seed/{fastest}"],
                "engine_default_ms_fastest": timings[f"default/{fastest}"],
                "same_top5": ok,
                "max_score_diff": max_diff,
                "ref_top": ref_keys,
                "engine_top": eng_keys,
            }
        )
        log(
            f"    seed method {q}: {seed_s:.2f} s; engine ({level}) seed {timings[f'seed/{level}']:.1f} ms, default "
            f"{timings[f'default/{level}']:.1f} ms (extract+search); same top-5: {ok} (max |d score| {max_diff:.2e})"
        )
    sm = float(np.median([r["seed_method_s"] for r in rows]))

    def med(key: str) -> float:
        return float(np.median([r[key] for r in rows]))

    return {
        "queries": rows,
        "level": level,
        "fastest_level": fastest,
        "seed_method_s_median": sm,
        "engine_seed_ms_median": med("engine_seed_ms"),
        "engine_default_ms_median": med("engine_default_ms"),
        "ratio_seed": sm * 1000 / med("engine_seed_ms"),
        "ratio_default": sm * 1000 / med("engine_default_ms"),
        "ratio_seed_fastest": sm * 1000 / med("engine_seed_ms_fastest"),
        "ratio_default_fastest": sm * 1000 / med("engine_default_ms_fastest"),
        "parity_ok": all(r["same_top5"] for r in rows),
    }


def _log_quality(name: str, q: dict[str, Any], width: int, negatives: bool = False) -> None:
    counts = f"n={q['queries']}, {q['negatives']} negatives" if negatives else f"n={q['queries']}"
    log(
        f"  {name:>{width}}: recall@1 {fmt(q['recall@1'])}  recall@5 {fmt(q['recall@5'])}  MRR@5 {fmt(q['mrr@5'])}  "
        f"AUC {fmt(q['auc'])}  ({counts})"
    )


# ---------------------------------------------------------------------------------------------
# One catalog size of the package set; the shared set


def bench_size(bset: datasets.BenchSet, size: int, queries: Queries, settings: Settings) -> dict[str, Any]:
    log(f"\n== catalog {size:,} images ==")
    items = bset.catalog(size)
    idx, info = index_catalog(items)
    log(
        f"  indexed {info['images']:,} images at {info['images_per_s']:.0f} images/s; record "
        f"{info['record_bytes_mean'] / 1024:.1f} KiB/image; "
        f"packed {info['packed_bytes_per_image'] / 1024:.1f} KiB/image; "
        f"RSS +{info['rss_delta_mb']:.0f} MiB ({info['rss_bytes_per_image'] / 1024:.1f} KiB/image)"
    )
    names = queries.names
    truth = bset.truth(names)
    out: dict[str, Any] = {"size": size, "index": info}

    if size <= settings.seed_method_max and settings.seed_method_queries > 0:
        picks = pick_seed_method_queries(names, truth, bset.transforms, settings.seed_method_queries)
        log(f"  seed method on {len(picks)} queries (seconds each) ...")
        sm = seed_method_vs_engine(idx, items, queries, picks, settings.repeats)
        out["seed_method"] = sm
        log(
            f"  ratio seed-method / engine ({sm['level']}): seed scoring {sm['ratio_seed']:.0f}x, "
            f"default {sm['ratio_default']:.0f}x"
        )

    if size <= settings.seed_full_max:
        seed_names = names
    else:
        seed_names = datasets.evenly_spaced(names, settings.seed_queries_large)
    log(f"  engine default scoring: {len(names)} queries ...")
    default_run = run_engine(idx, queries, names, "default")
    log(f"  engine seed scoring: {len(seed_names)} queries ...")
    seed_run = run_engine(idx, queries, seed_names, "seed")
    out["seed_queries"] = len(seed_names)
    out["timing"] = {}
    for run, qs in ((seed_run, seed_names), (default_run, names)):
        out["timing"][run.name] = {
            **search_timing(run),
            "extract_plus_search": metrics.summary(
                [run.search_ms[q] + queries.extract_ms_for(run.name)[q] for q in qs]
            ),
        }
    out["quality"] = {
        "seed": scoring_quality(seed_run, truth, bset.transforms, seed_names),
        "default": scoring_quality(default_run, truth, bset.transforms, names),
    }
    if len(seed_names) < len(names):
        out["quality"]["default_on_seed_subset"] = scoring_quality(default_run, truth, bset.transforms, seed_names)
    out["shortlist"] = shortlist_loss(idx, queries, seed_run, truth, seed_names)
    if settings.baseline_commit:
        log(f"  the engine at {settings.baseline_commit}, default scoring, {len(names)} queries (child process) ...")
        before = baseline.run_baseline(settings.baseline_commit, items, {q: bset.query_path(q) for q in names})
        out["baseline"] = {
            "commit": settings.baseline_commit,
            "timing": {"search": metrics.summary(list(before.search_ms.values()))},
            "quality": scoring_quality(before, truth, bset.transforms, names),
        }
    if settings.level_queries > 0:
        log(f"  every kernel level, forced, {settings.level_queries} queries ...")
        out["levels"] = speed.level_timings(idx, queries.features, names, size=size, queries=settings.level_queries)
    out["peak_rss_mb"] = peak_rss_mb()
    for name, q in out["quality"].items():
        _log_quality(name, q, 22)
    for name, t in out["timing"].items():
        log(
            f"  {name:>22}: search {t['search']['median']:.1f} ms median / {t['search']['p90']:.1f} p90; "
            f"extract+search {t['extract_plus_search']['median']:.1f} / {t['extract_plus_search']['p90']:.1f}"
        )
    log(f"  shortlist: {out['shortlist']}")
    log(f"  peak RSS {out['peak_rss_mb']:.0f} MiB")
    del idx
    return out


def bench_shared(shared: Path, cache: Path, settings: Settings) -> dict[str, Any]:
    log("\n== ../shared/bench reference set ==")
    sset = datasets.load_shared(shared, cache, log)
    idx, info = index_catalog(sset.items)
    names = sset.query_names
    queries = load_queries(names, sset.query_path)
    out: dict[str, Any] = {
        "catalog": len(sset.items),
        "queries": len(names),
        "index": info,
        "command": datasets.SHARED_COMMAND,
    }
    if settings.seed_method_queries > 0:
        # spread over the positives, in name order (the shared set has no fixed transform list)
        positives = [q for q in names if sset.truth[q] is not None]
        picks = positives[:: max(1, len(names) // 3)][: settings.seed_method_queries]
        out["seed_method"] = seed_method_vs_engine(idx, sset.items, queries, picks, 1)
    seed_run = run_engine(idx, queries, names, "seed")
    default_run = run_engine(idx, queries, names, "default")
    out["quality"] = {
        "seed": scoring_quality(seed_run, sset.truth, sset.transforms, names),
        "default": scoring_quality(default_run, sset.truth, sset.transforms, names),
    }
    out["timing"] = {r.name: search_timing(r) for r in (seed_run, default_run)}
    out["shortlist"] = shortlist_loss(idx, queries, seed_run, sset.truth, names)
    for name, q in out["quality"].items():
        _log_quality(name, q, 8, negatives=True)
    return out


# ---------------------------------------------------------------------------------------------
# The real-resolution set (benchmarks/realres.py)


def index_items(items: Sequence[tuple[str, Path]]) -> tuple[SearchIndex, float]:
    """Index ``items`` (key, path): the index (not yet packed) and the seconds spent extracting."""
    idx = SearchIndex()
    elapsed = 0.0
    for key, path in items:
        data = path.read_bytes()
        t0 = time.perf_counter()
        idx.add(key, extract_features(data, query=False))
        elapsed += time.perf_counter() - t0
    return idx, elapsed


def bench_realres(
    cache: Path,
    *,
    size: int,
    photos: Path | None,
    seed_method_queries: int,
    repeats: int,
    ks: Sequence[int] = (5, 10, 20, 50),
    k_queries: int = 24,
) -> dict[str, Any]:
    """Index a catalog of ``size`` 1-12 MP images, time every query's extraction by step and both
    scorings (k=5 on all queries, k in ``ks`` on a subset, with the reference level forced), and
    the seed's method on a few queries; quality at k=5."""
    log(f"\n== real-resolution set, catalog {size:,} ==")
    rset = realres.build(cache, size=size, photos=photos, log=log)
    items = rset.catalog(size)
    idx, index_s = index_items(items)
    idx.packed()
    mp = [rset.megapixels[key] for key, _ in items]
    log(f"  indexed {size:,} images ({np.mean(mp):.1f} MP mean) at {size / index_s:.1f} images/s")
    names = sorted(rset.queries)
    data = {q: rset.query_path(q).read_bytes() for q in names}
    features: dict[str, ImageFeatures] = {}
    extract_ms: dict[str, float] = {}
    stages = []
    for q in names:
        stages.append(speed.extract_stages(data[q]))
        t0 = time.perf_counter()
        features[q] = extract_features(data[q])
        extract_ms[q] = ms(time.perf_counter() - t0)
    truth = {q: rset.queries[q] for q in names}
    out: dict[str, Any] = {
        "size": size,
        "source": rset.source,
        "photos": len(rset.photos),
        "queries": len(names),
        "negatives": sum(v is None for v in truth.values()),
        "transforms": list(realres.TRANSFORM_NAMES),
        "catalog_megapixels": metrics.summary(mp),
        "query_megapixels": metrics.summary([rset.megapixels[f"queries/{q}"] for q in names]),
        "catalog_bytes_mean": float(np.mean([p.stat().st_size for _, p in items])),
        "index_images_per_s": size / index_s,
        "extract": {"total": metrics.summary(list(extract_ms.values())), "stages": speed.stage_summary(stages)},
        "extract_by_class": _by_class(names, extract_ms, rset.megapixels),
    }
    # quality and timing of both scorings on every query, k=5, at the machine's fastest level
    runs = {}
    for s in ("default", "seed"):
        run = ScoringRun(s)
        for q in names:
            with engine_scoring.stage_times():
                t0 = time.perf_counter()
                results = idx.search(features[q], SearchParams(k=metrics.K, scoring=s))
                run.search_ms[q] = ms(time.perf_counter() - t0)
            run.keys[q], run.scores[q] = [r.key for r in results], [r.score for r in results]
        runs[s] = run
    out["quality"] = {
        s: metrics.quality(runs[s], truth, rset.transforms, names, engine_threshold() if s == "default" else None)
        for s in ("seed", "default")
    }
    out["timing"] = {s: metrics.summary(list(runs[s].search_ms.values())) for s in runs}
    # k from 5 to 50, both scorings, with the reference level forced
    level = speed.reference_level()
    subset = names[:: max(1, len(names) // k_queries)][:k_queries]
    out["k_level"] = level
    out["by_k"] = {}
    with kernels.using(level):
        for k in ks:
            out["by_k"][str(k)] = {s: speed.scoring_profile(idx, features, subset, s, k) for s in ("seed", "default")}
            b = out["by_k"][str(k)]
            log(
                f"  k={k:>2} ({level}): seed {b['seed']['search']['median']:.0f} ms, "
                f"default {b['default']['search']['median']:.0f} ms (median of {len(subset)} queries)"
            )
    if seed_method_queries > 0:
        positives = [q for q in names if truth[q] is not None]
        picks = positives[:: max(1, len(positives) // seed_method_queries)][:seed_method_queries]
        qs = Queries(names, data, features, extract_ms)
        out["seed_method"] = seed_method_vs_engine(idx, list(items), qs, picks, repeats)
        out["seed_method"]["query_megapixels"] = [rset.megapixels[f"queries/{q}"] for q in picks]
    for s, q in out["quality"].items():
        log(f"  {s:>8}: recall@1 {q['recall@1']:.3f}  AUC {q['auc']}")
    return out


def _by_class(names: Sequence[str], extract_ms: dict[str, float], megapixels: dict[str, float]) -> dict[str, Any]:
    """Extraction time by query resolution: up to 2 MP, 2-5 MP, over 5 MP."""
    classes = {"≤ 2 MP": (0.0, 2.05), "2–5 MP": (2.05, 5.05), "> 5 MP": (5.05, 1e9)}
    out = {}
    for label, (lo, hi) in classes.items():
        sel = [extract_ms[q] for q in names if lo <= megapixels[f"queries/{q}"] < hi]
        out[label] = metrics.summary(sel)
    return out
