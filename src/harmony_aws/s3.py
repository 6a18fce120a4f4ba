"""S3 access for one bucket: the few calls the adapters make, with S3's errors turned into the
project's (404 -> :class:`S3ObjectNotFoundError`, over the size cap -> :class:`PayloadTooLargeError`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from .errors import PayloadTooLargeError, S3ObjectNotFoundError

NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
PRECONDITION_FAILED = frozenset({"412", "PreconditionFailed"})
POOL_CONNECTIONS = 32


def s3_client(region: str | None = None) -> Any:
    """An S3 client; the endpoint comes from the usual places (AWS_ENDPOINT_URL_S3 included)."""
    cfg = Config(
        signature_version="s3v4",
        retries={"max_attempts": 6, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
        max_pool_connections=POOL_CONNECTIONS,
    )
    return boto3.client("s3", region_name=region, config=cfg)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@dataclass(frozen=True)
class Head:
    etag: str
    size: int
    metadata: dict[str, str]


class Bucket:
    """One bucket through one client."""

    def __init__(self, name: str, client: Any = None) -> None:
        if not name:
            raise ValueError("bucket name is required")
        self.name = name
        self.client = client or s3_client()

    def head(self, key: str) -> Head | None:
        """The object's ETag, size and metadata; None when it does not exist."""
        try:
            r = self.client.head_object(Bucket=self.name, Key=key)
        except ClientError as exc:
            if error_code(exc) in NOT_FOUND:
                return None
            raise
        return Head(etag=r["ETag"], size=int(r.get("ContentLength", 0)), metadata=dict(r.get("Metadata") or {}))

    def read(self, key: str, *, max_bytes: int, if_match: str | None = None) -> tuple[bytes, Head]:
        """Bytes and head of ``key``; S3ObjectNotFoundError (404), PayloadTooLargeError (413)."""
        kwargs: dict[str, Any] = {"Bucket": self.name, "Key": key}
        if if_match:
            kwargs["IfMatch"] = if_match
        try:
            r = self.client.get_object(**kwargs)
        except ClientError as exc:
            code = error_code(exc)
            if code in NOT_FOUND:
                raise S3ObjectNotFoundError(f"s3://{self.name}/{key} does not exist") from exc
            if code == "NoSuchBucket":
                raise S3ObjectNotFoundError(f"bucket {self.name!r} does not exist") from exc
            raise
        size = int(r.get("ContentLength", 0))
        body = r["Body"]
        try:
            if size > max_bytes:
                raise PayloadTooLargeError(f"s3://{self.name}/{key} is {size} bytes; the limit is {max_bytes}")
            data = body.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise PayloadTooLargeError(f"s3://{self.name}/{key} is larger than {max_bytes} bytes")
        finally:
            body.close()
        return data, Head(etag=r["ETag"], size=size, metadata=dict(r.get("Metadata") or {}))

    def put(self, key: str, data: bytes, *, content_type: str, metadata: dict[str, str] | None = None) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=data, ContentType=content_type, Metadata=metadata or {})

    def put_json(self, key: str, payload: Any, *, metadata: dict[str, str] | None = None) -> None:
        self.put(key, json.dumps(payload, indent=2).encode("utf-8"), content_type="application/json", metadata=metadata)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.name, Key=key)

    def objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        """Every object under ``prefix`` (the listing's dicts: Key, ETag, Size, LastModified)."""
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix):
            yield from page.get("Contents", [])

    def etags(self, prefix: str) -> dict[str, str]:
        """key -> ETag of every object under ``prefix``."""
        return {o["Key"]: o["ETag"] for o in self.objects(prefix)}

    def presigned_get(self, key: str, *, seconds: int) -> str:
        url: str = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.name, "Key": key}, ExpiresIn=seconds
        )
        return url
