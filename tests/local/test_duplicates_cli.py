"""``harmony duplicates`` on a folder of the sample photos with copies planted by OpenCV."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import cv2
import pytest

from harmony_image.scoring import SAME_IMAGE_THRESHOLD
from harmony_local.cli import main
from tests.support import CATALOG_NAMES, image_path

PLANTED = [
    ["chelsea.jpg", "copies/chelsea-half.jpg"],
    ["coffee.jpg", "copies/coffee copy.jpg"],
    ["copies/rocket-crop.png", "rocket.jpg"],
]


@pytest.fixture
def catalog_dir(tmp_path: Path) -> Path:
    """Every sample photo, and: coffee's bytes under another name, chelsea at half size
    re-encoded at JPEG quality 60, a crop of rocket saved as PNG."""
    root = tmp_path / "catalog"
    (root / "copies").mkdir(parents=True)
    for name in CATALOG_NAMES:
        shutil.copyfile(image_path(name), root / name)
    shutil.copyfile(image_path("coffee.jpg"), root / "copies" / "coffee copy.jpg")
    chelsea = cv2.imread(str(image_path("chelsea.jpg")))
    small = cv2.resize(chelsea, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    assert cv2.imwrite(str(root / "copies" / "chelsea-half.jpg"), small, [cv2.IMWRITE_JPEG_QUALITY, 60])
    rocket = cv2.imread(str(image_path("rocket.jpg")))
    h, w = rocket.shape[:2]
    assert cv2.imwrite(str(root / "copies" / "rocket-crop.png"), rocket[h // 8 : h - h // 6, w // 6 : w - w // 10])
    return root


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["duplicates", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_report_finds_the_planted_copies_and_nothing_else(catalog_dir: Path, capsys):
    code, out, err = run(capsys, "--catalog", str(catalog_dir))
    assert code == 0
    report = json.loads(out)
    assert set(report) == {"groups", "images", "took_s"}
    assert report["images"] == len(CATALOG_NAMES) + 3
    assert sorted(sorted(m["key"] for m in g["members"]) for g in report["groups"]) == PLANTED
    for group in report["groups"]:
        keeper, *others = group["members"]
        assert keeper["key"] == group["keep"] and keeper["score"] == 1.0
        assert set(keeper) == {"key", "url", "score", "sha256", "width", "height"}
        assert all(m["score"] >= SAME_IMAGE_THRESHOLD for m in others)
        assert all(p["score"] >= SAME_IMAGE_THRESHOLD for p in group["pairs"])
        # the default rule keeps the most pixels: the originals, not the half-size copy or the crop
        assert not group["keep"].startswith("copies/") or group["keep"] == "copies/coffee copy.jpg"
    coffee = next(g for g in report["groups"] if "coffee.jpg" in {m["key"] for m in g["members"]})
    assert coffee["keep"] == "coffee.jpg"  # same pixels: the shorter key
    assert [m["score"] for m in coffee["members"]] == [1.0, 1.0]
    assert coffee["members"][0]["sha256"] == coffee["members"][1]["sha256"]
    assert f"{len(CATALOG_NAMES) + 3} images: 3 groups of duplicates (6 images, 3 beside their keepers)" in err


def test_csv_and_keep_rules(catalog_dir: Path, capsys):
    old = (catalog_dir / "copies" / "chelsea-half.jpg").stat().st_mtime - 86400
    os.utime(catalog_dir / "copies" / "chelsea-half.jpg", (old, old))
    code, out, _ = run(capsys, "--catalog", str(catalog_dir), "--csv", "--keep", "oldest")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["group", "keep", "key", "url", "score", "sha256", "width", "height"]
    keepers = {r["key"] for r in rows if r["keep"] == "true"}
    assert "copies/chelsea-half.jpg" in keepers  # the older file
    assert len(keepers) == len({r["group"] for r in rows}) == 3
    assert sorted(r["key"] for r in rows) == sorted(k for group in PLANTED for k in group)

    code, out, _ = run(capsys, "--catalog", str(catalog_dir), "--keep", "shortest", "--pairing", "either")
    keeps = {g["keep"] for g in json.loads(out)["groups"]}
    assert keeps == {
        "chelsea.jpg",
        "coffee.jpg",
        "rocket.jpg",
    }  # the same groups: each copy and its original find each other


def test_min_score_one_groups_identical_files_only(catalog_dir: Path, capsys):
    code, out, _ = run(capsys, "--catalog", str(catalog_dir), "--min-score", "1")
    assert code == 0
    groups = json.loads(out)["groups"]
    assert [sorted(m["key"] for m in g["members"]) for g in groups] == [["coffee.jpg", "copies/coffee copy.jpg"]]


def test_a_catalog_without_copies_has_no_groups(tmp_path: Path, capsys):
    root = tmp_path / "plain"
    root.mkdir()
    for name in CATALOG_NAMES:
        shutil.copyfile(image_path(name), root / name)
    code, out, err = run(capsys, "--catalog", str(root), "--json")
    assert code == 0
    assert json.loads(out)["groups"] == []
    assert f"{len(CATALOG_NAMES)} images: 0 groups" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--json", "--csv"], "not allowed with argument"),
        (["--min-score", "1.5"], "min_score must be between 0 and 1"),
        (["--keep", "newest"], "invalid choice: 'newest'"),
        (["--pairing", "any"], "invalid choice: 'any'"),
    ],
)
def test_bad_arguments_are_usage_errors(catalog_dir: Path, capsys, argv: list[str], message: str):
    with pytest.raises(SystemExit) as exit_:
        main(["duplicates", "--catalog", str(catalog_dir), *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
