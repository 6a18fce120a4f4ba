"""Query fan-out over shard functions: a catalog too large for one function's memory is split
into shards (:func:`~harmony_aws.layout.shard_of`, compacted per shard by segments.py); a
ShardFunction serves one shard each, and SearchFunction asks all of them in parallel.

SearchFunction extracts the query's features once and invokes the shards (Lambda ``Invoke``,
``RequestResponse``) with::

    {"shard": i, "shards": n, "phase": "search" | "shortlist" | "verify",
     "params": {"k", "scoring", "min_score"},
     "query": {"features": <base64 record bytes>, "detail_image": <base64 .npy>, "colour_cells": <base64 .npy>,
               "mirror": <base64 record bytes>},
     "shortlist": {"keys": [str], "looks": [float], "votes": [int], "detail_votes": [int], "regions": [float],
                   "crops": [float]}}
                                                                          (phase "verify" only)

``default`` scoring over several shards runs in two rounds, so that the answer is exactly the one
an index over the whole catalog gives (harmony_image/index.py has why):

1. ``shortlist`` to every shard (the query without its detail image), answered
   ``{"shortlist": {"keys", "looks", "votes", "detail_votes", "regions", "crops"}, "catalog_size", "index"}``: the
   shard's best rows by each vote; :func:`~harmony_image.index.merge_shortlists` cuts the
   catalog's shortlist from them;
2. ``verify`` to each shard holding part of that shortlist, with the whole of it (the shard
   verifies its rows; the whole's first pass says which of them get the costly checks, so no
   shard does more of those than its share — :func:`~harmony_image.scoring.choices`), answered
   ``{"verified": {"keys", "urls", "sha256", "ssim", "orb", "inliers", "detail_inliers", "region", "crop",
   "colour", "detail_colour", "region_colour"}}`` (per view lists ``[[query], [mirror]]``);
   :func:`~harmony_image.index.merge_verified` decides and ranks.

``seed`` scoring (exhaustive and per row) and a single shard take one round, ``search``, answered
``{"results": [SearchResult as dict], "catalog_size", "index"}`` and merged with repeated URLs and
contents dropped before the cut (:func:`harmony_image.merge_results`).

Every field of a request and of an answer is checked: a bad request is refused (400), a bad
answer counts as a failed shard. A shard that fails leaves the answer flagged incomplete
(``index.complete`` false, ``failed_shards``) rather than failing the query; only when every
shard failed does the query fail (502).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from harmony_image import HarmonyError, ImageFeatures, SearchParams, SearchResult, merge_results
from harmony_image.features import COLOUR_GRID, DETAIL_SIDE, HUE_BINS, THUMB_SIDE
from harmony_image.index import Shortlist, Verified, merge_shortlists, merge_verified
from harmony_image.params import MAX_K
from harmony_image.scoring import Evidence, FirstPass, mirror_detail, mirrored, shortlist_rows

from .config import MAX_SHARDS
from .errors import BadRequestError, StorageError
from .layout import shard_of
from .reader import IndexReader
from .sources import MAX_S3_KEY_BYTES

log = logging.getLogger(__name__)

MAX_DETAIL_SIDE = 2 * DETAIL_SIDE
"""Largest side of a query's detail image accepted in a shard request (the engine makes it at
most :data:`~harmony_image.features.DETAIL_SIDE`)."""
MAX_ROWS = shortlist_rows(MAX_K)
"""Most rows in a shortlist or verification message: a shard's best by each first-pass vote."""
MAX_URL_CHARS = 8192
"""Longest result URL accepted from a shard (a catalog manifest's source URL)."""

Phase = Literal["search", "shortlist", "verify"]
PHASES: tuple[Phase, ...] = ("search", "shortlist", "verify")
_ANSWER = {"search": "results", "shortlist": "shortlist", "verify": "verified"}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PER_VIEW = ("ssim", "orb", "inliers", "detail_inliers", "region", "crop")
COLOUR_DTYPE = np.float32
"""The dtype of :attr:`Evidence.colour <harmony_image.scoring.Evidence.colour>` in the engine (it
comes from the float32 colour signatures): the calibration subtracts it at that precision, so the
coordinator must too (JSON carries the float32 values exactly as float64)."""


class ShardFailedError(StorageError):
    code = "shard_failed"


class _InvalidFieldError(ValueError):
    """A field of a shard message is wrong: a 400 in a request, a failed shard in an answer."""


@dataclass(frozen=True)
class ShardRequest:
    shard: int
    shards: int
    phase: Phase
    query: ImageFeatures
    params: SearchParams
    shortlist: Shortlist | None
    """Phase ``verify``: the catalog's shortlist; the shard verifies the rows it holds."""
    mirror: ImageFeatures | None = None
    """The query's mirrored features when sent (in phase ``verify`` with its detail features)."""


def _npy(array: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def encode_query(features: ImageFeatures, mirror: ImageFeatures | None = None) -> dict[str, str]:
    """The query's features as JSON-safe text, with what a query keeps beside its record when it
    has it: the detail image (default scoring's verification needs it for the mirrored query)
    and the colour grid (the colours of the part of the query a catalog image lies in); and
    ``mirror``, the query's :func:`~harmony_image.scoring.mirrored` features, when given (made
    once by SearchFunction, not by every shard in both rounds)."""
    out = {"features": base64.b64encode(features.to_bytes(compress=False)).decode("ascii")}
    if features.detail_image is not None:
        out["detail_image"] = _npy(features.detail_image)
    if features.colour_cells is not None:
        out["colour_cells"] = _npy(features.colour_cells)
    if mirror is not None:
        out["mirror"] = base64.b64encode(mirror.to_bytes(compress=False)).decode("ascii")
    return out


def _query_array(payload: dict[str, Any], name: str) -> np.ndarray | None:
    if name not in payload:
        return None
    if not isinstance(payload[name], str):
        raise BadRequestError(f'"query.{name}" must be base64 text')
    array: np.ndarray = np.load(io.BytesIO(base64.b64decode(payload[name], validate=True)), allow_pickle=False)
    return array


def decode_query(payload: Any) -> tuple[ImageFeatures, ImageFeatures | None]:
    """:func:`encode_query`'s output back: the query and its mirror (None when not sent);
    :class:`BadRequestError` naming what is wrong."""
    if not isinstance(payload, dict) or not isinstance(payload.get("features"), str):
        raise BadRequestError('"query" must be an object with "features" (base64 text)')
    if not isinstance(payload.get("mirror", ""), str):
        raise BadRequestError('"query.mirror" must be base64 text')
    try:
        features = ImageFeatures.from_bytes(base64.b64decode(payload["features"], validate=True))
        detail = _query_array(payload, "detail_image")
        cells = _query_array(payload, "colour_cells")
        sent = payload.get("mirror")
        mirror = None if sent is None else ImageFeatures.from_bytes(base64.b64decode(sent, validate=True))
    except (binascii.Error, ValueError, OSError) as exc:
        raise BadRequestError(f'"query" is not an encoded query ({exc})') from exc
    except HarmonyError as exc:
        raise BadRequestError(f'"query.features": {exc.message}') from exc
    if detail is not None and (
        detail.dtype != np.uint8 or detail.ndim != 2 or not 0 < max(detail.shape) <= MAX_DETAIL_SIDE
    ):
        raise BadRequestError(f'"query.detail_image" must be a 2-D uint8 image of at most {MAX_DETAIL_SIDE} px a side')
    grid = (COLOUR_GRID, COLOUR_GRID, HUE_BINS + 1)
    if cells is not None and (
        cells.dtype != np.float32 or cells.shape != grid or not (np.isfinite(cells) & (cells >= 0)).all()
    ):
        raise BadRequestError(f'"query.colour_cells" must be {grid} float32 values >= 0')
    if mirror is not None and not _mirrors(mirror, features):
        raise BadRequestError('"query.mirror" must be the features of the query flipped left-right')
    return replace(features, detail_image=detail, colour_cells=cells), mirror


def _mirrors(mirror: ImageFeatures, query: ImageFeatures) -> bool:
    """Whether ``mirror`` is of ``query`` flipped left-right, as far as a cheap check tells: the
    same image, its grayscale flipped, its thumbnail flipped (a 32 px area thumbnail of a 256 px
    image is a mean of 8x8 blocks, which a flip only reorders)."""
    square = (THUMB_SIDE, THUMB_SIDE)
    return (
        (mirror.sha256, mirror.width, mirror.height) == (query.sha256, query.width, query.height)
        and np.array_equal(mirror.gray, query.gray[:, ::-1])
        and np.array_equal(mirror.colours, query.colours)
        and mirror.thumb.size == query.thumb.size == THUMB_SIDE * THUMB_SIDE
        and np.allclose(mirror.thumb.reshape(square), query.thumb.reshape(square)[:, ::-1], atol=1e-6)
    )


# ------------------------------------------------------------------------ message fields, checked
def _object(value: Any, name: str, fields: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != fields:
        raise _InvalidFieldError(f'"{name}" must be an object with exactly {", ".join(sorted(fields))}')
    return value


def _list(value: Any, name: str, n: int | None, limit: int = MAX_ROWS) -> list[Any]:
    if not isinstance(value, list) or len(value) > limit or (n is not None and len(value) != n):
        size = f"{n} items" if n is not None else f"at most {limit} items"
        raise _InvalidFieldError(f'"{name}" must be a list of {size}')
    return value


def _keys(value: Any, name: str) -> list[str]:
    keys = _list(value, name, None)
    if not all(isinstance(k, str) and 0 < len(k.encode("utf-8", "replace")) <= MAX_S3_KEY_BYTES for k in keys):
        raise _InvalidFieldError(f'"{name}" must hold catalog keys (text of 1 to {MAX_S3_KEY_BYTES} bytes)')
    if len(set(keys)) != len(keys):
        raise _InvalidFieldError(f'"{name}" repeats a key')
    return keys


def _numbers(value: Any, name: str, n: int, *, counts: bool = False) -> np.ndarray:
    items = _list(value, name, n)
    kind = (int,) if counts else (int, float)
    if not all(isinstance(x, kind) and not isinstance(x, bool) and math.isfinite(x) for x in items):
        raise _InvalidFieldError(f'"{name}" must hold {"integers" if counts else "finite numbers"}')
    out = np.array(items, dtype=np.int64 if counts else np.float64)
    if counts and (out < 0).any():
        raise _InvalidFieldError(f'"{name}" must hold counts (integers >= 0)')
    return out


def _shortlist_fields(value: Any, name: str) -> Shortlist:
    raw = _object(value, name, {"keys", "looks", "votes", "detail_votes", "regions", "crops"})
    keys = _keys(raw["keys"], f"{name}.keys")
    looks = _numbers(raw["looks"], f"{name}.looks", len(keys))
    votes = _numbers(raw["votes"], f"{name}.votes", len(keys), counts=True)
    detail_votes = _numbers(raw["detail_votes"], f"{name}.detail_votes", len(keys), counts=True)
    regions = _numbers(raw["regions"], f"{name}.regions", len(keys))
    crops = _numbers(raw["crops"], f"{name}.crops", len(keys))
    return Shortlist(tuple(keys), FirstPass(looks, votes, detail_votes, regions, crops))


def _shortlist_json(s: Shortlist) -> dict[str, Any]:
    return {
        "keys": list(s.keys),
        "looks": [float(x) for x in s.first.looks],
        "votes": [int(x) for x in s.first.votes],
        "detail_votes": [int(x) for x in s.first.detail_votes],
        "regions": [float(x) for x in s.first.regions],
        "crops": [float(x) for x in s.first.crops],
    }


def _verified_json(v: Verified) -> dict[str, Any]:
    e = v.evidence
    return {
        "keys": list(v.keys),
        "urls": list(v.urls),
        "sha256": list(v.sha256),
        **{f: [[float(x) for x in view] for view in getattr(e, f)] for f in _PER_VIEW},
        "colour": [float(x) for x in e.colour],
        "detail_colour": [float(x) for x in e.detail_colour],
        "region_colour": [float(x) for x in e.region_colour],
    }


def _verified_fields(value: Any, asked: Shortlist) -> Verified:
    """A ``verified`` answer to a request for ``asked``: its rows must be some of those asked for."""
    raw = _object(value, "verified", {"keys", "urls", "sha256", *_PER_VIEW, "colour", "detail_colour", "region_colour"})
    keys = _keys(raw["keys"], "verified.keys")
    at = {key: i for i, key in enumerate(asked.keys)}
    if any(key not in at for key in keys) or keys != sorted(keys):
        raise _InvalidFieldError('"verified.keys" must be some of the keys asked for, in order')
    n = len(keys)
    urls = _list(raw["urls"], "verified.urls", n)
    if not all(isinstance(u, str) and 0 < len(u) <= MAX_URL_CHARS for u in urls):
        raise _InvalidFieldError(f'"verified.urls" must hold URLs (text of 1 to {MAX_URL_CHARS} characters)')
    hashes = _list(raw["sha256"], "verified.sha256", n)
    if not all(isinstance(h, str) and _SHA256.fullmatch(h) for h in hashes):
        raise _InvalidFieldError('"verified.sha256" must hold SHA-256 digests (64 lowercase hex digits)')
    views = {
        f: np.stack([_numbers(v, f"verified.{f}[{i}]", n) for i, v in enumerate(_list(raw[f], f"verified.{f}", 2))])
        for f in _PER_VIEW
    }
    rows = np.array([at[key] for key in keys], dtype=np.int64)
    evidence = Evidence(
        first=asked.first.take(rows),
        colour=_numbers(raw["colour"], "verified.colour", n).astype(COLOUR_DTYPE),
        detail_colour=_numbers(raw["detail_colour"], "verified.detail_colour", n).astype(COLOUR_DTYPE),
        region_colour=_numbers(raw["region_colour"], "verified.region_colour", n).astype(COLOUR_DTYPE),
        **views,
    )
    return Verified(tuple(keys), tuple(urls), tuple(hashes), evidence)


def _results_fields(value: Any, k: int) -> list[SearchResult]:
    out = []
    for i, r in enumerate(_list(value, "results", None, limit=k)):
        r = _object(r, f"results[{i}]", {"key", "url", "score", "ssim", "orb", "sha256"})
        text = (r["key"], r["url"], r["sha256"])
        numbers = (r["score"], r["ssim"], r["orb"])
        if not all(isinstance(t, str) for t in text) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in numbers
        ):
            raise _InvalidFieldError(
                f'"results[{i}]": key, url and sha256 must be text; score, ssim and orb finite numbers'
            )
        out.append(SearchResult(**r))
    return out


def _index_status(value: Any) -> dict[str, Any]:
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("complete"), bool)
        or not isinstance(value.get("missing"), int)
        or isinstance(value.get("missing"), bool)
        or value["missing"] < 0
        or set(value) - {"complete", "missing", "error"}
    ):
        raise _InvalidFieldError('"index" must be {"complete": bool, "missing": int >= 0} (and "error")')
    return value


def _catalog_size(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _InvalidFieldError('"catalog_size" must be an integer >= 0')
    return value


# ------------------------------------------------------------------------------ the shard's side
def shard_request(
    shard: int,
    shards: int,
    features: ImageFeatures,
    params: SearchParams,
    *,
    phase: Phase = "search",
    shortlist: Shortlist | None = None,
    mirror: ImageFeatures | None = None,
) -> dict[str, Any]:
    """A request to shard ``shard`` of ``shards``; ``shortlist`` (phase ``verify``) is the
    catalog's; ``mirror``, the query's :func:`~harmony_image.scoring.mirrored` features (with
    their detail features for phase ``verify``), saves the shard making them. Phase
    ``shortlist`` leaves the detail image out (unused there)."""
    query = replace(features, detail_image=None, colour_cells=None) if phase == "shortlist" else features
    out: dict[str, Any] = {
        "shard": shard,
        "shards": shards,
        "phase": phase,
        "params": {"k": params.k, "scoring": params.scoring, "min_score": params.min_score},
        "query": encode_query(query, mirror),
    }
    if shortlist is not None:
        out["shortlist"] = _shortlist_json(shortlist)
    return out


def shard_requests(
    shards: Iterable[int],
    n: int,
    features: ImageFeatures,
    params: SearchParams,
    *,
    phase: Phase = "search",
    shortlist: Shortlist | None = None,
    mirror: ImageFeatures | None = None,
) -> dict[int, dict[str, Any]]:
    """:func:`shard_request` to each of ``shards`` of ``n``: the query, its mirror and the
    shortlist are encoded once for all of them, not once per shard."""
    body = shard_request(0, n, features, params, phase=phase, shortlist=shortlist, mirror=mirror)
    return {i: {**body, "shard": i} for i in shards}


def parse_shard_request(event: Any) -> ShardRequest:
    """A shard request, validated (:class:`BadRequestError` / the engine's 422)."""
    if not isinstance(event, dict):
        raise BadRequestError("a shard request is a JSON object")
    shard, shards = event.get("shard"), event.get("shards")
    if not (isinstance(shards, int) and isinstance(shard, int) and 1 <= shards <= MAX_SHARDS and 0 <= shard < shards):
        raise BadRequestError(f'"shard" and "shards" must be integers with 0 <= shard < shards <= {MAX_SHARDS}')
    phase = event.get("phase", "search")
    if phase not in PHASES:
        raise BadRequestError(f'"phase" must be one of {", ".join(PHASES)}')
    unknown = set(map(str, event)) - {"shard", "shards", "phase", "params", "query", "shortlist"}
    if unknown:
        raise BadRequestError(f"unknown fields in a shard request: {', '.join(sorted(unknown))}")
    raw = event.get("params")
    if not isinstance(raw, dict) or set(raw) - {"k", "scoring", "min_score"}:
        raise BadRequestError('"params" must be an object with only "k", "scoring" and "min_score"')
    params = SearchParams(**raw)
    if phase != "search" and params.scoring != "default":
        raise BadRequestError(f'phase "{phase}" is for default scoring (seed is one phase, "search")')
    if (phase == "verify") != ("shortlist" in event):
        raise BadRequestError('"shortlist" comes with phase "verify", and only with it')
    try:
        shortlist = _shortlist_fields(event["shortlist"], "shortlist") if phase == "verify" else None
    except _InvalidFieldError as exc:
        raise BadRequestError(str(exc)) from None
    query, mirror = decode_query(event.get("query"))
    if phase != "search" and query.seed_only:
        raise BadRequestError(f'phase "{phase}" needs the query\'s full features, not those extracted for seed scoring')
    if phase == "verify" and query.detail_image is None:
        raise BadRequestError('phase "verify" needs the query\'s "detail_image"')
    if (
        phase == "verify"
        and mirror is not None
        and len(query.detail_descriptors)
        and not len(mirror.detail_descriptors)
    ):
        raise BadRequestError('phase "verify" needs "query.mirror" with its detail features (or no mirror)')
    return ShardRequest(shard, shards, phase, query, params, shortlist, mirror)


def answer_shard(event: Any, reader: IndexReader) -> dict[str, Any]:
    """ShardFunction's answer to one request, from ``reader`` (which serves that shard)."""
    request = parse_shard_request(event)
    shard, shards = request.shard, request.shards
    if reader.shard != (shard, shards) and not (reader.shard is None and shards == 1):
        raise BadRequestError(f"this function serves shard {reader.shard}, not {shard} of {shards}")
    index = reader.index()
    if request.phase == "verify":
        assert request.shortlist is not None  # parse_shard_request's promise
        return {"verified": _verified_json(index.verify(request.query, request.shortlist, mirror=request.mirror))}
    if request.phase == "shortlist":
        found: Any = _shortlist_json(index.first_pass(request.query, k=request.params.k, mirror=request.mirror))
    else:
        found = [r.to_dict() for r in index.search(request.query, request.params)]
    return {_ANSWER[request.phase]: found, "catalog_size": len(index), "index": reader.status}


# ------------------------------------------------------------------------------ SearchFunction's
class ShardFanOut:
    """Searches every shard through ``client`` (a boto3 Lambda client) and merges; ``functions``
    are the ShardFunctions' names, shard 0 first."""

    def __init__(self, client: Any, functions: tuple[str, ...]) -> None:
        if not 1 <= len(functions) <= MAX_SHARDS:
            raise ValueError(f"1 to {MAX_SHARDS} shard functions are needed")
        self.client = client
        self.functions = functions
        self.shards = len(functions)

    def _invoke(self, request: dict[str, Any]) -> dict[str, Any]:
        i = request["shard"]
        try:
            r = self.client.invoke(FunctionName=self.functions[i], Payload=json.dumps(request).encode("utf-8"))
            body = json.loads(r["Payload"].read())
        except Exception as exc:
            raise ShardFailedError(f"shard {i}: {type(exc).__name__}: {exc}") from exc
        if r.get("FunctionError") or not isinstance(body, dict) or _ANSWER[request["phase"]] not in body:
            detail = (body.get("errorMessage") or body.get("error")) if isinstance(body, dict) else None
            raise ShardFailedError(f"shard {i}: {r.get('FunctionError') or 'bad answer'}: {detail or body!r:.300}")
        return body

    def _round(
        self, requests: dict[int, dict[str, Any]], read: Callable[[int, dict[str, Any]], Any]
    ) -> tuple[dict[int, Any], list[int]]:
        """Each request sent to its shard at once; what ``read`` makes of each answer (by shard),
        and the shards that failed (no answer, or one ``read`` found wrong)."""

        def one(i: int) -> Any:
            try:
                body = self._invoke(requests[i])
                try:
                    return read(i, body)
                except _InvalidFieldError as exc:
                    raise ShardFailedError(f"shard {i}: bad answer: {exc}") from None
            except ShardFailedError as exc:
                log.warning("%s", exc.message)
                return exc

        with ThreadPoolExecutor(max_workers=max(1, min(len(requests), 64))) as pool:
            answers = dict(zip(requests, pool.map(one, requests), strict=True))
        failed = [i for i, a in answers.items() if isinstance(a, ShardFailedError)]
        if len(failed) == len(answers) == self.shards:
            first = answers[failed[0]]
            raise ShardFailedError(f"every shard failed; first: {first.message}")
        return {i: a for i, a in answers.items() if i not in failed}, failed

    def search(self, features: ImageFeatures, params: SearchParams) -> tuple[list[SearchResult], int, dict[str, Any]]:
        """The merged results, the catalog size the shards hold and the index status (shards
        that failed are listed in ``failed_shards``)."""
        n = self.shards

        def head(i: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            return _catalog_size(body.get("catalog_size")), _index_status(body.get("index"))

        if params.scoring == "seed" or n == 1:

            def read(i: int, body: dict[str, Any]) -> tuple[Any, ...]:
                results = _results_fields(body["results"], params.k)
                if n > 1 and any(shard_of(r.key, n) != i for r in results):
                    raise _InvalidFieldError("a result's key is another shard's")
                return (results, *head(i, body))

            answers, failed = self._round(shard_requests(range(n), n, features, params), read)
            results = merge_results([a[0] for a in answers.values()], k=params.k)
            heads = [a[1:] for a in answers.values()]
        else:

            def read_shortlist(i: int, body: dict[str, Any]) -> tuple[Any, ...]:
                part = _shortlist_fields(body["shortlist"], "shortlist")
                if len(part) > shortlist_rows(params.k) or any(shard_of(key, n) != i for key in part.keys):
                    raise _InvalidFieldError("the shortlist is longer than asked for, or holds another shard's key")
                return (part, *head(i, body))

            # the query's mirror, made once here: its 512 px ORB while the shards make their shortlists
            mirror = mirrored(features, detail=False)
            with ThreadPoolExecutor(max_workers=1) as background:
                with_detail = background.submit(mirror_detail, mirror, features)
                requests = shard_requests(range(n), n, features, params, phase="shortlist", mirror=mirror)
                firsts, failed = self._round(requests, read_shortlist)
                mirror = with_detail.result()
            catalog = merge_shortlists([a[0] for a in firsts.values()], k=params.k)
            parts = {i: _part(catalog, [shard_of(key, n) == i for key in catalog.keys]) for i in firsts}
            asked = {i: p for i, p in parts.items() if len(p)}
            seconds, failed_later = self._round(
                shard_requests(asked, n, features, params, phase="verify", shortlist=catalog, mirror=mirror),
                lambda i, body: _verified_fields(body["verified"], asked[i]),
            )
            failed = sorted([*failed, *failed_later])
            if len(failed) == n:
                raise ShardFailedError("every shard failed (in the verification round)")
            results = merge_verified(seconds.values(), k=params.k, min_score=params.min_score)
            heads = [a[1:] for i, a in firsts.items() if i not in failed_later]
        status: dict[str, Any] = {
            "complete": not failed and all(h[1]["complete"] for h in heads),
            "missing": sum(int(h[1]["missing"]) for h in heads),
        }
        if failed:
            status["failed_shards"] = failed
        return results, sum(h[0] for h in heads), status


def _part(shortlist: Shortlist, mine: list[bool]) -> Shortlist:
    at = np.flatnonzero(np.array(mine, dtype=bool))
    return shortlist.take(at)
