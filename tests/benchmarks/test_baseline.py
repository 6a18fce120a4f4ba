"""The benchmark's baseline: the engine of a commit, run in a child process on the same files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.baseline import KERNELS_SOURCE, ROOT, _copy_kernels, archive, run_baseline
from harmony_image import SearchIndex, SearchParams, extract_features
from tests.support import CATALOG_NAMES, QUERY_VARIANTS, image_path


def test_the_baseline_at_head_answers_as_the_engine_in_this_process():
    catalog = [(name, image_path(name)) for name in CATALOG_NAMES]
    queries = {q: image_path(q) for q in QUERY_VARIANTS[:4]}
    run = run_baseline("HEAD", catalog, queries)
    index = SearchIndex()
    for key, path in catalog:
        index.add(key, extract_features(path.read_bytes(), query=False))
    for q, path in queries.items():
        expected = index.search(extract_features(path.read_bytes()), SearchParams(k=5, scoring="default"))
        assert run.keys[q] == [r.key for r in expected]
        assert run.scores[q] == pytest.approx([r.score for r in expected], abs=1e-9)
        assert run.search_ms[q] > 0


def test_a_commit_whose_kernels_differ_runs_on_its_own_kernels(tmp_path):
    """The archive gets this build's kernels only when their source is the same; otherwise the
    commit's own source is built there, and the child imports that build."""
    last_change = subprocess.run(
        ["git", "log", "-1", "--format=%H", "--", KERNELS_SOURCE], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    root = archive(f"{last_change}~1", tmp_path)
    _copy_kernels(f"{last_change}~1", root)
    package = root / "src" / "harmony_image"
    (built,) = [p for p in package.iterdir() if p.name.startswith("_kernels") and p.suffix in (".so", ".pyd")]
    ours = [p for p in (ROOT / "src" / "harmony_image").iterdir() if p.name == built.name]
    assert ours and built.read_bytes() != ours[0].read_bytes()
    where = subprocess.run(
        [sys.executable, "-c", "import harmony_image._kernels as k; print(k.__file__)"],
        env={**os.environ, "PYTHONPATH": str(root / "src")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).resolve() == built.resolve()


def test_the_baselines_negatives_are_judged_at_the_copy_threshold_too():
    """A baseline's run is default scoring: its false copies count as today's do."""
    from benchmarks.metrics import ScoringRun
    from benchmarks.runners import scoring_quality

    run = ScoringRun("default@f577863", keys={"n": ["A"]}, scores={"n": [0.98]})
    q = scoring_quality(run, {"n": None}, {"n": "recoloured"}, ["n"])
    assert q["per_transform"]["recoloured"]["neg_copy"] == 1
    assert "engine_threshold" in q
