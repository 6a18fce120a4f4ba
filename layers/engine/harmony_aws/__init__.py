"""AWS adapters of Harmony-Image: the S3 catalog/index store and the request handling that the
Lambda handlers (functions/*/app.py) call. The engine (:mod:`harmony_image`) has no AWS imports;
everything that talks to S3 lives here.

Bucket layout (one private bucket)::

    catalog/<key>                       catalog images (any sub-folders)
    catalog/manifest.json               optional source URLs, the seed's format (see store.py)
    index/records/<name>.npz            one feature record per catalog object (see store.py)
    queries/<key>                       dropped query images (QueryDrop)
    results/<key>.json                  QueryDrop's answers
"""

from .config import ENV_VARS, Settings
from .errors import (
    BadRequestError,
    ConfigError,
    PayloadTooLargeError,
    S3ObjectNotFoundError,
    S3ReferenceRefusedError,
)
from .store import CATALOG_PREFIX, INDEX_PREFIX, QUERIES_PREFIX, RESULTS_PREFIX, CatalogStore, ReconcileResult

__all__ = [
    "BadRequestError",
    "CATALOG_PREFIX",
    "CatalogStore",
    "ConfigError",
    "ENV_VARS",
    "INDEX_PREFIX",
    "PayloadTooLargeError",
    "QUERIES_PREFIX",
    "RESULTS_PREFIX",
    "ReconcileResult",
    "S3ObjectNotFoundError",
    "S3ReferenceRefusedError",
    "Settings",
]
