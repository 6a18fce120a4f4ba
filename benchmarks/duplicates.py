"""The duplicate report's benchmark: throughput, and precision/recall on planted copies.

    python -m benchmarks.duplicates [--size 1000] [--full-queries] [--doc docs/BENCHMARKS.md] [--doc-only]

The catalog (:mod:`benchmarks.datasets`, package set): the catalog originals (scikit-image's
bundled photos), *every* query file of the set planted beside them as a catalog image — each
original under every transform, including the copies of the held-out originals, whose only
duplicates are each other — and synthetic distractors up to ``--size``.

Ground truth: two catalog images are duplicates when they come from the same photo. Reported:

* images/s of the whole report (:func:`~harmony_image.duplicates.find_duplicates`: every entry
  queried with ``default`` scoring, then groups and keeper scores), after featurising (timed
  apart: a catalog is indexed once, not per report);
* pair precision and recall of the groups (two images in one group = a predicted pair), and of
  the pairs alone (found directly, before union-find) — mutual pairs (the default), and pairs
  found either way;
* per transform, the share of copies grouped with their photo's original (or, for a held-out
  photo, with another copy of it).

``--full-queries`` queries with features re-extracted from the image bytes (with the 512 px
detail image the stored records lack) instead of the stored ones, to measure what that costs
and gains.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations
from pathlib import Path
from typing import Any

from harmony_image import ImageFeatures, SearchIndex, extract_features
from harmony_image.duplicates import DuplicateGroup, duplicate_groups, find_edges, pairs_of
from harmony_image.scoring import SAME_IMAGE_THRESHOLD

from . import datasets
from .runners import machine

Pair = tuple[str, str]


def catalog_items(bset: datasets.BenchSet, size: int) -> list[tuple[str, Path]]:
    """(key, path): originals, every query file as a planted copy, then distractors up to ``size``."""
    copies = [(f"copies/{q}", bset.query_path(q)) for q in sorted(bset.queries)]
    base = [(f"originals/{n}", bset.root / "originals" / n) for n in bset.originals]
    need = size - len(base) - len(copies)
    if need < 0:
        raise ValueError(f"--size {size} is below the {len(base) + len(copies)} originals and planted copies")
    if need > len(bset.distractors):
        raise ValueError(f"only {len(bset.distractors)} distractors built; need {need}")
    return base + copies + [(f"distractors/{n}", bset.root / "distractors" / n) for n in bset.distractors[:need]]


def photo_of(key: str) -> str | None:
    """The picture a catalog key is a copy of (:func:`~benchmarks.datasets.copy_group`), None
    for a distractor."""
    if key.startswith("distractors/"):
        return None
    return datasets.copy_group(key)


def pairs_within(groups: Iterable[Iterable[str]]) -> set[Pair]:
    return {(a, b) for g in groups for a, b in combinations(sorted(g), 2)}


def precision_recall(predicted: set[Pair], truth: set[Pair]) -> dict[str, Any]:
    hits = len(predicted & truth)
    return {
        "predicted": len(predicted),
        "true": len(truth),
        "correct": hits,
        "precision": hits / len(predicted) if predicted else 1.0,
        "recall": hits / len(truth) if truth else 1.0,
    }


def featurise(items: list[tuple[str, Path]], *, query: bool, workers: int) -> dict[str, ImageFeatures]:
    def one(item: tuple[str, Path]) -> tuple[str, ImageFeatures]:
        return item[0], extract_features(item[1].read_bytes(), query=query)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(pool.map(one, items))


class Progress:
    """A line on stderr every 10% of the queries."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.shown = -1

    def __call__(self, done: int, total: int) -> None:
        tenth = done * 10 // total
        if tenth != self.shown:
            self.shown = tenth
            rate = done / max(time.perf_counter() - self.started, 1e-9)
            print(f"[duplicates] {done}/{total} queried, {rate:.1f} images/s", file=sys.stderr, flush=True)


def run(size: int, *, cache: Path, seed: int, full_queries: bool, workers: int) -> dict[str, Any]:
    bset = datasets.build(cache, distractors=size, seed=seed)  # at most size are needed; the cache keeps them
    items = catalog_items(bset, size)
    print(f"[duplicates] featurising {len(items)} catalog images ({workers} threads)", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    stored = featurise(items, query=False, workers=workers)
    index_s = time.perf_counter() - t0
    index = SearchIndex()
    for key, features in stored.items():
        index.add(key, features)
    index.packed()
    queries = None
    if full_queries:
        queries = featurise(items, query=True, workers=workers)

    t0 = time.perf_counter()
    edges = find_edges(index, query_features=queries.__getitem__ if queries else None, progress=Progress())
    edges_s = time.perf_counter() - t0
    groups = duplicate_groups(index, edges)  # mutual pairs, the default
    report_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    either_groups = duplicate_groups(index, edges, mutual=False)
    either_group_s = time.perf_counter() - t0

    by_photo: dict[str, list[str]] = {}
    for key, _ in items:
        photo = photo_of(key)
        if photo is not None:
            by_photo.setdefault(photo, []).append(key)
    truth = pairs_within(by_photo.values())
    result: dict[str, Any] = {
        "machine": machine(),
        "size": len(items),
        "threshold": SAME_IMAGE_THRESHOLD,
        "full_queries": full_queries,
        "photos": len(by_photo),
        "planted_copies": len(bset.queries),
        "index_s": index_s,
        "edges_s": edges_s,
        "report_s": report_s,
        "images_per_s": len(items) / report_s,
        "either_group_s": either_group_s,
    }
    for name, found, mutual in (("mutual", groups, True), ("either", either_groups, False)):
        result[name] = quality(found, pairs_of(edges, mutual=mutual), truth, by_photo, bset.transforms)
    return result


def quality(
    groups: list[DuplicateGroup],
    pairs: list[Any],
    truth: set[Pair],
    by_photo: dict[str, list[str]],
    transforms: dict[str, str],
) -> dict[str, Any]:
    """Pair precision/recall of the groups and of the pairs alone, copies grouped per transform,
    and the groups that mix photos or hold a distractor."""
    member_keys = [[m.key for m in g.members] for g in groups]
    group_of = {key: i for i, g in enumerate(member_keys) for key in g}
    per_transform: dict[str, Counter[str]] = {}
    for q, transform in transforms.items():
        key = f"copies/{q}"
        photo = photo_of(key)
        assert photo is not None
        partners = [k for k in by_photo[photo] if k != key]
        found = key in group_of and any(group_of.get(k) == group_of[key] for k in partners)
        counts = per_transform.setdefault(transform, Counter())
        counts["n"] += 1
        counts["found"] += int(found)
    mixed = [g for g in member_keys if len({photo_of(k) for k in g}) > 1 or any(photo_of(k) is None for k in g)]
    return {
        "groups": len(groups),
        "grouped_images": sum(len(g) for g in member_keys),
        "mixed_groups": [sorted(g) for g in mixed],
        "wrongly_grouped": sum(len(g) for g in mixed),
        "group_pairs": precision_recall(pairs_within(member_keys), truth),
        "pairs": precision_recall({(p.a, p.b) for p in pairs}, truth),
        "per_transform": {t: dict(c) for t, c in sorted(per_transform.items())},
    }


def print_result(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(f"duplicate report, {r['size']} images ({m['cpu']}, {m['cores']} cores, kernels {m['kernels']})")
    print(
        f"  featurise {r['index_s']:.1f} s; report {r['report_s']:.1f} s "
        f"(edges {r['edges_s']:.1f} s) = {r['images_per_s']:.1f} images/s"
        + ("  [queries re-featurised from the bytes]" if r["full_queries"] else "")
    )
    print(f"  truth: {r['photos']} photos, {r['planted_copies']} planted copies")
    for name in ("mutual", "either"):
        q = r[name]
        print(
            f"  pairs {name}: {q['groups']} groups of {q['grouped_images']} images; "
            f"{len(q['mixed_groups'])} groups mix photos or hold a distractor ({q['wrongly_grouped']} images)"
        )
        for label, key in (("groups", "group_pairs"), ("pairs alone", "pairs")):
            p = q[key]
            print(
                f"    {label}: precision {p['precision']:.3f} recall {p['recall']:.3f} "
                f"({p['correct']} of {p['predicted']} predicted, {p['true']} true)"
            )
        missed = {t: c for t, c in q["per_transform"].items() if c["found"] < c["n"]}
        print(
            "    copies grouped with their photo: "
            + (
                ", ".join(f"{t} {c['found']}/{c['n']}" for t, c in missed.items()) + "; the rest all"
                if missed
                else "all"
            )
        )
        for g in q["mixed_groups"][:5]:
            print(f"    mixed: {', '.join(g[:4])}{f' ... ({len(g)})' if len(g) > 4 else ''}")


BEGIN, END = "<!-- duplicates:begin -->", "<!-- duplicates:end -->"


def render(results: list[dict[str, Any]]) -> str:
    """The docs/BENCHMARKS.md section for the saved runs, smallest catalog first."""
    L = [
        BEGIN,
        "## Duplicate report",
        "",
        "Written by `make bench-duplicates` (`python -m benchmarks.duplicates --size N --doc docs/BENCHMARKS.md`;",
        "each run is saved under `.bench/duplicates/` and the section lists every saved run). The catalog: the",
        "package set's originals, every query file of the set planted beside them as a catalog image (each",
        "photo under each transform, the held-out photos' copies included: their only duplicates are each",
        "other), then distractors. Truth: two images are duplicates when they come from the same photo.",
        "Every image is queried with `default` scoring from its stored features; a found image scoring at",
        f"least {SAME_IMAGE_THRESHOLD} is an edge. *mutual* (the default): a pair is two images that find each",
        "other; *either* (`--pairing either`): one finds the other. Groups are the pairs' connected components:",
        "*group pairs* count every two images in one group as a predicted pair, *direct pairs* only the pairs found.",
        "Throughput: the whole report (queries, groups, keeper scores) over catalog images, features",
        "already extracted (a catalog is featurised once when indexed, not per report). *(full queries)*: each",
        "query re-featurised from the image's bytes, with the 512 px detail image that stored records lack",
        "(it verifies the mirrored query at detail resolution) — `--full-queries`.",
        "",
        "| catalog | report | pairing | groups (truth) | images in mixed groups | group pairs precision / recall "
        "| direct pairs precision / recall | copies not grouped with their photo |",
        "|---:|---:|---|---:|---:|---|---|---|",
    ]
    for r in results:
        for name in ("mutual", "either"):
            q = r[name]
            gp, dp = q["group_pairs"], q["pairs"]
            missed = ", ".join(
                f"{t} {c['n'] - c['found']}" for t, c in q["per_transform"].items() if c["found"] < c["n"]
            )
            speed = f"{r['images_per_s']:.1f} images/s ({r['report_s']:.0f} s)" if name == "mutual" else "same queries"
            L.append(
                f"| {r['size']:,}{' (full queries)' if r['full_queries'] else ''} | {speed} | {name} "
                f"| {q['groups']} ({r['photos']}) | {q['wrongly_grouped']} "
                f"| {gp['precision']:.3f} / {gp['recall']:.3f} | {dp['precision']:.3f} / {dp['recall']:.3f} "
                f"| {missed or 'none'} |"
            )
    L.append("")
    for r in results:
        m = r["machine"]
        busy = m["loadavg_start"][0] > m["cores"]
        avx512 = " with AVX-512" if "avx512" in m.get("levels", []) else ""
        L.append(
            f"- {r['size']:,} images{' (full queries)' if r['full_queries'] else ''}: {r['when']}, {m['cpu']}{avx512} "
            f"({m['cores']} cores, kernels `{m['kernels']}`), "
            f"load average at start {', '.join(f'{x:.2f}' for x in m['loadavg_start'])}"
            + (" — other work shared the CPU, so the throughput is lower than on an idle machine" if busy else "")
            + f"; featurising took {r['index_s']:.0f} s (not counted). Mixed groups, "
            + "; ".join(f"{name}: {mixed_summary(r[name]['mixed_groups'])}" for name in ("mutual", "either"))
            + "."
        )
    L += ["", END]
    return "\n".join(L)


def mixed_summary(groups: list[list[str]]) -> str:
    """Groups that mix photos or hold distractors, by what they hold: "grass 19 + moon 19"."""
    if not groups:
        return "none"
    parts = []
    only_distractors = [g for g in groups if all(photo_of(k) is None for k in g)]
    for g in groups:
        if g in only_distractors:
            continue
        counts = Counter(photo_of(k) or "distractor" for k in g)
        parts.append(" + ".join(f"{name} {n}" for name, n in sorted(counts.items())))
    if only_distractors:
        sizes = sorted(len(g) for g in only_distractors)
        parts.append(f"{len(only_distractors)} of distractors only ({sizes[0]}-{sizes[-1]} images)")
    return ", ".join(parts)


def write_section(doc: Path, results: list[dict[str, Any]]) -> None:
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    section = render(results)
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text)


def saved(cache: Path) -> list[dict[str, Any]]:
    runs = [json.loads(p.read_text()) for p in sorted((cache / "duplicates").glob("*.json"))]
    return sorted(runs, key=lambda r: (r["size"], r["full_queries"]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1000, help="catalog images (default 1000)")
    ap.add_argument("--full-queries", action="store_true", help="query with features re-extracted from the bytes")
    ap.add_argument("--cache", default=str(datasets.DEFAULT_CACHE))
    ap.add_argument("--dataset-seed", type=int, default=7)
    ap.add_argument("--workers", type=int, default=2, help="featurising threads (default 2)")
    ap.add_argument("--doc", help="write the saved runs as a section of this Markdown file (docs/BENCHMARKS.md)")
    ap.add_argument("--doc-only", action="store_true", help="only rewrite --doc's section from the saved runs")
    a = ap.parse_args(argv)
    cache = Path(a.cache)
    if not a.doc_only:
        started = time.time()
        result = run(a.size, cache=cache, seed=a.dataset_seed, full_queries=a.full_queries, workers=a.workers)
        result["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
        print_result(result)
        out = cache / "duplicates" / f"{a.size}{'-full' if a.full_queries else ''}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
    if a.doc:
        write_section(Path(a.doc), saved(cache))


if __name__ == "__main__":
    main()
