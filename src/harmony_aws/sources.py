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
import quopri
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
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
MAX_PARTS = 64  # multipart parts read before giving up (the file is usually the first or second)
MAX_PART_HEADER_BYTES = 8192
MAX_ERRORS_SHOWN = 3  # validation errors named in a message (a message must stay small)


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
    # unknown keys are named here, not by pydantic: 400,000 of them made 400,000 error objects
    # (half a GB, five seconds) for a message that names three
    _refuse_unknown(doc, ("url", "s3", "image_base64"), "")
    if isinstance(doc.get("s3"), dict):
        _refuse_unknown(doc["s3"], ("key", "bucket"), "s3.")
    try:
        query = _JsonQuery.model_validate(doc)
    except ValidationError as exc:
        errors = exc.errors()
        described = "; ".join(_describe(e) for e in errors[:MAX_ERRORS_SHOWN])
        more = f" (and {len(errors) - MAX_ERRORS_SHOWN:,} more)" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise ValidationFailedError("the JSON body " + described + more) from None
    if query.url is not None:
        return ImageUrl(query.url)
    if query.s3 is not None:
        return S3Object(key=query.s3.key, bucket=query.s3.bucket)
    return ImageBytes(_base64_image(query.image_base64 or ""))


def _refuse_unknown(doc: dict[str, object], known: tuple[str, ...], where: str) -> None:
    unknown = [k for k in doc if k not in known]
    if unknown:
        named = "; ".join(
            f'"{_short(where + str(k))}": Extra inputs are not permitted' for k in unknown[:MAX_ERRORS_SHOWN]
        )
        more = f" (and {len(unknown) - MAX_ERRORS_SHOWN:,} more)" if len(unknown) > MAX_ERRORS_SHOWN else ""
        raise ValidationFailedError("the JSON body " + named + more)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe(error: object) -> str:
    e = error if isinstance(error, dict) else {}
    where = _short(".".join(str(p) for p in e.get("loc", ())))
    msg = _short(str(e.get("msg", "is invalid")).removeprefix("Value error, "), 200)
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
    """The ``file`` field of a multipart/form-data body.

    Read in one pass with ``bytes.find`` (the standard library's MIME parser took a minute over
    500,000 empty parts and recursed into nested multiparts until RecursionError): at most
    MAX_PARTS parts, each part's headers parsed on their own, nested multiparts not entered.
    """
    header = Message(policy=HTTP)
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary or len(boundary) > 200:
        raise BadRequestError("multipart/form-data without a (valid) boundary")
    delimiter = b"--" + boundary.encode("latin-1", "replace")
    if not body.lstrip().startswith(b"--") or body.find(delimiter) < 0:
        raise BadRequestError("multipart body does not contain its boundary")
    names: list[str] = []
    pos = body.find(delimiter)
    for count in range(MAX_PARTS + 1):
        pos += len(delimiter)
        if body[pos : pos + 2] == b"--":  # the closing delimiter
            break
        if count == MAX_PARTS:
            raise BadRequestError(
                f'multipart/form-data with more than {MAX_PARTS} parts and no "{FILE_FIELD}" among them'
            )
        line_end = body.find(b"\n", pos)
        if line_end < 0:
            break
        start = line_end + 1
        end = body.find(b"\r\n" + delimiter, start)
        part = body[start:] if end < 0 else body[start:end]
        name, disposition, data = _form_part(part)
        if disposition == "form-data":
            names.append(name or "")
            if name == FILE_FIELD:
                if not data:
                    raise EmptyImageError(f'the "{FILE_FIELD}" field is empty')
                return data
        if end < 0:
            break
        pos = end + 2
    shown = sorted({_short(n, 40) for n in names})
    fields = ", ".join(shown[:10]) + (", ..." if len(shown) > 10 else "") if shown else "none"
    raise BadRequestError(f'multipart/form-data needs the image in the field "{FILE_FIELD}" (fields sent: {fields})')


def _form_part(part: bytes) -> tuple[str | None, str | None, bytes]:
    """(field name, disposition, decoded content) of one multipart part."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        head, found, content = part.partition(separator)
        if found:
            break
    else:
        head, content = part, b""
    if head.startswith((b"\r\n", b"\n")):  # a part without headers
        head, content = b"", part.lstrip(b"\r\n")
    if len(head) > MAX_PART_HEADER_BYTES:
        raise BadRequestError(f"a multipart part has more than {MAX_PART_HEADER_BYTES:,} bytes of headers")
    headers = BytesHeaderParser(policy=HTTP).parsebytes(head + b"\r\n\r\n")
    name = headers.get_param("name", header="content-disposition")
    encoding = str(headers.get("content-transfer-encoding", "")).strip().lower()
    try:
        if encoding == "base64":
            content = base64.b64decode(content)
        elif encoding == "quoted-printable":
            content = quopri.decodestring(content)
    except (binascii.Error, ValueError) as exc:
        raise BadRequestError(f"a multipart part is not valid {encoding}: {exc}") from None
    return (str(name) if isinstance(name, str) else None), headers.get_content_disposition(), content
