"""The duplicate benchmark's truth, metrics and report section, on cases worked out by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.duplicates import BEGIN, END, pairs_within, photo_of, precision_recall, write_section


def test_photo_of_reads_originals_and_copies_and_not_distractors() -> None:
    assert photo_of("originals/coffee.jpg") == "coffee"
    assert photo_of("copies/coffee__crop_random_70.jpg") == "coffee"
    assert photo_of("copies/hubble_deep_field__hflip.jpg") == "hubble_deep_field"
    assert photo_of("distractors/d_000001.jpg") is None


def test_photo_of_keeps_colourways_and_look_alikes_apart_from_their_photo() -> None:
    assert photo_of("originals/chelsea__colourway.jpg") == "chelsea__colourway"
    assert photo_of("copies/chelsea__colourway_copy.jpg") == "chelsea__colourway"
    assert photo_of("copies/chelsea__recoloured.jpg") == "chelsea__recoloured"
    assert photo_of("copies/chelsea__inset_third.jpg") == "chelsea"


def test_pair_precision_and_recall() -> None:
    truth = pairs_within([["a", "b", "c"]])  # 3 true pairs
    assert truth == {("a", "b"), ("a", "c"), ("b", "c")}
    predicted = pairs_within([["b", "a"], ["c", "x"]])  # one right, one wrong
    got = precision_recall(predicted, truth)
    assert (got["predicted"], got["correct"], got["true"]) == (2, 1, 3)
    assert got["precision"] == pytest.approx(0.5) and got["recall"] == pytest.approx(1 / 3)
    assert precision_recall(set(), truth)["precision"] == 1.0  # nothing claimed, nothing wrong


def result(size: int) -> dict:
    quality = {
        "groups": 20,
        "grouped_images": 361,
        "mixed_groups": [["distractors/d_1.jpg", "distractors/d_2.jpg"]],
        "wrongly_grouped": 2,
        "group_pairs": {"precision": 0.99, "recall": 0.95},
        "pairs": {"precision": 1.0, "recall": 0.9},
        "per_transform": {"hflip": {"n": 19, "found": 18}, "blur": {"n": 19, "found": 19}},
    }
    return {
        "size": size,
        "full_queries": False,
        "photos": 19,
        "images_per_s": 15.25,
        "report_s": 65.6,
        "index_s": 18.0,
        "when": "2026-12-01 23:50 UTC",
        "machine": {"cpu": "AMD EPYC", "cores": 2, "kernels": "c-avx512", "loadavg_start": [1.0, 2.0, 3.0]},
        "either": quality,
        "mutual": quality,
    }


def test_the_section_is_appended_once_then_replaced(tmp_path: Path) -> None:
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\nother sections\n")
    write_section(doc, [result(1000)])
    first = doc.read_text()
    assert first.startswith("# Benchmarks\n\nother sections\n\n" + BEGIN)
    assert "| 1,000 | 15.2 images/s (66 s) | mutual | 20 (19) | 2 | 0.990 / 0.950 | 1.000 / 0.900 | hflip 1 |" in first
    assert "| 1,000 | same queries | either |" in first
    write_section(doc, [result(1000), result(10000)])
    second = doc.read_text()
    assert second.count(BEGIN) == second.count(END) == 1
    assert "| 10,000 |" in second and second.startswith("# Benchmarks\n\nother sections\n")
