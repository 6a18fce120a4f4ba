"""Smoke test of the benchmark harness: quick mode on a tiny catalog, report in tmp."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("skimage")  # the seed method and the bundled photos come from scikit-image

from benchmarks import run


@pytest.mark.slow
def test_quick_benchmark_writes_a_sane_report(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    plot = tmp_path / "img" / "scores.png"
    results_json = tmp_path / "results.json"
    status = run.main(
        [
            "--quick",
            "--sizes",
            "40",
            "--max-queries",
            "40",
            "--seed-method-queries",
            "1",
            "--repeats",
            "1",
            "--realres-size",
            "20",
            "--level-queries",
            "2",
            "--cache",
            str(tmp_path / "cache"),
            "--out",
            str(out),
            "--plot",
            str(plot),
            "--json",
            str(results_json),
        ]
    )
    assert status == 0  # the engine's seed scoring returned the seed method's top-5

    report = out.read_text()
    for section in (
        "# Benchmarks",
        "## Machine",
        "## Data set",
        "## Definitions",
        "## Summary",
        "## Catalog of 40 images",
        "### Seed method vs engine",
        "### Quality",
        "### Shortlist loss (default scoring)",
        "## Speed",
        "### Against the targets of issue 10",
        "### Kernel levels",
        "### Where the time goes: `default` scoring by stage",
        "## Real-resolution photos (catalog of 20)",
        "### Search time by k",
        "## Plot",
    ):
        assert section in report, section
    assert "IMPLEMENTATION" in report and "python -m benchmarks.run" in report
    assert plot.exists() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    results = json.loads(results_json.read_text())
    extract = results["dataset"]["extract_ms"]  # a seed query skips the 512 px ORB and the colours
    assert 0 < extract["seed"]["median"] < extract["default"]["median"]
    assert f"{extract['seed']['median']:.1f} ms for `seed`" in report
    (size,) = results["sizes"]
    assert size["size"] == 40
    sm = size["seed_method"]
    assert sm["parity_ok"] and sm["ratio_seed"] > 0 and sm["ratio_default"] > 0
    assert size["index"]["images_per_s"] > 0 and size["index"]["record_bytes_mean"] > 0
    assert size["index"]["packed_bytes_per_image"] > 0
    for scoring in ("seed", "default"):
        q = size["quality"][scoring]
        assert q["queries"] == 40 and q["positives"] > 0 and q["negatives"] > 0
        for metric in ("recall@1", "recall@5", "mrr@5"):
            assert 0.0 <= q[metric] <= 1.0, (scoring, metric)
        assert q["recall@1"] <= q["recall@5"]
        assert q["auc"] is None or 0.0 <= q["auc"] <= 1.0
        t = size["timing"][scoring]["search"]
        assert t["median"] > 0 and math.isfinite(t["p90"])
    loss = size["shortlist"]
    assert "error" not in loss, loss
    for metric in ("top5_items_lost", "queries_losing_any", "top1_lost", "answer_lost"):
        assert 0.0 <= loss[metric] <= 1.0
    assert size["peak_rss_mb"] > 0
    # every level this machine runs, forced in turn: per-image kernel times and per-query times
    from harmony_image import kernels

    assert set(results["kernels"]["levels"]) == set(kernels.levels())
    for level, lv in results["kernels"]["levels"].items():
        assert lv["ssim"] > 0 and lv["cross_check"] > 0 and lv["votes"] > 0 and lv["opencv_ratio"] > 0, level
        assert size["levels"][level]["default"]["search"]["median"] > 0
    assert "votes" in size["timing"]["default"]["stages"]
    rr = results["realres"]
    assert rr["size"] == 20 and rr["catalog_megapixels"]["median"] >= 1.0 and rr["seed_method"]["parity_ok"]
    assert set(rr["by_k"]) == {"5", "10", "20", "50"}
    assert rr["extract"]["stages"]["decode"]["mean"] > 0
