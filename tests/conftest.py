from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "images"
if str(ROOT) not in sys.path:  # benchmarks.seed_method is the tests' reference implementation
    sys.path.insert(0, str(ROOT))


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


CATALOG_PHOTOS = sorted(p.name for p in FIXTURES.glob("*.jpg") if "__" not in p.name and "_exif_" not in p.name)
QUERY_VARIANTS = sorted(p.name for p in FIXTURES.iterdir() if "__" in p.name)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def catalog_photos() -> dict[str, bytes]:
    """The catalog originals: name -> JPEG bytes."""
    return {name: fixture_bytes(name) for name in CATALOG_PHOTOS}
