"""``harmony import``: download a seed-format URL list into a catalog folder.

Each URL's image is saved as ``imported/<12 hex of sha1(url)>-<name>`` and recorded with its
key in ``manifest.json`` (the seed's format plus a ``key``), so search results carry the source
URL. Downloads run concurrently; failures (refused address, 404, not an image, too large) are
reported and skipped; URLs already imported are not fetched again.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

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
