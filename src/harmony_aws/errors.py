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


class S3ObjectChangedError(HarmonyError):
    """A conditional read (If-Match) found another version of the object: look again."""

    code = "s3_object_changed"
    status = 409


class S3ReferenceRefusedError(HarmonyError):
    """An {"s3": ...} query names another bucket or a key outside the readable prefixes."""

    code = "s3_reference_refused"
    status = 400


class ConfigError(HarmonyError):
    """The function is deployed with missing or unknown settings."""

    code = "misconfigured"
    status = 500


class StorageError(HarmonyError):
    """S3 failed in a way that retrying may fix: S3's own retries are spent (see s3.py). The
    S3-triggered functions let it fail the invocation, so that Lambda retries the event."""

    code = "storage_error"
    status = 502


class EventRecordsFailedError(StorageError):
    """Some records of an S3 event failed (the others were done): the invocation fails so that
    Lambda retries the event."""

    code = "event_records_failed"

    @classmethod
    def of(cls, failed: list[tuple[str, BaseException]], *, done: int) -> EventRecordsFailedError:
        keys = "; ".join(f"{key}: {type(exc).__name__}: {exc}" for key, exc in failed[:10])
        more = f" (and {len(failed) - 10} more)" if len(failed) > 10 else ""
        err = cls(f"{len(failed)} of {len(failed) + done} records failed, retry the event: {keys}{more}")
        err.__cause__ = failed[0][1]
        return err
