"""harmony_aws.fanout: shard requests (encoding, validation), ShardFunction's answers, and the
fan-out over shards answering in process (every request and answer through JSON), on real
images: its merged answer is the unsharded index's, exactly; a shard answering nonsense is a
failed shard. Through a Lambda Invoke API: tests/local/test_shards.py."""

from __future__ import annotations

import base64
import dataclasses
import io
import json

import numpy as np
import pytest

from harmony_aws.errors import BadRequestError, error_body
from harmony_aws.fanout import (
    ShardFailedError,
    ShardFanOut,
    answer_shard,
    decode_query,
    encode_query,
    parse_shard_request,
    shard_request,
    shard_requests,
)
from harmony_aws.layout import shard_of
from harmony_aws.reader import IndexReader
from harmony_aws.s3 import Bucket
from harmony_aws.segments import Compactor
from harmony_aws.urls import ResultUrls
from harmony_image import (
    HarmonyError,
    SearchIndex,
    SearchParams,
    SearchResult,
    extract_features,
    merge_results,
)
from harmony_image.index import Shortlist
from harmony_image.scoring import FirstPass, mirrored, shortlist_rows
from tests.engine.test_tiers import _variants
from tests.support import BUCKET, CATALOG_NAMES, QUERY_VARIANTS, put_catalog, record_writer


@pytest.fixture(scope="module")
def sample_index(catalog_photos) -> SearchIndex:
    index = SearchIndex()
    for name, data in catalog_photos.items():
        index.add(name, extract_features(data, query=False))
    return index


def test_a_query_survives_its_encoding(images, sample_index):
    """Searching with the decoded query gives exactly what the original query gives."""
    index = sample_index
    for q in QUERY_VARIANTS[:4]:
        feats = extract_features(images[q])
        back, no_mirror = decode_query(encode_query(feats))
        assert no_mirror is None
        assert back.detail_image is not None and np.array_equal(back.detail_image, feats.detail_image)
        assert back.colour_cells is not None and np.array_equal(back.colour_cells, feats.colour_cells)
        for scoring in ("default", "seed"):
            p = SearchParams(k=5, scoring=scoring)
            assert index.search(back, p) == index.search(feats, p)
        mirror = mirrored(feats)
        again, mirror_back = decode_query(encode_query(feats, mirror))
        assert mirror_back is not None and _same(mirror_back, mirror) and _same(again, feats)


def test_a_shard_given_the_mirror_answers_as_one_making_it(images, sample_index):
    """The mirror SearchFunction sends saves each shard making it, and changes no answer."""
    index = sample_index
    for q in QUERY_VARIANTS[:4]:
        feats = extract_features(images[q])
        shortlist = index.first_pass(feats, k=5)
        given_first = index.first_pass(feats, k=5, mirror=mirrored(feats, detail=False))
        assert given_first.keys == shortlist.keys and _same(given_first.first, shortlist.first)
        given, made = index.verify(feats, shortlist, mirror=mirrored(feats)), index.verify(feats, shortlist)
        assert given.keys == made.keys and _same(given.evidence, made.evidence)


def _same(a, b) -> bool:
    """Two dataclasses of arrays (features, evidence) hold equal values, field by field."""

    def equal(x, y) -> bool:
        return _same(x, y) if dataclasses.is_dataclass(x) else np.array_equal(x, y)

    return all(equal(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a) if f.compare)


def _npy(a: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, a)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda r: r.update(shard=3), "0 <= shard < shards"),
        (lambda r: r.update(shards=0), "0 <= shard < shards"),
        (lambda r: r.update(shard="0"), "integers"),
        (lambda r: r.update(params={"k": 5, "evil": 1}), "only"),
        (lambda r: r.update(query="x"), "must be an object"),
        (lambda r: r["query"].update(features="!!not base64!!"), "not an encoded query"),
        (lambda r: r["query"].update(features=base64.b64encode(b"PK\x03\x04junk").decode()), "damaged"),
        (lambda r: r["query"].update(detail_image=_npy(np.zeros((4096, 4), np.uint8))), "at most"),
        (lambda r: r["query"].update(detail_image=_npy(np.zeros((64, 64), np.float64))), "2-D uint8"),
        (lambda r: r["query"].update(detail_image=base64.b64encode(b"\x93NUMPY junk").decode()), "not an encoded"),
        (lambda r: r["query"].update(colour_cells=7), "base64 text"),
        (lambda r: r["query"].update(colour_cells=_npy(np.zeros((8, 8, 12), np.float32))), "float32 values"),
        (lambda r: r["query"].update(colour_cells=_npy(np.full((8, 8, 13), np.nan, np.float32))), "float32 values"),
        (lambda r: r["query"].update(colour_cells=_npy(np.full((8, 8, 13), -1, np.float32))), ">= 0"),
        (lambda r: r["query"].update(colour_cells=_npy(np.zeros((8, 8, 13), np.float64))), "float32 values"),
        (lambda r: r["query"].update(mirror=3), "base64 text"),
        (lambda r: r["query"].update(mirror=r["query"]["features"]), "flipped left-right"),
        (lambda r: r["query"].update(mirror=base64.b64encode(b"PK\x03\x04junk").decode()), "damaged"),
    ],
)
def test_bad_shard_requests_are_refused_with_a_reason(images, change, says):
    feats = extract_features(images["coffee__resize_half.png"])
    request = shard_request(1, 2, feats, SearchParams(), mirror=mirrored(feats, detail=False))
    assert parse_shard_request(json.loads(json.dumps(request))).mirror is not None
    change(request)
    with pytest.raises(BadRequestError, match=says):
        parse_shard_request(request)


def test_a_default_phase_refuses_a_query_extracted_for_seed_scoring(images):
    lean = extract_features(images["coffee__resize_half.png"], scoring="seed")
    shortlist = shard_request(1, 2, lean, SearchParams(), phase="shortlist")
    verify = shard_request(1, 2, lean, SearchParams(), phase="verify", shortlist=_part())
    for phase, request in (("shortlist", shortlist), ("verify", verify)):
        with pytest.raises(BadRequestError, match=f'phase "{phase}" needs the query\'s full features'):
            parse_shard_request(json.loads(json.dumps(request)))
    seed = shard_request(1, 2, lean, SearchParams(scoring="seed"), phase="search")
    assert parse_shard_request(json.loads(json.dumps(seed))).query.seed_only


def _part(
    keys=("catalog/a.jpg", "catalog/b.jpg"),
    looks=(0.5, 0.25),
    votes=(3, 0),
    detail_votes=(1, 4),
    regions=(0.9, 0.1),
    crops=(0.2, 0.8),
) -> Shortlist:
    first = FirstPass(np.array(looks), np.array(votes), np.array(detail_votes), np.array(regions), np.array(crops))
    return Shortlist(tuple(keys), first)


def test_a_verification_request_needs_the_mirrors_detail_features(images):
    feats = extract_features(images["coffee__resize_half.png"])
    assert len(feats.detail_descriptors)
    for mirror, accepted in ((mirrored(feats), True), (None, True), (mirrored(feats, detail=False), False)):
        request = shard_request(1, 2, feats, SearchParams(), phase="verify", shortlist=_part(), mirror=mirror)
        if accepted:
            sent = parse_shard_request(json.loads(json.dumps(request))).mirror
            assert sent is None if mirror is None else sent is not None and _same(sent, mirror)
        else:
            with pytest.raises(BadRequestError, match="with its detail features"):
                parse_shard_request(request)


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda r: r.update(phase="all"), '"phase" must be one of'),
        (lambda r: r.update(extra=1), "unknown fields in a shard request: extra"),
        (lambda r: r.pop("shortlist"), '"shortlist" comes with phase "verify"'),
        (lambda r: r.update(params={"k": 5, "scoring": "seed"}), "for default scoring"),
        (lambda r: r["query"].pop("detail_image"), 'needs the query\'s "detail_image"'),
        (
            lambda r: r.update(shortlist={"keys": [], "looks": []}),
            "exactly crops, detail_votes, keys, looks, regions, votes",
        ),
        (lambda r: r["shortlist"].update(keys=["catalog/a.jpg"] * 2), "repeats a key"),
        (lambda r: r["shortlist"].update(keys=["catalog/a.jpg", 7]), "catalog keys"),
        (lambda r: r["shortlist"].update(keys=["catalog/a.jpg", "x" * 1025]), "catalog keys"),
        (lambda r: r["shortlist"].update(keys=["catalog/a.jpg"] * 1000), "at most"),
        (lambda r: r["shortlist"].update(looks=[0.5]), "a list of 2 items"),
        (lambda r: r["shortlist"].update(looks=[0.5, "NaN"]), "finite numbers"),
        (lambda r: r["shortlist"].update(looks=[0.5, float("inf")]), "finite numbers"),
        (lambda r: r["shortlist"].update(votes=[1, True]), "integers"),
        (lambda r: r["shortlist"].update(votes=[1, -2]), "counts"),
        (lambda r: r["shortlist"].update(votes=[1, 2.5]), "integers"),
        (lambda r: r["shortlist"].update(detail_votes=[1, -1]), "counts"),
        (lambda r: r["shortlist"].update(regions=[0.5, "0.9"]), "finite numbers"),
        (lambda r: r["shortlist"].update(crops=[0.5, None]), "finite numbers"),
        (lambda r: r["shortlist"].pop("detail_votes"), "exactly crops, detail_votes, keys, looks, regions, votes"),
    ],
)
def test_bad_verification_requests_are_refused_with_a_reason(images, change, says):
    feats = extract_features(images["coffee__resize_half.png"])
    request = shard_request(1, 2, feats, SearchParams(), phase="verify", shortlist=_part())
    assert parse_shard_request(json.loads(json.dumps(request))).shortlist is not None
    change(request)
    with pytest.raises(BadRequestError, match=says):
        parse_shard_request(request)


def test_a_shortlist_request_leaves_the_detail_image_out(images):
    feats = extract_features(images["coffee__resize_half.png"])
    request = shard_request(0, 2, feats, SearchParams(), phase="shortlist")
    assert "detail_image" not in request["query"] and "colour_cells" not in request["query"]
    assert {"detail_image", "colour_cells"} <= set(shard_request(0, 2, feats, SearchParams())["query"])
    assert parse_shard_request(request).phase == "shortlist"


def test_a_round_of_requests_encodes_the_query_once_and_names_each_shard(images):
    feats = extract_features(images["coffee__resize_half.png"])
    requests = shard_requests(
        [0, 2], 3, feats, SearchParams(), phase="verify", shortlist=_part(), mirror=mirrored(feats)
    )
    assert list(requests) == [0, 2]
    assert requests[2]["query"] is requests[0]["query"] and requests[2]["shortlist"] is requests[0]["shortlist"]
    for i, request in requests.items():
        parsed = parse_shard_request(json.loads(json.dumps(request)))
        assert (parsed.shard, parsed.shards, parsed.phase) == (i, 3, "verify") and parsed.mirror is not None
        alone = shard_request(i, 3, feats, SearchParams(), phase="verify", shortlist=_part(), mirror=mirrored(feats))
        # the same request as one made for that shard alone (the encoded query aside: a zip stamps its time)
        assert {k: v for k, v in request.items() if k != "query"} == {k: v for k, v in alone.items() if k != "query"}
        assert set(request["query"]) == set(alone["query"])


def test_invalid_params_are_the_engines_422(images):
    request = shard_request(0, 1, extract_features(images["coffee__resize_half.png"]), SearchParams())
    request["params"]["k"] = 10_000
    with pytest.raises(HarmonyError) as err:
        parse_shard_request(request)
    assert err.value.status == 422


def test_shards_answer_their_part_and_merge_into_the_whole(s3, images, tmp_path):
    """Three shard readers over one compacted bucket: each answers from its own keys only; the
    merged answers rank an exact copy first, as the unsharded index does."""
    put_catalog(s3, BUCKET, images)
    writer = record_writer(Bucket(BUCKET))
    for n in CATALOG_NAMES:
        writer.reconcile("catalog/" + n)
    Compactor(Bucket(BUCKET), shards=3).compact()
    b = Bucket(BUCKET)
    readers = [
        IndexReader(b, ResultUrls(b, presign_seconds=60), ttl=60, cache_dir=tmp_path / str(i), shard=(i, 3))
        for i in range(3)
    ]
    whole = IndexReader(b, ResultUrls(b, presign_seconds=60), ttl=60, cache_dir=tmp_path / "all").index()
    for name in CATALOG_NAMES:
        feats = extract_features(images[name])
        answers = [answer_shard(shard_request(i, 3, feats, SearchParams(k=3)), r) for i, r in enumerate(readers)]
        assert sum(a["catalog_size"] for a in answers) == len(CATALOG_NAMES)
        for i, a in enumerate(answers):
            assert all(shard_of(r["key"], 3) == i for r in a["results"])
        merged = merge_results([[SearchResult(**r) for r in a["results"]] for a in answers], k=3)
        assert merged[0].key == "catalog/" + name and merged[0].score > 0.99
        assert merged[0] == whole.search(feats, SearchParams(k=3))[0]
    with pytest.raises(BadRequestError, match="serves shard"):
        answer_shard(shard_request(1, 3, feats, SearchParams()), readers[0])


class InProcessLambda:
    """The Lambda ``Invoke`` of boto3's client, answered in process as ShardFunction does
    (functions/shard/app.py): ``answer_shard`` from each function's reader, through JSON both
    ways; ``tamper(function, phase, body)`` may change an answer first."""

    def __init__(self, readers, tamper=None) -> None:
        self.readers = readers
        self.tamper = tamper
        self.calls: list[tuple[str, str]] = []
        self.mirrored: list[bool] = []  # whether each request carried the query's mirror

    def invoke(self, *, FunctionName: str, Payload: bytes):  # noqa: N803 - boto3's names
        request = json.loads(Payload)
        self.calls.append((FunctionName, request["phase"]))
        self.mirrored.append("mirror" in request["query"])
        try:
            body = answer_shard(request, self.readers[FunctionName])
        except HarmonyError as exc:
            body = {**error_body(exc.code, exc.message), "status": exc.status}
        body = json.loads(json.dumps(body))
        if self.tamper is not None:
            self.tamper(FunctionName, request["phase"], body)
        return {"StatusCode": 200, "Payload": io.BytesIO(json.dumps(body).encode())}


def _sharded_bucket(s3, tmp_path, photos: dict[str, bytes], shards: int):
    """``photos`` indexed and compacted into ``shards`` shards: (ShardFunction name -> its reader,
    the unsharded index)."""
    put_catalog(s3, BUCKET, photos, names=sorted(photos))
    b = Bucket(BUCKET)
    writer = record_writer(b)
    for n in sorted(photos):
        writer.reconcile("catalog/" + n)
    Compactor(b, shards=shards).compact()
    readers = {
        f"Shard{i}": IndexReader(
            b, ResultUrls(b, presign_seconds=60), ttl=60, cache_dir=tmp_path / str(i), shard=(i, shards)
        )
        for i in range(shards)
    }
    return readers, IndexReader(b, ResultUrls(b, presign_seconds=60), ttl=60, cache_dir=tmp_path / "all").index()


def test_the_phased_fan_out_answers_exactly_as_one_index(s3, images, catalog_photos, tmp_path):
    """~70 real photos and copies of them in 3 shards (more than a shortlist keeps): every merged
    answer, default and seed, is the unsharded index's — keys, URLs, scores, SSIM and ORB."""
    photos = dict(catalog_photos)
    for name, data in catalog_photos.items():
        photos.update({f"copies/{name.removesuffix('.jpg')}-{tag}.jpg": copy for tag, copy in _variants(data).items()})
    readers, whole = _sharded_bucket(s3, tmp_path, photos, 3)
    assert len(whole) == len(photos) > 2 * 24
    client = InProcessLambda(readers)
    fan = ShardFanOut(client, tuple(readers))
    for q in [*QUERY_VARIANTS, "coins.jpg", "camera_gray.png"]:
        feats = extract_features(images[q])
        for params in (SearchParams(k=5), SearchParams(k=20, min_score=0.1), SearchParams(k=5, scoring="seed")):
            results, size, status = fan.search(feats, params)
            assert results == whole.search(feats, params), (q, params)
            assert size == len(photos) and status == {"complete": True, "missing": 0}
    phases = [phase for _, phase in client.calls]  # default: both rounds, to every shard; seed: one
    assert phases.count("shortlist") == 2 * phases.count("search") > 0
    assert 0 < phases.count("verify") <= phases.count("shortlist")
    # both rounds of default carry the mirror SearchFunction made; seed's one round does not need it
    assert all(sent == (phase != "search") for sent, phase in zip(client.mirrored, phases, strict=True))
    seed = SearchParams(k=5, scoring="seed")  # a seed query's features, as SearchFunction extracts them
    for q in QUERY_VARIANTS:
        lean, feats = extract_features(images[q], scoring="seed"), extract_features(images[q])
        assert fan.search(lean, seed)[0] == whole.search(feats, seed), q


def test_one_shard_takes_one_round(s3, catalog_photos, images, tmp_path):
    readers, whole = _sharded_bucket(s3, tmp_path, catalog_photos, 1)
    client = InProcessLambda(readers)
    feats = extract_features(images["chelsea__hflip.jpg"])
    results, _, _ = ShardFanOut(client, tuple(readers)).search(feats, SearchParams(k=5))
    assert results == whole.search(feats, SearchParams(k=5)) and client.calls == [("Shard0", "search")]


SHARD0_KEY = next(key for i in range(64) if shard_of(key := f"catalog/elsewhere-{i}.jpg", 2) == 0)


def _pad_shortlist(body: dict, rows: int) -> None:
    """Shard 1's shortlist answer grown to ``rows`` rows with keys of its own (that it does not
    hold: verification leaves them out), kept in key order."""
    s = body["shortlist"]
    extra = (key for i in range(10_000) if shard_of(key := f"catalog/zz-{i:05d}.jpg", 2) == 1)
    while len(s["keys"]) < rows:
        s["keys"].append(next(extra))
        s["looks"].append(0.0)
        s["votes"].append(0)
        s["detail_votes"].append(0)
        s["regions"].append(0.0)
        s["crops"].append(0.0)
    order = sorted(range(rows), key=s["keys"].__getitem__)
    for field in ("keys", "looks", "votes", "detail_votes", "regions", "crops"):
        s[field] = [s[field][i] for i in order]


def test_a_shard_may_answer_a_full_shortlist(s3, catalog_photos, images, tmp_path):
    """As many rows as a cut can hold (each vote's best, none in common) is a good answer."""
    readers, _ = _sharded_bucket(s3, tmp_path, catalog_photos, 2)

    def tamper(function: str, asked: str, body: dict) -> None:
        if function == "Shard1" and asked == "shortlist":
            _pad_shortlist(body, shortlist_rows(5))

    feats = extract_features(images["chelsea__hflip.jpg"])
    _, _, status = ShardFanOut(InProcessLambda(readers, tamper), tuple(readers)).search(feats, SearchParams(k=5))
    assert "failed_shards" not in status and status["complete"] is True


def _set(field: str, value):
    def change(body: dict) -> None:
        *path, last = field.split(".")
        for part in path:
            body = body[part]
        body[last] = value(body[last]) if callable(value) else value

    return change


@pytest.mark.parametrize(
    "phase, change, says",
    [
        ("shortlist", _set("shortlist.looks", lambda v: [None] * len(v)), "finite numbers"),
        ("shortlist", _set("shortlist.votes", lambda v: [-1] * len(v)), "counts"),
        ("shortlist", _set("shortlist.detail_votes", lambda v: [0.5] * len(v)), "integers"),
        ("shortlist", _set("shortlist.regions", lambda v: [float("nan")] * len(v)), "finite numbers"),
        ("shortlist", _set("shortlist.keys", lambda v: [*v[:-1], SHARD0_KEY]), "another"),
        ("shortlist", _set("shortlist", lambda v: {**v, "more": []}), "exactly"),
        ("shortlist", lambda body: _pad_shortlist(body, shortlist_rows(5) + 1), "longer than asked for"),
        ("shortlist", _set("catalog_size", -3), "catalog_size"),
        ("shortlist", _set("index", {"complete": "yes", "missing": 0}), '"index"'),
        ("shortlist", lambda body: body.clear(), "bad answer"),
        ("verify", _set("verified.keys", lambda v: v[::-1] if len(v) > 1 else ["catalog/x.jpg"]), "keys asked for"),
        ("verify", _set("verified.sha256", lambda v: ["nope"] * len(v)), "SHA-256"),
        ("verify", _set("verified.urls", lambda v: [1] * len(v)), "URLs"),
        ("verify", _set("verified.ssim", lambda v: v[:1]), "2 items"),
        ("verify", _set("verified.inliers", lambda v: [v[0], [*v[1], 4.0]]), "items"),
        ("verify", _set("verified.colour", lambda v: ["red"] * len(v)), "finite numbers"),
        ("verify", _set("verified.region", lambda v: v[:1]), "2 items"),
        ("verify", _set("verified.region_colour", lambda v: [None] * len(v)), "finite numbers"),
        ("verify", lambda body: body.update(verified=[]), "exactly"),
        ("verify", lambda body: body.update(errorMessage="boom", verified=None) or body.pop("verified"), "boom"),
        ("search", _set("results", lambda v: [{**v[0], "score": "high"}]), "numbers"),
        ("search", _set("results", lambda v: [{**v[0], "extra": 1}]), "exactly"),
        ("search", _set("results", lambda v: v * 10), "at most"),
    ],
)
def test_a_shard_answering_nonsense_is_a_failed_shard(
    s3, catalog_photos, images, tmp_path, phase, change, says, caplog
):
    """The other shard's answer stands, flagged incomplete; the bad one is named in the log."""
    readers, _ = _sharded_bucket(s3, tmp_path, catalog_photos, 2)

    def tamper(function: str, asked: str, body: dict) -> None:
        if function == "Shard1" and asked == phase:
            change(body)

    feats = extract_features(images["chelsea__hflip.jpg"])
    params = SearchParams(k=5, scoring="seed" if phase == "search" else "default")
    results, size, status = ShardFanOut(InProcessLambda(readers, tamper), tuple(readers)).search(feats, params)
    assert status["failed_shards"] == [1] and status["complete"] is False
    assert results and all(shard_of(r.key, 2) == 0 for r in results)
    assert size == len(readers["Shard0"].index())
    logged = [r.getMessage() for r in caplog.records]
    assert any("shard 1" in m and says in m for m in logged), logged


def test_every_shard_failing_is_an_error(s3, catalog_photos, images, tmp_path):
    readers, _ = _sharded_bucket(s3, tmp_path, catalog_photos, 2)
    feats = extract_features(images["chelsea__hflip.jpg"])

    def break_verification(function: str, phase: str, body: dict) -> None:
        if phase == "verify":
            body["verified"]["keys"] = 1

    with pytest.raises(ShardFailedError, match="every shard failed"):
        ShardFanOut(InProcessLambda(readers, break_verification), tuple(readers)).search(feats, SearchParams())
