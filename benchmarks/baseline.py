"""The engine as it was at an earlier commit, on the same catalog and queries, in the same run.

``--baseline-commit REV`` (``python -m benchmarks.run``) extracts ``git archive REV src`` into a
temporary folder and runs a child process with that ``src`` first on ``PYTHONPATH``: it indexes
the catalog and searches every query with ``default`` scoring (two untimed warm-up searches,
then search time only, as :func:`benchmarks.runners.run_engine`). The report puts its answers
and times beside the current engine's, as ratios measured in one run on one machine.

The compiled kernels are not in the archive: the current build is copied in when ``_kernels.c``
did not change since REV; otherwise REV's ``setup.py`` (with its ``pyproject.toml``) builds REV's
kernels in the temporary folder (a C compiler is needed, as for ``make setup``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .metrics import K, ScoringRun

ROOT = Path(__file__).resolve().parents[1]
KERNELS_SOURCE = "src/harmony_image/_kernels.c"


def archive(rev: str, into: Path, paths: tuple[str, ...] = ("src",)) -> Path:
    """``paths`` of the repository at ``rev``, extracted into ``into``; returns ``into``."""
    data = subprocess.run(["git", "archive", rev, *paths], cwd=ROOT, capture_output=True, check=True).stdout  # noqa: S603, S607
    subprocess.run(["tar", "-x", "-C", str(into)], input=data, check=True)  # noqa: S603, S607
    return into


def _copy_kernels(rev: str, into: Path) -> None:
    changed = subprocess.run(  # noqa: S603
        ["git", "diff", "--quiet", rev, "--", KERNELS_SOURCE],  # noqa: S607
        cwd=ROOT,
    ).returncode
    if changed:
        archive(rev, into, ("setup.py", "pyproject.toml"))
        subprocess.run(
            [sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=into, check=True, capture_output=True
        )
        package = into / "src" / "harmony_image"
        if not [*package.glob("_kernels*.so"), *package.glob("_kernels*.pyd")]:
            raise RuntimeError(f"{KERNELS_SOURCE} of {rev} did not build: its engine would run on numpy")
        return
    built = sorted((ROOT / "src" / "harmony_image").glob("_kernels*.so")) + sorted(
        (ROOT / "src" / "harmony_image").glob("_kernels*.pyd")
    )
    for path in built:
        shutil.copy2(path, into / "src" / "harmony_image" / path.name)


def run_baseline(rev: str, catalog: list[tuple[str, Path]], queries: dict[str, Path]) -> ScoringRun:
    """``default`` scoring of the engine at ``rev``: top-K keys, scores and search ms per query."""
    with tempfile.TemporaryDirectory(prefix="harmony-baseline-") as tmp:
        root = archive(rev, Path(tmp))
        _copy_kernels(rev, root)
        job = {
            "catalog": [[key, str(path)] for key, path in catalog],
            "queries": {q: str(p) for q, p in queries.items()},
        }
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), str(ROOT)])}
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.baseline"],
            input=json.dumps(job).encode(),
            capture_output=True,
            check=True,
            env=env,
            cwd=tmp,
        )
    answers = json.loads(done.stdout)
    run = ScoringRun(f"default@{rev}")
    for q, a in answers.items():
        run.keys[q], run.scores[q], run.search_ms[q] = a["keys"], a["scores"], a["ms"]
    return run


def _child() -> None:
    import harmony_image
    from harmony_image import SearchIndex, SearchParams, extract_features

    if not Path(harmony_image.__file__).resolve().is_relative_to(Path.cwd().resolve()):
        raise RuntimeError(f"the baseline must import the archived engine, not {harmony_image.__file__}")
    job = json.load(sys.stdin)
    index = SearchIndex()
    for key, path in job["catalog"]:
        index.add(key, extract_features(Path(path).read_bytes(), query=False))
    features = {q: extract_features(Path(p).read_bytes()) for q, p in job["queries"].items()}
    params = SearchParams(k=K, scoring="default")
    for q in list(features)[:2]:
        index.search(features[q], params)
    out: dict[str, Any] = {}
    for q, f in features.items():
        t0 = time.perf_counter()
        results = index.search(f, params)
        elapsed = (time.perf_counter() - t0) * 1000
        out[q] = {"keys": [r.key for r in results], "scores": [r.score for r in results], "ms": elapsed}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    _child()
