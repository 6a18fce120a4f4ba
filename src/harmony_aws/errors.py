"""Errors of the AWS adapters; like the engine's, each has ``code``, ``status`` and ``message``."""

from __future__ import annotations

from typing import Any

from harmony_image import HarmonyError


def error_body(code: str, message: str) -> dict[str, Any]:
    """The JSON body of every error answer: ``{"error": {"code", "message"}}``."""
    return {"error": {"code": code, "message": message}}


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
