"""Harmony-Image: find the catalog images most like a query image.

The engine imports numpy, OpenCV and the standard library only; the Lambda handlers (through
the AWS adapters), the CLI and the tests all use it. Typical use::

    from harmony_image import SearchIndex, SearchParams, extract_features

    index = SearchIndex()
    index.add("shoe.jpg", extract_features(open("shoe.jpg", "rb").read()))
    results = index.search(extract_features(query_bytes), SearchParams(k=5, scoring="default"))
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
    InvalidParameterError,
    NotAnImageError,
    TruncatedImageError,
    UnsupportedFormatError,
    UrlRefusedError,
)
from .features import FEATURE_VERSION, ImageFeatures, extract_features
from .index import SearchIndex, SearchResult, merge_results
from .manifest import MANIFEST_NAME, parse_manifest
from .packed import CatalogEntry
from .params import DEFAULT_K, DEFAULT_SCORING, MAX_K, MAX_SCORE, MIN_SCORE, SCORINGS, Scoring, SearchParams

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_K",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_SCORING",
    "FEATURE_VERSION",
    "MANIFEST_NAME",
    "MAX_K",
    "MAX_SCORE",
    "MIN_SCORE",
    "SCORINGS",
    "CatalogEntry",
    "CorruptImageError",
    "EmptyImageError",
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
    "InvalidParameterError",
    "NotAnImageError",
    "Scoring",
    "SearchIndex",
    "SearchParams",
    "SearchResult",
    "TruncatedImageError",
    "UnsupportedFormatError",
    "UrlRefusedError",
    "decode_image",
    "extract_features",
    "merge_results",
    "parse_manifest",
    "read_image_info",
]
