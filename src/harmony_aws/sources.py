"""Where a query image comes from: a value the handlers build from a request or an event.

``POST /search`` accepts:

* a raw image body, any ``image/*`` or ``application/octet-stream`` content type;
* ``multipart/form-data`` with the image in the field ``file``;
* ``application/json``: exactly one of ``{"url": ...}``, ``{"s3": {"bucket": ..., "key": ...}}``
  (``bucket`` optional, defaults to the catalog bucket), ``{"image_base64": ...}``.

The content type is a hint, the bytes decide: a body that starts with an image signature is an
image whatever its Content-Type says (``curl --data-binary @photo.jpg`` sends
``application/x-www-form-urlencoded``), a body that starts with ``{`` is JSON unless it is
declared multipart. A body that API Gateway passed as text although it was binary (its
Content-Type is not one of the API's BinaryMediaTypes: invalid UTF-8 became U+FFFD) is refused
with a message saying so — the damage cannot be undone here.

:func:`source_from_body` turns a body into an :class:`ImageBytes`, :class:`ImageUrl` or
:class:`S3Object`; :class:`~harmony_aws.service.SearchService` reads it.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harmony_image import EmptyImageError, NotAnImageError
from harmony_image.decode import sniff_format

from .errors import BadRequestError, InvalidJsonError, PayloadTooLargeError, ValidationFailedError

# API Gateway accepts 10 MB; a synchronous Lambda invocation 6 MB (the base64 body counts), so
# a raw upload can be at most ~4.4 MB of image. Larger images go by URL or S3 reference.
MAX_BODY_BYTES = 6 * 1024 * 1024
MAX_URL_LENGTH = 2048
MAX_S3_KEY_BYTES = 1024  # S3's own limit
FILE_FIELD = "file"


@dataclass(frozen=True)
class ImageBytes:
    data: bytes


@dataclass(frozen=True)
class ImageUrl:
    url: str


@dataclass(frozen=True)
class S3Object:
    key: str
    bucket: str | None = None  # None: the catalog bucket


QuerySource = ImageBytes | ImageUrl | S3Object


class _S3Reference(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    key: str = Field(min_length=1, max_length=MAX_S3_KEY_BYTES)
    bucket: str | None = None


class _JsonQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    url: str | None = Field(default=None, min_length=1, max_length=MAX_URL_LENGTH)
    s3: _S3Reference | None = None
    image_base64: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> _JsonQuery:
        given = [name for name in ("url", "s3", "image_base64") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f'needs exactly one of "url", "s3", "image_base64" (got: {", ".join(given) or "none"})')
        return self


REPLACEMENT_CHARACTER = "\ufffd".encode()


def source_from_body(body: bytes, content_type: str | None) -> QuerySource:
    """The query a ``POST /search`` body carries; raises a 4xx :class:`HarmonyError` if none."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLargeError(f"the request body is {len(body):,} bytes; the limit is {MAX_BODY_BYTES:,}")
    if sniff_format(body) is not None:  # an image (or an unsupported one, named by the decoder)
        return ImageBytes(body)
    if ctype == "multipart/form-data":
        return ImageBytes(_multipart_file(body, content_type or ""))
    if ctype in ("application/json", "text/json") or ctype.endswith("+json") or body.lstrip()[:1] == b"{":
        return source_from_json(body)
    if not body:
        raise EmptyImageError('the request body is empty: send an image, multipart field "file", or JSON')
    if REPLACEMENT_CHARACTER in body[:64]:
        raise NotAnImageError(
            f"the body arrived as text, not bytes: its Content-Type ({ctype or 'none'}) is not one of the "
            "API's binary media types, so binary data was damaged on the way; send the image with "
            "Content-Type: image/jpeg (any image/*) or application/octet-stream"
        )
    return ImageBytes(body)


def source_from_json(body: bytes) -> QuerySource:
    if not body.strip():
        raise EmptyImageError("the request body is empty")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJsonError(f"the body is not valid JSON: {exc}") from exc
    except RecursionError:
        raise InvalidJsonError("the body is not valid JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise ValidationFailedError('the JSON body must be an object with "url", "s3" or "image_base64"')
    try:
        query = _JsonQuery.model_validate(doc)
    except ValidationError as exc:
        raise ValidationFailedError("the JSON body " + "; ".join(_describe(e) for e in exc.errors())) from None
    if query.url is not None:
        return ImageUrl(query.url)
    if query.s3 is not None:
        return S3Object(key=query.s3.key, bucket=query.s3.bucket)
    return ImageBytes(_base64_image(query.image_base64 or ""))


def _describe(error: object) -> str:
    e = error if isinstance(error, dict) else {}
    where = ".".join(str(p) for p in e.get("loc", ()))
    msg = str(e.get("msg", "is invalid")).removeprefix("Value error, ")
    return f'"{where}": {msg}' if where else msg


def _base64_image(raw: str) -> bytes:
    if raw.startswith("data:") and "," in raw:
        raw = raw.split(",", 1)[1]
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequestError(f'"image_base64" is not valid base64: {exc}') from exc
    if not data:
        raise EmptyImageError('"image_base64" is empty')
    return data


def _multipart_file(body: bytes, content_type: str) -> bytes:
    """The ``file`` field of a multipart/form-data body (the standard library's MIME parser)."""
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n" + body
    )
    if not message.get_param("boundary"):
        raise BadRequestError("multipart/form-data without a boundary")
    if not message.is_multipart() or not body.lstrip().startswith(b"--"):
        raise BadRequestError("multipart body does not contain its boundary")
    names = []
    for part in message.iter_parts():
        if part.get_content_disposition() != "form-data":
            continue
        name = part.get_param("name", header="content-disposition")
        names.append(str(name or ""))
        if name == FILE_FIELD:
            data = part.get_payload(decode=True)
            if not data:
                raise EmptyImageError(f'the "{FILE_FIELD}" field is empty')
            return bytes(data)
    fields = ", ".join(sorted(set(names))) or "none"
    raise BadRequestError(f'multipart/form-data needs the image in the field "{FILE_FIELD}" (fields sent: {fields})')
