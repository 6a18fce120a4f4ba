"""``harmony demo``: the bundled sample catalog, indexed and searched, in one command."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from harmony_image import SearchParams, extract_features

from .catalog import LocalCatalog

SAMPLES = Path(__file__).parent / "samples"


def sample_queries() -> list[Path]:
    return sorted((SAMPLES / "queries").iterdir())


def prepare_catalog(workdir: Path) -> Path:
    """Copy the sample catalog into ``workdir/catalog`` (kept if already there)."""
    catalog = workdir / "catalog"
    catalog.mkdir(parents=True, exist_ok=True)
    for image in sorted((SAMPLES / "catalog").iterdir()):
        target = catalog / image.name
        if not target.exists():
            shutil.copyfile(image, target)
    return catalog


def run_demo(workdir: Path, params: SearchParams) -> int:
    catalog = LocalCatalog(prepare_catalog(workdir))
    report = catalog.sync()
    index = catalog.load_index()
    print(f"catalog: {catalog.root} — {len(index)} images indexed in {report.seconds:.2f} s")
    for query in sample_queries():
        started = time.perf_counter()
        results = index.search(extract_features(query.read_bytes()), params)
        print(f"\nquery {query.name} ({(time.perf_counter() - started) * 1000:.1f} ms, {params.scoring} scoring):")
        for rank, r in enumerate(results, 1):
            print(f"  {rank}. {r.score:.4f}  ssim {r.ssim:.3f}  orb {r.orb:.3f}  {r.key}")
    print(f"\nTry your own: harmony search --catalog {catalog.root} path/to/image.jpg")
    return 0
