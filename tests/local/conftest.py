"""The local stack started in-process on free ports (tests/local)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "images"
TOY_TEMPLATE = Path(__file__).parent / "toy" / "template.yaml"


def request(url: str, data: bytes | None = None, *, method: str | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers.items()), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def request_json(url: str, data: bytes | None = None, **kw) -> tuple[int, dict]:
    status, _, body = request(url, data, **kw)
    return status, json.loads(body or b"{}")


def _start(template: Path, tmp: Path, **kw):
    from harmony_local import LocalStack, StackConfig

    cfg = StackConfig(template=template, port=0, workdir=tmp, **kw)
    return LocalStack(cfg, echo=lambda msg: print(msg)).start()


@contextmanager
def app_stack(workdir: Path, *, bucket: str):
    """The repository's template.yaml on a local stack, the sample catalog uploaded (and indexed
    by IndexFunction)."""
    template = Path(os.environ.get("HARMONY_LOCAL_TEMPLATE") or REPO / "template.yaml")
    if not template.is_file():
        pytest.skip(f"{template} does not exist (the SAM template of the app)")
    st = _start(template, workdir, bucket=bucket)
    try:
        st.seed_catalog()
        yield st
    finally:
        st.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    with app_stack(tmp_path_factory.mktemp("harmony-local"), bucket="harmony-local-test") as st:
        yield st


@pytest.fixture(scope="session")
def toy(tmp_path_factory):
    st = _start(TOY_TEMPLATE, tmp_path_factory.mktemp("toy"), bucket="toy-bucket", max_concurrency=1)
    try:
        yield st
    finally:
        st.stop()
