"""Errors of the AWS adapters; like the engine's, each has ``code``, ``status`` and ``message``."""

from __future__ import annotations

from harmony_image import HarmonyError


class BadRequestError(HarmonyError):
    code = "bad_request"
    status = 400


class InvalidJsonError(BadRequestError):
    code = "invalid_json"
    status = 400


class ValidationFailedError(HarmonyError):
    code = "validation_error"
    status = 422


class PayloadTooLargeError(HarmonyError):
    code = "payload_too_large"
    status = 413


class S3ObjectNotFoundError(HarmonyError):
    code = "s3_object_not_found"
    status = 404


class S3ReferenceRefusedError(HarmonyError):
    """An {"s3": ...} query names another bucket or a key outside the readable prefixes."""

    code = "s3_reference_refused"
    status = 400


class ConfigError(HarmonyError):
    """The function is deployed with missing or unknown settings."""

    code = "misconfigured"
    status = 500


class StorageError(HarmonyError):
    """S3 failed in a way that retrying the request may fix."""

    code = "storage_error"
    status = 502
