from __future__ import annotations

import http.server
import json
import os
import shutil
from pathlib import Path

import pytest

from harmony_image import SearchParams
from harmony_local.catalog import LocalCatalog
from harmony_local.cli import main
from tests.support import image_bytes, image_path, serving


@pytest.fixture
def catalog_dir(tmp_path: Path) -> Path:
    root = tmp_path / "catalog"
    (root / "shoes").mkdir(parents=True)
    for name in ("chelsea.jpg", "coffee.jpg", "moon.jpg"):
        shutil.copyfile(image_path(name), root / name)
    shutil.copyfile(image_path("rocket.jpg"), root / "shoes" / "rocket.jpg")
    return root


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_index_is_incremental(catalog_dir: Path):
    catalog = LocalCatalog(catalog_dir)
    first = catalog.sync()
    assert (first.added, first.featurised, first.total) == (4, 4, 4)
    assert not catalog.needs_sync()
    again = LocalCatalog(catalog_dir).sync()
    assert (again.added, again.unchanged, again.featurised) == (0, 4, 0)

    (catalog_dir / "moon.jpg").unlink()
    shutil.copyfile(image_path("coins.jpg"), catalog_dir / "coins.jpg")
    (catalog_dir / "chelsea.jpg").write_bytes(image_bytes("camera.jpg"))  # changed content, same name
    catalog = LocalCatalog(catalog_dir)
    assert catalog.needs_sync()
    report = catalog.sync()
    assert (report.added, report.updated, report.removed, report.featurised) == (1, 1, 1, 2)
    index = catalog.load_index()
    assert sorted(index.keys()) == ["chelsea.jpg", "coffee.jpg", "coins.jpg", "shoes/rocket.jpg"]
    assert (
        index.get("chelsea.jpg").features.sha256
        == LocalCatalog(catalog_dir).load_index().get("chelsea.jpg").features.sha256
    )
    records = list(LocalCatalog(catalog_dir).records_dir.glob("*.npz"))
    assert len(records) == 4  # the old chelsea and moon records were collected


def test_damaged_or_old_records_are_rebuilt(catalog_dir: Path):
    catalog = LocalCatalog(catalog_dir)
    catalog.sync()
    old = catalog.index_dir / "records-v0"
    old.mkdir()
    (old / "x.npz").write_bytes(b"old format")
    damaged = sorted(catalog.records_dir.glob("*.npz"))[0]
    damaged.write_bytes(damaged.read_bytes()[:100])
    index, report = LocalCatalog(catalog_dir).open()
    assert len(index) == 4 and report is not None and report.featurised == 1
    assert not old.exists()
    assert (
        LocalCatalog(catalog_dir).load_index().search(index.get("coffee.jpg").features, SearchParams(k=1))[0].key
        == "coffee.jpg"
    )


def test_read_only_catalog_keeps_its_index_in_the_cache(catalog_dir: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != catalog_dir)  # as for a non-root user
    code, out, _ = run_cli(
        capsys, "search", "--catalog", str(catalog_dir), "--json", "--k", "1", str(image_path("moon.jpg"))
    )
    assert code == 0 and json.loads(out)["results"][0]["key"] == "moon.jpg"
    assert not (catalog_dir / ".harmony").exists()
    assert list((tmp_path / "cache" / "harmony").glob("catalog-*/records-v*/*.npz"))


def test_explicit_index_dir(catalog_dir: Path, tmp_path: Path, capsys):
    code, _out, _ = run_cli(capsys, "index", "--catalog", str(catalog_dir), "--index-dir", str(tmp_path / "idx"))
    assert code == 0 and (tmp_path / "idx" / "catalog.json").exists() and not (catalog_dir / ".harmony").exists()


def test_copies_share_one_record(catalog_dir: Path):
    shutil.copyfile(catalog_dir / "coffee.jpg", catalog_dir / "coffee-copy.jpg")
    report = LocalCatalog(catalog_dir).sync()
    assert report.added == 5 and report.featurised == 4


def test_bad_files_are_reported_and_skipped_once(catalog_dir: Path):
    (catalog_dir / "notes.jpg").write_text("not an image")
    (catalog_dir / "half.jpg").write_bytes(image_bytes("coffee.jpg")[:3000])
    report = LocalCatalog(catalog_dir).sync()
    assert set(report.failed) == {"notes.jpg", "half.jpg"}
    assert "not an image" in report.failed["notes.jpg"] and "truncated" in report.failed["half.jpg"]
    catalog = LocalCatalog(catalog_dir)
    assert not catalog.needs_sync()
    assert len(catalog.load_index()) == 4


def test_manifest_gives_source_urls(catalog_dir: Path, capsys):
    (catalog_dir / "manifest.json").write_text(
        json.dumps(
            [
                {"url": "https://cdn.example.com/img/coffee.jpg"},
                {"url": "https://shop.example/r.jpg", "key": "shoes/rocket.jpg"},
            ]
        )
    )
    code, out, _ = run_cli(
        capsys,
        "search",
        "--catalog",
        str(catalog_dir),
        "--json",
        "--k",
        "4",
        str(image_path("coffee.jpg")),
        str(image_path("rocket.jpg")),
    )
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["results"][0] == {
        **lines[0]["results"][0],
        "key": "coffee.jpg",
        "url": "https://cdn.example.com/img/coffee.jpg",
    }
    assert lines[1]["results"][0]["url"] == "https://shop.example/r.jpg"
    assert {r["url"] for r in lines[0]["results"]} >= {"moon.jpg", "chelsea.jpg"}  # no manifest URL: the key


def test_search_json_contract(catalog_dir: Path, capsys):
    query = str(image_path("chelsea__hflip.jpg"))
    code, out, err = run_cli(capsys, "search", "--catalog", str(catalog_dir), "--json", "--scoring", "seed", query)
    assert code == 0 and "indexed" in err  # indexed on first use
    (line,) = out.splitlines()
    doc = json.loads(line)
    assert set(doc) == {"query", "results", "took_ms"} and doc["query"] == query
    assert len(doc["results"]) == 4
    for r in doc["results"]:
        assert set(r) == {"key", "url", "score", "ssim", "orb", "sha256"}
        assert r["score"] == pytest.approx((r["ssim"] + r["orb"]) / 2)
    scores = [r["score"] for r in doc["results"]]
    assert scores == sorted(scores, reverse=True)


def test_search_reports_bad_queries_and_continues(catalog_dir: Path, capsys, tmp_path: Path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    code, out, _ = run_cli(
        capsys,
        "search",
        "--catalog",
        str(catalog_dir),
        "--json",
        str(bad),
        str(image_path("moon.jpg")),
        str(tmp_path / "missing.jpg"),
    )
    assert code == 1
    docs = [json.loads(line) for line in out.splitlines()]
    assert docs[0]["error"]["code"] in ("truncated_image", "corrupt_image")
    assert docs[1]["results"][0]["key"] == "moon.jpg"
    assert "does not exist" in docs[2]["error"]["message"]


def test_human_output_and_usage_errors(catalog_dir: Path, capsys):
    code, out, _ = run_cli(capsys, "search", "--catalog", str(catalog_dir), str(image_path("coffee__resize_half.png")))
    assert code == 0 and "1. " in out and "coffee.jpg" in out.splitlines()[1]
    with pytest.raises(SystemExit) as exc:
        main(["search", "--catalog", str(catalog_dir), "--k", "0", "x.jpg"])
    assert exc.value.code == 2
    code, _, err = run_cli(capsys, "index", "--catalog", str(catalog_dir / "nope"))
    assert code == 2 and "does not exist" in err


def test_index_command_summary(catalog_dir: Path, capsys):
    code, out, _ = run_cli(capsys, "index", "--catalog", str(catalog_dir))
    assert code == 0 and "4 images (4 added" in out


def test_demo_runs_on_the_bundled_samples(tmp_path: Path, capsys):
    code, out, _ = run_cli(capsys, "demo", "--workdir", str(tmp_path / "demo"))
    assert code == 0
    blocks = out.split("\nquery ")[1:]
    assert len(blocks) == 3
    for block in blocks:
        query = block.split()[0]
        assert block.splitlines()[1].split()[-1] == query.split("__")[0] + ".jpg"
        assert len([line for line in block.splitlines() if line.strip()[:2] in {f"{i}." for i in range(1, 6)}]) == 5


@pytest.fixture
def image_server(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()
    shutil.copyfile(image_path("coffee.jpg"), root / "coffee.jpg")
    shutil.copyfile(image_path("moon.jpg"), root / "moon photo.jpg")
    (root / "readme.txt").write_text("hello")

    def handler(*a, **kw):
        return http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **kw)

    with serving(handler) as url:
        yield url


def test_import_downloads_and_keeps_source_urls(tmp_path: Path, image_server: str, capsys):
    urls = [
        f"{image_server}/coffee.jpg",
        f"{image_server}/moon%20photo.jpg",
        f"{image_server}/missing.jpg",
        f"{image_server}/readme.txt",
    ]
    manifest = tmp_path / "images.json"
    manifest.write_text(json.dumps([{"url": u} for u in urls]))
    catalog = tmp_path / "imported-catalog"
    code, out, err = run_cli(capsys, "import", str(manifest), "--catalog", str(catalog), "--allow-private")
    assert code == 1 and "imported 2 images" in out
    assert "missing.jpg" in err and "readme.txt" in err
    code, out, _ = run_cli(
        capsys, "search", "--catalog", str(catalog), "--json", "--k", "1", str(image_path("moon.jpg"))
    )
    assert json.loads(out)["results"][0]["url"] == urls[1]
    code, out, _ = run_cli(capsys, "import", str(manifest), "--catalog", str(catalog), "--allow-private")
    assert "(2 already there)" in out


def test_import_refuses_private_addresses_by_default(tmp_path: Path, image_server: str, capsys):
    manifest = tmp_path / "images.json"
    manifest.write_text(json.dumps([{"url": f"{image_server}/coffee.jpg"}]))
    code, _, err = run_cli(capsys, "import", str(manifest), "--catalog", str(tmp_path / "c"))
    assert code == 1 and "coffee.jpg" in err
    assert not list((tmp_path / "c").glob("imported/*"))
