"""``harmony`` — index a local catalog folder and search it from the command line.

    harmony index  --catalog DIR
    harmony search --catalog DIR [--k 5] [--scoring seed|default] [--min-score S] [--json] QUERY...
    harmony ls     --catalog DIR [--prefix P] [--json]   key, size, source URL, indexed
    harmony rm     --catalog DIR KEY...                   delete the files, forget their records
    harmony duplicates --catalog DIR [--json | --csv] [--min-score S] [--pairing mutual|either]
                       [--keep largest|oldest|shortest]
    harmony import images.json --catalog DIR
    harmony import DIR --stack [--prefix P]   bulk ingest into the running local stack (IndexQueue)
    harmony demo   [--workdir DIR]
    harmony serve  [--port 3000] ...   the local stack: page + API + embedded S3 (harmony_local.stack)

Exit status: 0 on success, 1 when some queries or downloads failed, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO, TypeVar

from harmony_image import (
    DEFAULT_K,
    DEFAULT_SCORING,
    MAX_K,
    SCORINGS,
    HarmonyError,
    SearchIndex,
    SearchParams,
    __version__,
    extract_features,
)
from harmony_image.duplicates import KEEP_RULES, DuplicateReport, find_duplicates
from harmony_image.fetch import fetch_url
from harmony_image.params import check_k, check_min_score
from harmony_image.scoring import SAME_IMAGE_THRESHOLD

from .catalog import LocalCatalog, SyncReport
from .stack.cli import add_serve_arguments, run_serve

V = TypeVar("V")
R = TypeVar("R")


class ProgressBar:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, label: str, stream: TextIO = sys.stderr) -> None:
        self.label = label
        self.stream = stream
        self.enabled = stream.isatty()
        self.started = time.perf_counter()
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total == 0:
            return
        now = time.perf_counter()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        width = 30
        filled = int(width * done / total)
        rate = done / max(now - self.started, 1e-9)
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {rate:5.0f}/s")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _summary(report: SyncReport | None, catalog: LocalCatalog) -> str:
    if report is None:
        return f"index up to date: {len(catalog)} images"
    text = (
        f"indexed {catalog.root}: {len(catalog)} images "
        f"({report.added} added, {report.updated} updated, {report.removed} removed, {report.unchanged} unchanged; "
        f"{report.featurised} featurised in {report.seconds:.1f} s)"
    )
    if report.failed:
        text += f"; {len(report.failed)} skipped:" + "".join(
            f"\n  {k}: {why}" for k, why in sorted(report.failed.items())
        )
    return text


def cmd_index(args: argparse.Namespace) -> int:
    catalog = LocalCatalog(args.catalog, workers=args.workers, index_dir=args.index_dir)
    report = catalog.sync(progress=ProgressBar("indexing"))
    print(_summary(report, catalog))
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    catalog = LocalCatalog(args.catalog, index_dir=args.index_dir)
    for entry in catalog.entries(args.prefix):
        if args.json:
            print(json.dumps(entry, ensure_ascii=False))
        else:
            flag = "indexed" if entry["indexed"] else "-"
            print(f"{entry['key']}\t{entry['size']}\t{flag}\t{entry['source_url'] or ''}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    catalog = LocalCatalog(args.catalog, index_dir=args.index_dir)
    done = catalog.remove(args.keys)
    for key, what in done.items():
        print(f"{what}: {key}", file=sys.stdout if what == "removed" else sys.stderr)
    return 0 if all(w == "removed" for w in done.values()) else 1


def _read_query(query: str) -> bytes:
    if query.startswith(("http://", "https://")):
        return fetch_url(query)
    path = Path(query)
    if not path.is_file():
        raise HarmonyError(f"query file {query} does not exist")
    return path.read_bytes()


def _print_results(query: str, results: list, took_ms: float) -> None:
    print(f"{query}  ({took_ms:.1f} ms)")
    if not results:
        print("  no results")
    for rank, r in enumerate(results, 1):
        url = f"  {r.url}" if r.url != r.key else ""
        print(f"  {rank}. {r.score:.4f}  ssim {r.ssim:.3f}  orb {r.orb:.3f}  {r.key}{url}")


def search_params(args: argparse.Namespace) -> SearchParams:
    return SearchParams(k=args.k, scoring=args.scoring, min_score=args.min_score)


def run_search(index: SearchIndex, queries: list[str], args: argparse.Namespace) -> int:
    params = search_params(args)
    failures = 0
    for query in queries:
        started = time.perf_counter()
        try:
            features = extract_features(_read_query(query), scoring=params.scoring)
            results = index.search(features, params)
        except HarmonyError as exc:
            failures += 1
            if args.json:
                print(json.dumps({"query": query, "error": {"code": exc.code, "message": exc.message}}))
            else:
                print(f"{query}: error: {exc.message}", file=sys.stderr)
            continue
        took_ms = (time.perf_counter() - started) * 1000
        if args.json:
            print(json.dumps({"query": query, "results": [r.to_dict() for r in results], "took_ms": round(took_ms, 3)}))
        else:
            _print_results(query, results, took_ms)
    return 1 if failures else 0


def cmd_search(args: argparse.Namespace) -> int:
    catalog = LocalCatalog(args.catalog, workers=args.workers, index_dir=args.index_dir)
    index, report = catalog.open(progress=ProgressBar("indexing"))
    if report is not None:
        print(_summary(report, catalog), file=sys.stderr)
    return run_search(index, args.queries, args)


CSV_COLUMNS = ("group", "keep", "key", "url", "score", "sha256", "width", "height")


def _write_csv(report: DuplicateReport, stream: TextIO) -> None:
    """One row per group member; ``keep`` is true on the keeper's row."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for number, group in enumerate(report.groups, 1):
        for m in group.members:
            keep = "true" if m.key == group.keep else "false"
            writer.writerow([number, keep, m.key, m.url, f"{m.score:.4f}", m.sha256, m.width, m.height])


def cmd_duplicates(args: argparse.Namespace) -> int:
    catalog = LocalCatalog(args.catalog, workers=args.workers, index_dir=args.index_dir)
    index, sync = catalog.open(progress=ProgressBar("indexing"))
    if sync is not None:
        print(_summary(sync, catalog), file=sys.stderr)
    mtimes = {key: st.st_mtime for key, st in catalog.image_files() if key in index}
    report = find_duplicates(
        index,
        min_score=args.min_score if args.min_score is not None else SAME_IMAGE_THRESHOLD,
        mutual=args.pairing == "mutual",
        keep=args.keep,
        timestamps=mtimes,
        progress=ProgressBar("comparing"),
    )
    if args.csv:
        _write_csv(report, sys.stdout)
    else:
        print(json.dumps(report.to_dict(), ensure_ascii=False))
    grouped = sum(len(g.members) for g in report.groups)
    print(
        f"{report.images} images: {len(report.groups)} groups of duplicates ({grouped} images, "
        f"{grouped - len(report.groups)} beside their keepers) in {report.took_s:.1f} s",
        file=sys.stderr,
    )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .importer import import_urls

    if args.stack:
        from .stack.cli import NoStackError, run_import

        args.folder = Path(args.manifest)
        try:
            return run_import(args)
        except NoStackError as exc:
            print(f"harmony: error: {exc}", file=sys.stderr)
            return 2
    if not args.catalog:
        print("harmony: error: import needs --catalog DIR (a URL list) or --stack (a folder)", file=sys.stderr)
        return 2

    report = import_urls(
        Path(args.manifest), Path(args.catalog), workers=args.workers, allow_private=args.allow_private
    )
    print(f"imported {report.downloaded} images into {args.catalog} ({report.skipped} already there)")
    for url, why in report.failed.items():
        print(f"  failed {url}: {why}", file=sys.stderr)
    return 1 if report.failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.workdir), search_params(args))


def _argument(check: Callable[[V], R], convert: Callable[[str], V]) -> Callable[[str], R]:
    """An argparse type from an engine validator: its message becomes argparse's."""

    def parse(value: str) -> R:
        try:
            return check(convert(value))
        except (ValueError, HarmonyError) as exc:
            raise argparse.ArgumentTypeError(getattr(exc, "message", str(exc))) from None

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harmony", description="Find the catalog images most like a query image.")
    parser.add_argument("--version", action="version", version=f"harmony {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def search_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--k",
            type=_argument(check_k, int),
            default=DEFAULT_K,
            help=f"results per query (1-{MAX_K}, default {DEFAULT_K})",
        )
        p.add_argument(
            "--scoring",
            choices=SCORINGS,
            default=DEFAULT_SCORING,
            help="default (better, faster) or seed (the original, exact)",
        )
        p.add_argument(
            "--min-score",
            type=_argument(check_min_score, float),
            default=None,
            help="drop results scoring below this (0-1)",
        )

    index_help = "where the index lives (default DIR/.harmony, or ~/.cache/harmony/... for a read-only DIR)"
    p = sub.add_parser("index", help="index (or refresh the index of) a catalog folder")
    p.add_argument("--catalog", required=True, help="the catalog folder")
    p.add_argument("--index-dir", default=None, help=index_help)
    p.add_argument("--workers", type=int, default=None, help="parallel featurisers (default: cores + 1)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="search a catalog folder (indexing it first when needed)")
    p.add_argument("--catalog", required=True)
    p.add_argument("--index-dir", default=None, help=index_help)
    search_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line per query")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("queries", nargs="+", metavar="QUERY", help="image files (or http(s) URLs)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("ls", help="list a catalog folder: key, size, indexed, source URL (tab-separated)")
    p.add_argument("--catalog", required=True)
    p.add_argument("--index-dir", default=None, help=index_help)
    p.add_argument("--prefix", default="", help="only keys starting with this")
    p.add_argument(
        "--json", action="store_true", help='one JSON object per line: {"key", "size", "source_url", "indexed"}'
    )
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("rm", help="delete catalog files and forget their index records")
    p.add_argument("--catalog", required=True)
    p.add_argument("--index-dir", default=None, help=index_help)
    p.add_argument("keys", nargs="+", metavar="KEY", help="catalog-relative keys (as `harmony ls` shows them)")
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser("duplicates", help="groups of near-duplicate images in a catalog folder, with a keeper each")
    p.add_argument("--catalog", required=True)
    p.add_argument("--index-dir", default=None, help=index_help)
    p.add_argument("--workers", type=int, default=None)
    form = p.add_mutually_exclusive_group()
    form.add_argument(
        "--json",
        action="store_true",
        help='one JSON object (the default): {"groups": [{"keep", "members", "pairs"}], "images", "took_s"}',
    )
    form.add_argument("--csv", action="store_true", help=f"one row per group member: {','.join(CSV_COLUMNS)}")
    p.add_argument(
        "--min-score",
        type=_argument(check_min_score, float),
        default=None,
        help=f"default score from which two images are duplicates (0-1, default {SAME_IMAGE_THRESHOLD}: a copy)",
    )
    p.add_argument(
        "--pairing",
        choices=("mutual", "either"),
        default="mutual",
        help="pair two images when each finds the other (default), or when either finds the other: "
        "a few more copies, many more wrong groups (docs/BENCHMARKS.md)",
    )
    p.add_argument(
        "--keep",
        choices=KEEP_RULES,
        default="largest",
        help="the member to keep: most pixels (default), oldest file, or shortest key",
    )
    p.set_defaults(func=cmd_duplicates)

    p = sub.add_parser(
        "import", help="download a seed-format URL list into a catalog folder, or upload a folder to the local stack"
    )
    p.add_argument("manifest", metavar="SOURCE", help='JSON list of {"url": ...}; with --stack, a folder of images')
    p.add_argument("--catalog", default=None, help="the catalog folder the URLs are downloaded into")
    p.add_argument(
        "--stack",
        action="store_true",
        help="upload the folder SOURCE into the running local stack's catalog/ (progress, then indexed / "
        "not images / failed once IndexQueue drains)",
    )
    p.add_argument("--prefix", default="", help="with --stack: upload under catalog/PREFIX")
    p.add_argument("--timeout", type=float, default=3600, help="with --stack: seconds to wait for the index")
    p.add_argument("--port", type=int, default=None, help="with --stack: the stack's API port (when several run)")
    p.add_argument("--workdir", type=Path, default=None, help="with --stack: the stack's --workdir")
    p.add_argument("--workers", type=int, default=8, help="concurrent downloads (or uploads, with --stack)")
    p.add_argument(
        "--allow-private", action="store_true", help="allow URLs on private/loopback addresses (local testing)"
    )
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("demo", help="index the bundled sample catalog and search it")
    p.add_argument(
        "--workdir", default="harmony-demo", help="where the sample catalog is copied (default ./harmony-demo)"
    )
    search_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("serve", help="run the local stack: web page, API (template.yaml's handlers), embedded S3")
    add_serve_arguments(p)
    p.set_defaults(func=run_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HarmonyError as exc:
        print(f"harmony: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
