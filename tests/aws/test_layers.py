"""The Lambda layers as `sam build` builds them (the same Makefile targets): size limit, .pyc for
Python 3.13, no tests/ or foreign-version files, and a smoke run on a real Python 3.13 with only
the layers on sys.path.

Slow (downloads wheels, ~20-40 s) — runs only with HARMONY_LAYER_TEST=1:
    HARMONY_LAYER_TEST=1 .venv/bin/pytest tests/aws/test_layers.py
(`make layer` prints the same sizes: tools/layers/build_layers.py).
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

from tests.support import REPO, image_path

sys.path.insert(0, str(REPO / "tools" / "layers"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("HARMONY_LAYER_TEST") != "1",
        reason="layer build downloads wheels: set HARMONY_LAYER_TEST=1 (make layer-test)",
    ),
]


def _py313() -> str | None:
    for cand in ["python3.13", *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.13*/bin/python3.13")))]:
        try:
            out = subprocess.run(
                [cand, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0:
            return out.stdout.strip()
    return None


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import build_layers

    out = tmp_path_factory.mktemp("layers")
    sizes = build_layers.build("x86_64", out)
    print(json.dumps(sizes, indent=2))
    return out, sizes


def test_function_plus_layers_within_250_mb(built):
    _, sizes = built
    for name, s in sizes["functions"].items():
        assert s["total_unzipped"] <= 250 * 1024 * 1024, (name, s)
    assert sizes["layers"]["DepsLayer"]["unzipped"] > 100 * 1024 * 1024  # opencv + numpy really are in it


def test_layer_contents(built):
    out, _ = built
    for layer in ("DepsLayer", "EngineLayer"):
        root = out / layer / "python"
        assert root.is_dir()
        assert not [p for p in root.rglob("tests") if p.is_dir()], "tests/ left in the layer"
        stray = [p for p in root.rglob("*.pyc") if ".cpython-313" not in p.name]
        assert not stray, stray[:5]
        missing = [
            p for p in root.rglob("*.py") if not (p.parent / "__pycache__" / f"{p.stem}.cpython-313.pyc").exists()
        ]
        assert not missing, f"{len(missing)} modules without a 3.13 .pyc, e.g. {missing[:3]}"
    assert not list((out / "DepsLayer" / "python").glob("botocore"))
    engine = out / "EngineLayer" / "python"
    assert list(engine.glob("harmony_image/_kernels.cpython-313-x86_64-linux-gnu.so"))
    assert not list(engine.rglob("*cpython-311*"))
    assert (engine / "harmony_aws" / "service.py").exists()
    # what ships is what runs: the engine and the adapters, never the CLI, the local stack or samples
    assert sorted(p.name for p in engine.iterdir()) == ["harmony_aws", "harmony_image"]
    assert not list(engine.rglob("*.jpg")) and not list(engine.rglob("*.png"))


def test_layers_work_on_python313(built):
    out, _ = built
    py = _py313()
    if py is None:
        pytest.skip("no Python 3.13 on this machine")
    code = (
        "import sys, json, time\n"
        "t0 = time.perf_counter()\n"
        "import numpy, cv2\n"
        "from harmony_image import extract_features, SearchIndex, SearchParams\n"
        "from harmony_image import kernels\n"
        "import harmony_image._kernels\n"
        "import pydantic, aws_lambda_powertools.event_handler\n"
        "t_import = time.perf_counter() - t0\n"
        "a = extract_features(open(sys.argv[1], 'rb').read()); b = extract_features(open(sys.argv[2], 'rb').read())\n"
        "ix = SearchIndex(); ix.add('a', a); ix.add('b', b)\n"
        "r = ix.search(a, SearchParams(k=2))\n"
        "print(json.dumps({'top': r[0].key, 'score': r[0].score, 'numpy': numpy.__version__, 'cv2': cv2.__version__,"
        " 'import_s': t_import, 'kernels': harmony_image._kernels.__file__}))\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"{out}/EngineLayer/python:{out}/DepsLayer/python",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
    }
    res = subprocess.run(
        [py, "-s", "-c", code, str(image_path("chelsea.jpg")), str(image_path("coffee.jpg"))],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    print(info)
    assert info["top"] == "a" and info["score"] > 0.99
    assert info["numpy"] == "2.4.6" and info["cv2"].startswith("5.0")
    assert "EngineLayer" in info["kernels"]
