"""Run the copy-detection benchmark: the seed's original method vs the engine's scorings.

    python -m benchmarks.run [--sizes 1000,10000] [--shared /work/shared/bench] [--quick]
                             [--photos DIR] [--realres-size 1000]
                             [--out docs/BENCHMARKS.md] [--plot docs/img/bench_scores.png]

For each catalog size (from :mod:`benchmarks.datasets`: scikit-image's bundled photos plus
synthetic distractors): index the catalog, then run the queries through

* the seed's original method (:mod:`benchmarks.seed_method`: decode + resize + SSIM + ORB of
  every catalog image per query) — only a few queries, and only up to ``--seed-method-max``
  catalog images, because it takes seconds per query;
* the engine with ``seed`` scoring (exact; its top-5 keys are checked against the seed method);
* the engine with ``default`` scoring;

and print / write speed, memory and quality numbers — per kernel level (every level the CPU has,
forced in turn) and per stage of a query (:mod:`benchmarks.speed`). Then the real-resolution set
(:mod:`benchmarks.realres`: 1-12 MP JPEGs as catalog images and queries, k from 5 to 50), built
from the project's own photos or from ``--photos DIR``. With ``--shared DIR`` (a checkout of the
shared copy-detection benchmark with ``make_bench.py``) its reference set is built into
``.bench/shared`` and the same quality metrics are reported for it.

This module is the command line and the order of the steps; :mod:`benchmarks.runners` runs and
times, :mod:`benchmarks.metrics` scores, :mod:`benchmarks.report` and :mod:`benchmarks.plots`
write the outputs.

Exit status: 0, or 1 when the engine's ``seed`` scoring disagrees with the seed method.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import datasets, metrics, plots, report, runners, speed
from .runners import log

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Harmony-Image copy-detection benchmark")
    ap.add_argument("--sizes", help="catalog sizes, comma-separated (default 1000,10000; --quick: 200)")
    ap.add_argument(
        "--shared", help="the shared benchmark directory (with make_bench.py); reported when given and present"
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: small catalog, 1 seed-method query, fewer queries")
    ap.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    ap.add_argument("--plot", help="PNG path (default: <out dir>/img/bench_scores.png)")
    ap.add_argument("--json", help="also dump all numbers as JSON here (default: .bench/last_run.json)")
    ap.add_argument("--cache", default=str(datasets.DEFAULT_CACHE))
    ap.add_argument("--dataset-seed", type=int, default=7)
    ap.add_argument(
        "--seed-method-queries", type=int, help="queries for the seed's original method (default 3; --quick: 1)"
    )
    ap.add_argument("--seed-method-max", type=int, default=1000, help="largest catalog the seed method runs on")
    ap.add_argument(
        "--seed-full-max", type=int, default=1000, help="largest catalog with engine seed scoring on every query"
    )
    ap.add_argument(
        "--seed-queries-large", type=int, default=36, help="queries for engine seed scoring above --seed-full-max"
    )
    ap.add_argument("--repeats", type=int, default=5, help="timing repeats of the engine on the seed-method queries")
    ap.add_argument(
        "--max-queries", type=int, help="use a fixed subset of this many queries (default all; --quick: 120)"
    )
    ap.add_argument(
        "--photos",
        help="a folder of real photos for the copy-detection and real-resolution sets (default: the project's)",
    )
    ap.add_argument("--realres-size", type=int, help="real-resolution catalog size (default 1000, --quick 60, 0 skips)")
    ap.add_argument(
        "--level-queries", type=int, help="queries per kernel level for ms/query per level (default 20; --quick: 4)"
    )
    ap.add_argument(
        "--baseline-commit",
        help="also run default scoring of the engine at this commit on every catalog, in the same run "
        "(benchmarks/baseline.py): its times and quality beside today's",
    )
    ap.add_argument("--from-json", help="only re-render the report and plot from a saved results JSON")
    a = ap.parse_args(argv)
    if a.seed_method_queries is None:
        a.seed_method_queries = 1 if a.quick else 3
    if a.max_queries is None and a.quick:
        a.max_queries = 120
    if a.quick:
        a.repeats = min(a.repeats, 2)
    if a.realres_size is None:
        a.realres_size = 60 if a.quick else 1000
    if a.level_queries is None:
        a.level_queries = 4 if a.quick else 20
    return a


def render(results: dict[str, Any], out_path: Path, plot_path: Path) -> None:
    plots.write_plot(plot_path, plots.plot_rows(results))
    report.write_report(out_path, results, report.relative_link(plot_path, out_path.parent))


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    out_path = Path(a.out)
    plot_path = Path(a.plot) if a.plot else out_path.parent / "img" / "bench_scores.png"
    if a.from_json:
        render(json.loads(Path(a.from_json).read_text()), out_path, plot_path)
        log(f"wrote {out_path}, {plot_path}")
        return 0
    sizes = [int(s) for s in (a.sizes or ("200" if a.quick else "1000,10000")).split(",") if s.strip()]
    json_path = Path(a.json) if a.json else Path(a.cache) / "last_run.json"
    cache = Path(a.cache)
    settings = runners.Settings(
        seed_method_queries=a.seed_method_queries,
        seed_method_max=a.seed_method_max,
        seed_full_max=a.seed_full_max,
        seed_queries_large=a.seed_queries_large,
        repeats=a.repeats,
        level_queries=a.level_queries,
        baseline_commit=a.baseline_commit,
    )
    started = time.perf_counter()
    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    results: dict[str, Any] = {
        "command": command.strip(),
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": runners.machine(),
    }
    log(f"machine: {results['machine']}")

    # the first build only makes the photos and queries, to learn how many originals there are
    photos = Path(a.photos) if a.photos else None
    bset = datasets.build(cache, distractors=0, seed=a.dataset_seed, photos=photos, log=log)
    need = max(0, max(sizes) - len(bset.originals))
    bset = datasets.build(cache, distractors=need, seed=a.dataset_seed, photos=photos, log=log)
    names = sorted(bset.queries)
    if a.max_queries:
        names = datasets.evenly_spaced(names, a.max_queries)
    results["dataset"] = {
        "root": str(bset.root),
        "originals": len(bset.originals),
        "colourways": sum("__colourway" in n for n in bset.originals),
        "source": datasets.source_photos(photos)[1],
        "held_out": len(bset.held_out),
        "queries": len(names),
        "negatives": sum(bset.queries[n] is None for n in names),
    }
    queries = runners.load_queries(names, bset.query_path)
    extract = {s: metrics.summary(list(queries.extract_ms_for(s).values())) for s in ("default", "seed")}
    results["dataset"]["extract_ms"] = extract
    log(
        f"{len(names)} queries, feature extraction {extract['default']['median']:.1f} ms median "
        f"(for seed scoring only {extract['seed']['median']:.1f} ms)"
    )

    log("\n== kernels per catalog image, one thread, every level ==")
    results["kernels"] = speed.kernel_table([queries.features[q] for q in names], n_queries=3 if a.quick else 6)
    results["sizes"] = [runners.bench_size(bset, size, queries, settings) for size in sorted(sizes)]
    if a.realres_size > 0:
        results["realres"] = runners.bench_realres(
            cache,
            size=a.realres_size,
            photos=photos,
            seed_method_queries=a.seed_method_queries,
            repeats=a.repeats,
            k_queries=8 if a.quick else 24,
        )
    if a.shared and (Path(a.shared) / "make_bench.py").exists():
        results["shared"] = runners.bench_shared(Path(a.shared), cache, settings)
    elif a.shared:
        log(f"--shared {a.shared}: no make_bench.py there; skipped")

    results["machine"]["loadavg_end"] = os.getloadavg()
    results["elapsed_s"] = time.perf_counter() - started
    render(results, out_path, plot_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1, default=str))
    log(f"\nwrote {out_path}, {plot_path}, {json_path} in {results['elapsed_s'] / 60:.1f} min")

    parity = [s["seed_method"]["parity_ok"] for s in results["sizes"] if "seed_method" in s]
    if "seed_method" in results.get("realres", {}):
        parity.append(results["realres"]["seed_method"]["parity_ok"])
    if "shared" in results and "seed_method" in results["shared"]:
        parity.append(results["shared"]["seed_method"]["parity_ok"])
    if not all(parity):
        log("FAIL: the engine's seed scoring did not return the seed method's top-5")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
