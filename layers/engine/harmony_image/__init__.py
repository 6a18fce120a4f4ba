"""Harmony-Image: find the catalog images most like a query image.

The engine is pure Python + numpy + OpenCV (no AWS imports); the Lambda handlers, the CLI and
the tests all use it. Typical use::

    from harmony_image import SearchIndex, extract_features

    index = SearchIndex()
    index.add("shoe.jpg", extract_features(open("shoe.jpg", "rb").read()))
    results = index.search(extract_features(query_bytes), k=5, scoring="default")
"""

from .decode import DEFAULT_MAX_PIXELS, ImageInfo, decode_image, read_image_info
from .errors import (
    CorruptImageError,
    EmptyImageError,
    FetchError,
    FetchNotFoundError,
    FetchTimeoutError,
    FetchTooLargeError,
    HarmonyError,
    ImageError,
    ImageTooLargeError,
    IndexFormatError,
    NotAnImageError,
    TruncatedImageError,
    UnsupportedFormatError,
    UrlRefusedError,
)
from .features import FEATURE_VERSION, ImageFeatures, extract_features
from .index import DEFAULT_K, MAX_K, CatalogEntry, SearchIndex, SearchResult
from .scoring import SCORINGS

__version__ = "0.1.0"

__all__ = [
    "CatalogEntry",
    "CorruptImageError",
    "DEFAULT_K",
    "DEFAULT_MAX_PIXELS",
    "EmptyImageError",
    "FEATURE_VERSION",
    "FetchError",
    "FetchNotFoundError",
    "FetchTimeoutError",
    "FetchTooLargeError",
    "HarmonyError",
    "ImageError",
    "ImageFeatures",
    "ImageInfo",
    "ImageTooLargeError",
    "IndexFormatError",
    "MAX_K",
    "NotAnImageError",
    "SCORINGS",
    "SearchIndex",
    "SearchResult",
    "TruncatedImageError",
    "UnsupportedFormatError",
    "UrlRefusedError",
    "decode_image",
    "extract_features",
    "read_image_info",
]
