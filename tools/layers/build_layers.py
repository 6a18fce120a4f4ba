"""Build the Lambda layers without Docker and print their sizes and what they pack (`make layer`).

    .venv/bin/python tools/layers/build_layers.py [--arch x86_64|arm64] [--out .build/layers] [--json FILE]

Reads template.yaml (harmony_local.stack.template, the project's one template reader): every
layer with ``BuildMethod: makefile`` is built by running its Makefile's ``build-<LogicalId>``
target in the layer's ContentUri, as `sam build` does; every function's CodeUri is copied. Reports
unzipped and zipped sizes. Lambda's limit is 250 MB unzipped for a function plus all its layers
(5 layers at most); exits 1 if a function exceeds it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

from harmony_local.stack.template import Template, load_template

REPO = Path(__file__).resolve().parents[2]
LIMIT = 250 * 1024 * 1024


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def zipped_size(path: Path) -> int:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for p in sorted(path.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(path))
    return buf.tell()


def mb(n: int) -> str:
    return f"{n / 1024 / 1024:7.1f} MB"


def build(arch: str, out: Path, template: Template | None = None) -> dict[str, Any]:
    template = template or load_template(REPO / "template.yaml")
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HARMONY_ARCH": arch, "PY": sys.executable}
    sizes: dict[str, Any] = {"arch": arch, "layers": {}, "functions": {}}
    for name, layer in template.layers.items():
        if layer.build_method != "makefile":
            raise SystemExit(f"{name}: only makefile-built layers are built here (BuildMethod {layer.build_method})")
        dest = out / name
        t0 = time.monotonic()
        subprocess.run(
            [
                "make",
                "-s",
                "-C",
                str(layer.content_uri),
                "-f",
                str(layer.build_dir / "Makefile"),
                f"build-{name}",
                f"ARTIFACTS_DIR={dest}",
                f"HARMONY_ARCH={arch}",
                f"PY={sys.executable}",
            ],
            check=True,
            env=env,
        )
        sizes["layers"][name] = {
            "unzipped": tree_size(dest),
            "zipped": zipped_size(dest),
            "build_s": round(time.monotonic() - t0, 1),
        }
    for name, fn in template.functions.items():
        dest = out / name
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(fn.code_uri, dest, ignore=shutil.ignore_patterns("__pycache__", "tests"))
        code = tree_size(dest)
        total = code + sum(v["unzipped"] for v in sizes["layers"].values())
        sizes["functions"][name] = {"code": code, "total_unzipped": total, "limit": LIMIT, "ok": total <= LIMIT}
    return sizes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["x86_64", "arm64"], default=os.environ.get("HARMONY_ARCH", "x86_64"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the sizes as JSON here")
    a = ap.parse_args(argv)
    out = a.out or REPO / ".build" / "layers" / a.arch
    sizes = build(a.arch, out)
    print(f"Lambda layers for python3.13 {a.arch} (in {out}):")
    for name, s in sizes["layers"].items():
        print(f"  {name:18s} {mb(s['unzipped'])} unzipped  {mb(s['zipped'])} zipped  (built in {s['build_s']} s)")
    ok = True
    for name, s in sizes["functions"].items():
        flag = "ok" if s["ok"] else "TOO BIG"
        ok &= s["ok"]
        total = mb(s["total_unzipped"])
        print(f"  {name:18s} code {s['code'] / 1024:6.1f} KB  function + layers {total} of 250 MB  {flag}")
    if a.json:
        a.json.write_text(json.dumps(sizes, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
