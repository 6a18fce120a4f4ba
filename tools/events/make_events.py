"""Regenerate events/*.json with `sam local generate-event` (the shapes Lambda receives).

    .venv/bin/python tools/events/make_events.py [--sam .tools/sam/bin/sam]

The upload event carries a tiny real JPEG (chelsea, 48x32, from the sample catalog) as a
base64 body, as API Gateway sends binary media types.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
EVENTS = REPO / "events"
BUCKET = "harmony-image-example"


def sam(exe: str, *args: str) -> dict:
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0"}
    out = subprocess.run([exe, "local", "generate-event", *args], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout)


def tiny_jpeg() -> bytes:
    src = cv2.imdecode(
        np.frombuffer((REPO / "src/harmony_local/samples/catalog/chelsea.jpg").read_bytes(), np.uint8), cv2.IMREAD_COLOR
    )
    small = cv2.resize(src, (48, 32), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return buf.tobytes()


def api(exe: str, method: str, body: str | None, headers: dict, query: dict | None = None) -> dict:
    args = ["apigateway", "aws-proxy", "--method", method, "--path", "search", "--resource", "/search"]
    if body is not None:
        args += ["--body", body]
    ev = sam(exe, *args)
    ev["headers"] = {**{k: v for k, v in ev["headers"].items() if k.lower() != "content-type"}, **headers}
    ev["multiValueHeaders"] = {k: [v] for k, v in ev["headers"].items()}
    ev["queryStringParameters"] = query
    ev["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()} if query else None
    ev["pathParameters"] = None
    ev["stageVariables"] = None
    ev["requestContext"]["resourcePath"] = "/search"
    ev["requestContext"]["httpMethod"] = method
    ev["requestContext"]["path"] = "/prod/search"
    if body is None:
        ev["body"] = None
        ev["isBase64Encoded"] = False
    return ev


# What S3 sends to a queue when a notification configuration is set (the documented message)
S3_TEST_EVENT = {
    "Service": "Amazon S3",
    "Event": "s3:TestEvent",
    "Time": "2026-01-01T00:00:00.000Z",
    "Bucket": BUCKET,
    "RequestId": "5582815E1AEA5ADF",
    "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YYCIKIQbmgExGpoKhn+4GWYt3aVGFuw=",
}


def sqs(exe: str, bodies: list[dict]) -> dict:
    """An SQS batch event of IndexQueue whose messages' bodies are ``bodies`` (sam cannot take a
    JSON body itself: it pastes it into its template unescaped)."""
    ev = sam(exe, "sqs", "receive-message", "--queue-name", "harmony-image-IndexQueue-EXAMPLE")
    (first,) = ev["Records"]
    ev["Records"] = []
    for i, body in enumerate(bodies):
        rec = json.loads(json.dumps(first))
        rec["messageId"] = f"{i:08d}-6a1f-4c2b-9d0e-{i:012d}"
        rec["body"] = json.dumps(body)
        rec["md5OfBody"] = hashlib.md5(rec["body"].encode(), usedforsecurity=False).hexdigest()
        ev["Records"].append(rec)
    return ev


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sam", default=str(REPO / ".tools/sam/bin/sam"))
    a = ap.parse_args()
    jpeg = tiny_jpeg()
    out = {}
    ev = api(a.sam, "POST", "x", {"Content-Type": "image/jpeg"}, {"k": "3"})
    ev["body"] = base64.b64encode(jpeg).decode("ascii")
    ev["isBase64Encoded"] = True
    out["api-search-upload.json"] = ev
    ev = api(
        a.sam,
        "POST",
        json.dumps(
            {"url": "https://raw.githubusercontent.com/scikit-image/scikit-image/main/skimage/data/chelsea.png"}
        ),
        {"Content-Type": "application/json"},
        {"k": "5"},
    )
    out["api-search-url.json"] = ev
    ev = api(
        a.sam, "POST", json.dumps({"s3": {"key": "catalog/chelsea.jpg"}}), {"Content-Type": "application/json"}, None
    )
    out["api-search-s3.json"] = ev
    out["s3-catalog-put.json"] = sam(a.sam, "s3", "put", "--bucket", BUCKET, "--key", "catalog/chelsea.jpg")
    out["s3-catalog-delete.json"] = sam(a.sam, "s3", "delete", "--bucket", BUCKET, "--key", "catalog/old photo.jpg")
    out["s3-query-put.json"] = sam(a.sam, "s3", "put", "--bucket", BUCKET, "--key", "queries/chelsea-query.jpg")
    for rec in out["s3-catalog-put.json"]["Records"] + out["s3-query-put.json"]["Records"]:
        rec["s3"]["object"]["size"] = len(jpeg)
    for rec in out["s3-catalog-delete.json"]["Records"]:  # real S3 encodes a space as '+'
        rec["s3"]["object"]["key"] = rec["s3"]["object"]["key"].replace("%20", "+")
    # IndexQueue's messages: S3 event notifications (one record each, as S3 sends them)
    out["sqs-catalog-put-delete.json"] = sqs(a.sam, [out["s3-catalog-put.json"], out["s3-catalog-delete.json"]])
    out["sqs-s3-test-event.json"] = sqs(a.sam, [S3_TEST_EVENT])
    for name, ev in out.items():
        (EVENTS / name).write_text(json.dumps(ev, indent=2) + "\n")
        print(f"wrote events/{name}")


if __name__ == "__main__":
    sys.exit(main())
