"""Catalog manifests in the seed's format: source URLs for catalog images.

A manifest is a JSON list of ``{"url": ...}`` objects. An item may name its catalog image with
``"key"`` (relative to the catalog root, as ``harmony import`` writes it); without one, the image
whose name is the last path segment of the URL is meant. Items without a string URL are skipped.
"""

from __future__ import annotations

import json
import posixpath
from urllib.parse import unquote, urlsplit

from .errors import HarmonyError

MANIFEST_NAME = "manifest.json"


def parse_manifest(data: bytes) -> dict[str, str]:
    """Catalog-relative key -> source URL.

    Raises
    ------
    HarmonyError
        The manifest is not JSON or not a list.
    """
    try:
        items = json.loads(data)
    except ValueError as exc:
        raise HarmonyError(f"{MANIFEST_NAME} is not valid JSON: {exc}") from exc
    if not isinstance(items, list):
        raise HarmonyError(f'{MANIFEST_NAME} must be a JSON list of {{"url": ...}} objects (the seed\'s format)')
    urls: dict[str, str] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            continue
        key = item.get("key")
        if not isinstance(key, str) or not key:
            key = posixpath.basename(unquote(urlsplit(item["url"]).path))
        if key:
            urls[key.lstrip("/")] = item["url"]
    return urls
