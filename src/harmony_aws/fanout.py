"""Query fan-out over shard functions: a catalog too large for one function's memory is split
into shards (:func:`~harmony_aws.layout.shard_of`, compacted per shard by segments.py); a
ShardFunction serves one shard each, and SearchFunction asks all of them in parallel.

SearchFunction extracts the query's features once and invokes every shard (Lambda ``Invoke``,
``RequestResponse``) with::

    {"shard": i, "shards": n, "params": {"k", "scoring", "min_score"},
     "query": {"features": <base64 record bytes>, "detail_image": <base64 .npy>}}

Each shard answers ``{"results": [SearchResult as dict], "catalog_size", "index"}`` from its
own warm :class:`~harmony_aws.reader.IndexReader`; the results are merged with repeated URLs
and contents dropped before the cut (:func:`harmony_image.merge_results`). A shard that fails
leaves the answer flagged incomplete (``index.complete`` false, ``failed_shards``) rather than
failing the query; only when every shard failed does the query fail (502).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np

from harmony_image import HarmonyError, ImageFeatures, SearchParams, SearchResult, merge_results
from harmony_image.features import DETAIL_SIDE

from .config import MAX_SHARDS
from .errors import BadRequestError, StorageError
from .reader import IndexReader

log = logging.getLogger(__name__)

MAX_DETAIL_SIDE = 2 * DETAIL_SIDE
"""Largest side of a query's detail image accepted in a shard request (the engine makes it at
most :data:`~harmony_image.features.DETAIL_SIDE`)."""


class ShardFailedError(StorageError):
    code = "shard_failed"


def encode_query(features: ImageFeatures) -> dict[str, str]:
    """The query's features as JSON-safe text (the detail image included: default scoring needs
    it for the mirrored query)."""
    out = {"features": base64.b64encode(features.to_bytes()).decode("ascii")}
    if features.detail_image is not None:
        buf = io.BytesIO()
        np.save(buf, features.detail_image, allow_pickle=False)
        out["detail_image"] = base64.b64encode(buf.getvalue()).decode("ascii")
    return out


def decode_query(payload: Any) -> ImageFeatures:
    """:func:`encode_query`'s output back; :class:`BadRequestError` naming what is wrong."""
    if not isinstance(payload, dict) or not isinstance(payload.get("features"), str):
        raise BadRequestError('"query" must be an object with "features" (base64 text)')
    try:
        features = ImageFeatures.from_bytes(base64.b64decode(payload["features"], validate=True))
        if "detail_image" not in payload:
            return features
        raw = payload["detail_image"]
        if not isinstance(raw, str):
            raise BadRequestError('"query.detail_image" must be base64 text')
        detail = np.load(io.BytesIO(base64.b64decode(raw, validate=True)), allow_pickle=False)
    except (binascii.Error, ValueError, OSError) as exc:
        raise BadRequestError(f'"query" is not an encoded query ({exc})') from exc
    except HarmonyError as exc:
        raise BadRequestError(f'"query.features": {exc.message}') from exc
    if detail.dtype != np.uint8 or detail.ndim != 2 or not 0 < max(detail.shape) <= MAX_DETAIL_SIDE:
        raise BadRequestError(f'"query.detail_image" must be a 2-D uint8 image of at most {MAX_DETAIL_SIDE} px a side')
    return replace(features, detail_image=detail)


def shard_request(shard: int, shards: int, features: ImageFeatures, params: SearchParams) -> dict[str, Any]:
    return {
        "shard": shard,
        "shards": shards,
        "params": {"k": params.k, "scoring": params.scoring, "min_score": params.min_score},
        "query": encode_query(features),
    }


def parse_shard_request(event: Any) -> tuple[int, int, ImageFeatures, SearchParams]:
    """A shard request's parts, validated (:class:`BadRequestError` / the engine's 422)."""
    if not isinstance(event, dict):
        raise BadRequestError("a shard request is a JSON object")
    shard, shards = event.get("shard"), event.get("shards")
    if not (isinstance(shards, int) and isinstance(shard, int) and 1 <= shards <= MAX_SHARDS and 0 <= shard < shards):
        raise BadRequestError(f'"shard" and "shards" must be integers with 0 <= shard < shards <= {MAX_SHARDS}')
    raw = event.get("params")
    if not isinstance(raw, dict) or set(raw) - {"k", "scoring", "min_score"}:
        raise BadRequestError('"params" must be an object with only "k", "scoring" and "min_score"')
    params = SearchParams(**raw)
    return shard, shards, decode_query(event.get("query")), params


def answer_shard(event: Any, reader: IndexReader) -> dict[str, Any]:
    """ShardFunction's answer to one request, from ``reader`` (which serves that shard)."""
    shard, shards, features, params = parse_shard_request(event)
    if reader.shard != (shard, shards) and not (reader.shard is None and shards == 1):
        raise BadRequestError(f"this function serves shard {reader.shard}, not {shard} of {shards}")
    index = reader.index()
    return {
        "results": [r.to_dict() for r in index.search(features, params)],
        "catalog_size": len(index),
        "index": reader.status,
    }


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
        if r.get("FunctionError") or not isinstance(body, dict) or "results" not in body:
            detail = body.get("errorMessage") if isinstance(body, dict) else None
            raise ShardFailedError(f"shard {i}: {r.get('FunctionError') or 'bad answer'}: {detail or body!r:.300}")
        return body

    def search(self, features: ImageFeatures, params: SearchParams) -> tuple[list[SearchResult], int, dict[str, Any]]:
        """The merged results, the catalog size the shards hold and the index status (shards
        that failed are listed in ``failed_shards``)."""
        requests = [shard_request(i, self.shards, features, params) for i in range(self.shards)]

        def one(request: dict[str, Any]) -> dict[str, Any] | ShardFailedError:
            try:
                return self._invoke(request)
            except ShardFailedError as exc:
                log.warning("%s", exc.message)
                return exc

        with ThreadPoolExecutor(max_workers=min(self.shards, 64)) as pool:
            answers = list(pool.map(one, requests))
        ok = [a for a in answers if not isinstance(a, ShardFailedError)]
        failed = [i for i, a in enumerate(answers) if isinstance(a, ShardFailedError)]
        if not ok:
            first = answers[0]
            raise ShardFailedError(
                f"every shard failed; first: {first.message if isinstance(first, HarmonyError) else first}"
            )
        lists = [[SearchResult(**r) for r in a["results"]] for a in ok]
        status: dict[str, Any] = {
            "complete": not failed and all(a["index"].get("complete") for a in ok),
            "missing": sum(int(a["index"].get("missing", 0)) for a in ok),
        }
        if failed:
            status["failed_shards"] = failed
        return merge_results(lists, k=params.k), sum(int(a["catalog_size"]) for a in ok), status
