"""`harmony ls` and `harmony rm` over a folder catalog (harmony_local.catalog.LocalCatalog)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harmony_image import HarmonyError, SearchParams, extract_features
from harmony_local.catalog import LocalCatalog
from harmony_local.cli import main
from tests.support import image_bytes, image_path


@pytest.fixture
def catalog_dir(tmp_path: Path) -> Path:
    root = tmp_path / "catalog"
    (root / "shoes").mkdir(parents=True)
    for name in ("chelsea.jpg", "coffee.jpg"):
        shutil.copyfile(image_path(name), root / name)
    shutil.copyfile(image_path("rocket.jpg"), root / "shoes" / "rocket.jpg")
    (root / "manifest.json").write_text(json.dumps([{"url": "https://example.com/c.jpg", "key": "coffee.jpg"}]))
    return root


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_ls_shows_key_size_url_and_indexed(catalog_dir: Path, capsys):
    code, out, _ = run_cli(capsys, "ls", "--catalog", str(catalog_dir), "--json")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["key"] for r in rows] == ["chelsea.jpg", "coffee.jpg", "shoes/rocket.jpg"]
    assert not any(r["indexed"] for r in rows)  # never synced
    assert rows[1] == {
        "key": "coffee.jpg",
        "size": (catalog_dir / "coffee.jpg").stat().st_size,
        "source_url": "https://example.com/c.jpg",
        "indexed": False,
    }

    assert run_cli(capsys, "index", "--catalog", str(catalog_dir))[0] == 0
    (catalog_dir / "chelsea.jpg").write_bytes(image_bytes("camera.jpg"))  # changed since the sync
    code, out, _ = run_cli(capsys, "ls", "--catalog", str(catalog_dir), "--json")
    assert {json.loads(x)["key"]: json.loads(x)["indexed"] for x in out.splitlines()} == {
        "chelsea.jpg": False,
        "coffee.jpg": True,
        "shoes/rocket.jpg": True,
    }
    code, out, _ = run_cli(capsys, "ls", "--catalog", str(catalog_dir), "--prefix", "shoes/")
    assert code == 0 and out.splitlines() == [
        f"shoes/rocket.jpg\t{(catalog_dir / 'shoes/rocket.jpg').stat().st_size}\tindexed\t"
    ]


def test_rm_deletes_the_file_and_its_record(catalog_dir: Path, capsys):
    assert run_cli(capsys, "index", "--catalog", str(catalog_dir))[0] == 0
    catalog = LocalCatalog(catalog_dir)
    sha = catalog.load_index().get("shoes/rocket.jpg").features.sha256
    assert (catalog.records_dir / f"{sha}.npz").exists()

    code, out, _ = run_cli(capsys, "rm", "--catalog", str(catalog_dir), "shoes/rocket.jpg")
    assert code == 0 and out.strip() == "removed: shoes/rocket.jpg"
    assert not (catalog_dir / "shoes/rocket.jpg").exists()
    catalog = LocalCatalog(catalog_dir)
    assert not (catalog.records_dir / f"{sha}.npz").exists()
    assert not catalog.needs_sync()  # forgotten, nothing left to reconcile
    index = catalog.load_index()
    assert sorted(index.keys()) == ["chelsea.jpg", "coffee.jpg"]
    query = extract_features(image_bytes("rocket.jpg"))
    assert "shoes/rocket.jpg" not in [r.key for r in index.search(query, SearchParams(k=5))]

    # a missing key: reported, exit 1, the others still removed
    code, out, err = run_cli(capsys, "rm", "--catalog", str(catalog_dir), "nope.jpg", "coffee.jpg")
    assert code == 1 and "missing: nope.jpg" in err and "removed: coffee.jpg" in out


@pytest.mark.parametrize("key", ["../outside.jpg", "shoes/../../outside.jpg", "/etc/passwd", ".harmony/catalog.json"])
def test_rm_refuses_keys_outside_the_folder(catalog_dir: Path, capsys, key: str):
    outside = catalog_dir.parent / "outside.jpg"
    outside.write_bytes(b"keep me")
    assert run_cli(capsys, "index", "--catalog", str(catalog_dir))[0] == 0
    code, _, err = run_cli(capsys, "rm", "--catalog", str(catalog_dir), "chelsea.jpg", key)
    assert code == 2 and "harmony: error:" in err
    assert outside.exists() and (catalog_dir / "chelsea.jpg").exists()  # a refused key deletes nothing
    assert (catalog_dir / ".harmony" / "catalog.json").exists()


def test_rm_refuses_a_symlink_out(catalog_dir: Path, tmp_path: Path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "x.jpg").write_bytes(b"keep me")
    (catalog_dir / "link").symlink_to(target)
    with pytest.raises(HarmonyError):
        LocalCatalog(catalog_dir).remove(["link/x.jpg"])
    assert (target / "x.jpg").exists()
