"""The URL a search result shows for a catalog object.

In order: the object's ``source-url`` metadata (``x-amz-meta-source-url``, kept in its record),
else ``catalog/manifest.json`` (the seed's format, keys relative to ``catalog/``), else a
presigned GET URL of the object, valid ``presign_seconds``.
"""

from __future__ import annotations

import logging

from harmony_image import HarmonyError, parse_manifest

from .errors import StorageError
from .layout import MANIFEST_KEY, catalog_rel
from .s3 import Bucket

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 64 * 1024 * 1024


class ResultUrls:
    def __init__(self, bucket: Bucket, *, presign_seconds: int) -> None:
        self.bucket = bucket
        self.presign_seconds = presign_seconds
        self._manifest: dict[str, str] = {}
        self._manifest_etag: str | None = None

    def refresh_manifest(self) -> bool:
        """Re-read the manifest if it changed (one HEAD when it did not); returns whether it did.

        A manifest that cannot be used (not JSON, too large) is ignored until it changes; when S3
        fails (StorageError) the last manifest read is kept and the error raised, so that the
        next refresh tries again."""
        head = self.bucket.head(MANIFEST_KEY)
        if head is None:
            changed = self._manifest_etag is not None
            self._manifest_etag, self._manifest = None, {}
            return changed
        if head.etag == self._manifest_etag:
            return False
        try:
            data, got = self.bucket.read(MANIFEST_KEY, max_bytes=MAX_MANIFEST_BYTES)
            self._manifest = parse_manifest(data)
            self._manifest_etag = got.etag
        except StorageError:
            raise
        except HarmonyError as exc:
            log.warning("%s ignored: %s", MANIFEST_KEY, exc.message)
            self._manifest, self._manifest_etag = {}, head.etag
        return True

    def source_url(self, key: str, metadata_url: str | None) -> str | None:
        """The catalog object's own source URL, if it has one."""
        return metadata_url or self._manifest.get(catalog_rel(key))

    def for_result(self, key: str, url: str) -> str:
        """What a result shows: its source URL, else a presigned GET of the object."""
        if url and url != key:
            return url
        return self.bucket.presigned_get(key, seconds=self.presign_seconds)
