"""``harmony import``: download a seed-format URL list into a catalog folder, or upload a folder
of images into a running local stack's bucket.

A URL list: each URL's image is saved as ``imported/<12 hex of sha1(url)>-<name>`` and recorded
with its key in ``manifest.json`` (the seed's format plus a ``key``), so search results carry
the source URL. Downloads run concurrently; failures (refused address, 404, not an image, too
large) are reported and skipped; URLs already imported are not fetched again.

A folder into the local stack (bulk ingest): every file is PUT under ``catalog/<prefix>``
concurrently; S3 sends each change to IndexQueue, which IndexFunction drains in batches; once
the queue is empty the records are read back and each key counted as indexed, skipped as not an
image, or failed (named in the dead-letter queue) - :class:`BulkReport`.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_plus, urlsplit

from harmony_aws.layout import CATALOG_PREFIX, RECORDS_PREFIX, record_key
from harmony_image import MANIFEST_NAME, HarmonyError, read_image_info
from harmony_image.fetch import fetch_url

from .catalog import write_atomic

IMPORT_DIR = "imported"
_EXTENSION = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "bmp": ".bmp", "tiff": ".tif", "gif": ".gif"}


@dataclass
class ImportReport:
    downloaded: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)


def _load_urls(path: Path) -> list[str]:
    try:
        items = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise HarmonyError(f"cannot read {path}: {exc}") from exc
    if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("url"), str) for i in items):
        raise HarmonyError(f'{path} must be a JSON list of {{"url": ...}} objects (the seed\'s format)')
    return list(dict.fromkeys(i["url"] for i in items))


def _key_for(url: str, fmt: str) -> str:
    stem = Path(posixpath.basename(unquote(urlsplit(url).path))).stem or "image"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:60]
    return f"{IMPORT_DIR}/{hashlib.sha1(url.encode(), usedforsecurity=False).hexdigest()[:12]}-{safe}{_EXTENSION[fmt]}"


def import_urls(manifest: Path, catalog: Path, *, workers: int = 8, allow_private: bool = False) -> ImportReport:
    """Download every URL of ``manifest`` into ``catalog``; see the module docstring."""
    urls = _load_urls(manifest)
    catalog.mkdir(parents=True, exist_ok=True)
    existing_path = catalog / MANIFEST_NAME
    existing: list[dict] = json.loads(existing_path.read_text()) if existing_path.exists() else []
    known = {item["url"]: item.get("key") for item in existing if isinstance(item, dict) and "url" in item}
    report = ImportReport()
    todo = [u for u in urls if not ((key := known.get(u)) and (catalog / key).exists())]
    report.skipped = len(urls) - len(todo)

    def download(url: str) -> tuple[str, str | None, str | None]:
        try:
            data = fetch_url(url, allow_private=allow_private)
            key = _key_for(url, read_image_info(data).format)
            write_atomic(catalog / key, data)
            return url, key, None
        except HarmonyError as exc:
            return url, None, exc.message

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for url, key, error in pool.map(download, todo):
            if error:
                report.failed[url] = error
            else:
                known[url] = key
                report.downloaded += 1
    items = [{"url": url, "key": key} for url, key in known.items() if key]
    write_atomic(existing_path, json.dumps(items, indent=1).encode())
    return report


# --------------------------------------------------------------------------- bulk upload to a stack
BULK_WORKERS = 16
"""Concurrent uploads to the local stack's S3 (each a small PUT; moto answers from one process)."""
DRAIN_POLL_SECONDS = 0.5


@dataclass
class BulkReport:
    """What a bulk upload came to once IndexQueue drained: ``indexed`` keys have a record of
    their current content; ``failed`` keys are named by a message in the dead-letter queue;
    ``not_images`` have neither (IndexFunction reconciled them and skipped them: not an image,
    truncated, too large)."""

    uploaded: int = 0
    indexed: int = 0
    not_images: int = 0
    failed: int = 0
    dead_letters: int = 0  # messages in the dead-letter queue (a key may have several)
    upload_seconds: float = 0.0
    seconds: float = 0.0
    failed_keys: list[str] = field(default_factory=list)
    not_image_keys: list[str] = field(default_factory=list)

    def line(self) -> str:
        rate = self.indexed / self.seconds if self.seconds else 0.0
        return (
            f"{self.uploaded} uploaded: {self.indexed} indexed, {self.not_images} skipped as not images, "
            f"{self.failed} failed ({self.dead_letters} messages in the dead-letter queue); "
            f"{self.seconds:.1f} s, {rate:.1f} images/s"
        )


def folder_files(folder: Path) -> list[Path]:
    """The files under ``folder``, without hidden files and folders (.harmony/ holds the CLI's
    index, not images)."""
    return [
        p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]


def upload_files(
    s3: Any,
    bucket: str,
    files: Mapping[str, Path | bytes],
    *,
    workers: int = BULK_WORKERS,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """PUT each ``key -> file (or bytes)``, ``workers`` at a time; ``progress(done, total)``."""
    import mimetypes

    def put(item: tuple[str, Path | bytes]) -> None:
        key, src = item
        body = src if isinstance(src, bytes) else src.read_bytes()
        ctype = mimetypes.guess_type(key)[0] or "application/octet-stream"
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=ctype)

    total = len(files)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for done, _ in enumerate(pool.map(put, files.items()), 1):
            if progress:
                progress(done, total)


def dead_letter_keys(sqs: Any, queue_url: str) -> tuple[int, set[str]]:
    """(messages, catalog keys they name) of a dead-letter queue, left in it: each message is
    received, read, and made visible again."""
    seen: dict[str, dict[str, Any]] = {}
    while True:
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=60).get("Messages", [])
        if not got:
            break
        for m in got:
            seen[m["MessageId"]] = m
    keys: set[str] = set()
    for m in seen.values():
        try:
            body = json.loads(m["Body"])
        except ValueError:
            continue
        for rec in body.get("Records", []) if isinstance(body, dict) else []:
            keys.add(unquote_plus(rec.get("s3", {}).get("object", {}).get("key", "")))
    handles = [m["ReceiptHandle"] for m in seen.values()]
    for i in range(0, len(handles), 10):
        entries = [
            {"Id": str(j), "ReceiptHandle": h, "VisibilityTimeout": 0} for j, h in enumerate(handles[i : i + 10])
        ]
        sqs.change_message_visibility_batch(QueueUrl=queue_url, Entries=entries)
    return len(seen), keys


def queue_depth(sqs: Any, queue_url: str) -> int:
    attrs = sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return sum(int(v) for v in attrs.values())


def wait_drained(sqs: Any, queue_url: str, *, timeout: float, progress: Callable[[int], None] | None = None) -> None:
    """Until ``queue_url`` holds no message (waiting or in flight), a few polls in a row."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < 3:
        left = queue_depth(sqs, queue_url)
        if progress:
            progress(left)
        quiet = quiet + 1 if left == 0 else 0
        if left and time.monotonic() > deadline:
            raise TimeoutError(f"{left} messages still in the queue after {timeout:.0f} s")
        time.sleep(DRAIN_POLL_SECONDS)


def index_report(s3: Any, sqs: Any, bucket: str, keys: list[str], dead_letter_url: str | None) -> BulkReport:
    """Read the records back: which of ``keys`` are indexed (a record of the object's current
    ETag), failed (in the dead-letter queue), or skipped as not images."""
    etags: dict[str, str] = {}
    records: dict[str, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=CATALOG_PREFIX):
        etags.update({o["Key"]: o["ETag"].strip('"') for o in page.get("Contents", [])})
    names = {record_key(k): k for k in keys}

    def head(rk: str) -> tuple[str, str | None]:
        try:
            return rk, s3.head_object(Bucket=bucket, Key=rk)["Metadata"].get("source-etag", "").strip('"')
        except s3.exceptions.ClientError:
            return rk, None

    listed = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=RECORDS_PREFIX)
        for o in page.get("Contents", [])
        if o["Key"] in names
    ]
    with ThreadPoolExecutor(max_workers=BULK_WORKERS) as pool:
        for rk, etag in pool.map(head, listed):
            if etag is not None:
                records[names[rk]] = etag
    messages, dead = dead_letter_keys(sqs, dead_letter_url) if dead_letter_url else (0, set())
    report = BulkReport(uploaded=len(keys), dead_letters=messages)
    for key in keys:
        if key in records and records[key] == etags.get(key):
            report.indexed += 1
        elif key in dead:
            report.failed_keys.append(key)
        else:
            report.not_image_keys.append(key)
    report.failed, report.not_images = len(report.failed_keys), len(report.not_image_keys)
    return report


class Progress:
    """Progress on stderr: a bar redrawn in place on a terminal, else a line every
    ``every`` seconds (logs, CI) and at the end."""

    def __init__(self, label: str, *, stream: Any = None, every: float = 5.0) -> None:
        import sys

        self.label = label
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every
        self.started = time.perf_counter()
        self._last = 0.0

    def __call__(self, done: int, total: int, what: str = "") -> None:
        now = time.perf_counter()
        final = done >= total
        if not final and now - self._last < (0.1 if self.tty else self.every):
            return
        self._last = now
        rate = done / max(now - self.started, 1e-9)
        bar = ""
        if self.tty:
            filled = int(30 * done / max(total, 1))
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] "
        text = f"{self.label} {bar}{done}/{total} {what}({rate:.0f}/s, {now - self.started:.0f} s)"
        self.stream.write(("\r" + text + ("\n" if final else "")) if self.tty else text + "\n")
        self.stream.flush()
