"""Typed errors raised by the engine.

Every error carries a stable machine-readable ``code`` and an HTTP-ish ``status`` so that
adapters (CLI, Lambda handlers) can report it without a lookup table of their own.
"""

from __future__ import annotations


class HarmonyError(Exception):
    """Base class of every error the engine raises on purpose."""

    code = "error"
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ImageError(HarmonyError):
    """The bytes given as an image cannot be used."""

    code = "invalid_image"
    status = 422


class EmptyImageError(ImageError):
    code = "empty_image"
    status = 400


class NotAnImageError(ImageError):
    code = "not_an_image"
    status = 415


class UnsupportedFormatError(ImageError):
    code = "unsupported_format"
    status = 415


class ImageTooLargeError(ImageError):
    code = "image_too_large"
    status = 413


class TruncatedImageError(ImageError):
    code = "truncated_image"
    status = 422


class CorruptImageError(ImageError):
    code = "corrupt_image"
    status = 422


class InvalidParameterError(HarmonyError):
    """A search parameter (k, scoring, min_score) is out of its range."""

    code = "validation_error"
    status = 422


class IndexFormatError(HarmonyError):
    """A stored feature record was written by another format version or is damaged."""

    code = "index_format"
    status = 500


class FetchError(HarmonyError):
    """A URL could not be fetched (refused, unreachable, too large, not found)."""

    code = "fetch_failed"
    status = 502


class UrlRefusedError(FetchError):
    code = "url_refused"
    status = 400


class FetchTimeoutError(FetchError):
    """The remote server did not answer (or finish sending) within the time allowed."""

    code = "fetch_timeout"
    status = 504


class FetchNotFoundError(FetchError):
    """The remote server answered 404/410 for the URL."""

    code = "url_not_found"
    status = 404


class FetchTooLargeError(FetchError):
    """The remote body is larger than the cap (by Content-Length or while streaming)."""

    code = "fetch_too_large"
    status = 413
