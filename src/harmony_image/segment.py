"""Segments: many catalog entries in one immutable file, both tiers in fixed-dtype arrays.

Compaction folds per-object records (:meth:`~harmony_image.features.ImageFeatures.to_bytes`)
into segments; a reader loads a segment's shortlist tier into memory and maps the rest
(:mod:`harmony_image.packed` describes the tiers), so a cold start is a few large reads. A
segment stored elsewhere can be opened by byte ranges (:meth:`Segment.open_ranged`, through a
:data:`RangeReader` the caller gives): one read of the header and shortlist tier, then the
verification rows of the images queries gather (:class:`RangedTier`).

Layout (little-endian)::

    0   magic  b"HIMGSEG\\0"
    8   uint32 SEGMENT_VERSION
    12  uint32 length of the JSON header that follows
    16  header: {"feature_version", "count", "shortlist_end", "shortlist_crc32",
                 "arrays": {name: {"dtype", "shape", "offset"}}}
    ... arrays, each at a multiple of ALIGN bytes: the shortlist tier's first, ending at
        ``shortlist_end`` (one ranged read holds the header and the shortlist tier), then the
        verification tier's.

Entries are sorted by key (unique). Reading checks the magic, both versions, that every array
is where the header says and inside the file, the shortlist tier's CRC-32, and every offset
array against the arrays it indexes; a failed check raises
:class:`~harmony_image.errors.IndexFormatError`. The verification tier's bytes are not read to
be checked — a mapped segment reads only the pages a query needs.
"""

from __future__ import annotations

import io
import itertools
import json
import mmap
import os
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .errors import IndexFormatError
from .features import FEATURE_VERSION, HUE_BINS, SEED_SIDE, THUMB_SIDE
from .kernels import DescriptorPack, to_bfloat16
from .packed import (
    DESCRIPTOR_BYTES,
    ArrayTier,
    Block,
    CatalogEntry,
    ShortlistTier,
    Strings,
    VerificationTier,
    build_block,
    concatenated,
)

MAGIC = b"HIMGSEG\0"
SEGMENT_VERSION = 2
"""The format written. Version 1 (thumbnails as float32 rather than bfloat16) is read too: its
thumbnails are rounded to bfloat16 as they load, the numbers a version 2 file of the same entries
holds."""
ALIGN = 64
"""Array alignment in the file, bytes: a cache line, and a multiple of every dtype's size."""
_PRELUDE = struct.Struct("<8sII")
ROW_CACHE_BYTES = 128 * 1024 * 1024
"""Verification rows read by byte ranges kept in memory (about 1,200 images' rows): the recent
candidates of a shard whose segments are not (yet) on local disk."""
COALESCE_GAP = 64 * 1024
"""Byte ranges closer than this are read as one: up to one grayscale's bytes more is cheaper than
another request (a GET's first byte takes tens of ms; S3 sends ~1 MB in ten)."""
FETCH_THREADS = 32
"""Segments whose rows are read at once (each read is one call of the segment's RangeReader,
which makes its ranged requests in parallel)."""

RangeReader = Callable[[Sequence[tuple[int, int]]], Sequence[bytes]]
"""Reads byte ranges ``[start, stop)`` of one stored segment file: each range's bytes, in order,
or raises. The adapters give one that makes ranged GETs of the object, in parallel."""

_fetches = ThreadPoolExecutor(max_workers=FETCH_THREADS, thread_name_prefix="harmony-ranges")

# name -> (dtype, shape with "n" for the entry count and None for a length checked elsewhere)
_SHORTLIST: dict[str, tuple[str, tuple[int | str | None, ...]]] = {
    "key_offsets": ("<i8", ("n+1",)),
    "keys": ("|u1", (None,)),
    "url_offsets": ("<i8", ("n+1",)),
    "urls": ("|u1", (None,)),
    "sha256": ("|u1", ("n", 32)),
    "sizes": ("<i8", ("n", 2)),
    "thumbs": ("<u2", ("n", THUMB_SIDE * THUMB_SIDE)),
    "colours": ("<f4", ("n", HUE_BINS + 1)),
    "vote_offsets": ("<i8", ("n+1",)),
    "vote_planes": ("<u8", (None,)),
    "descriptor_offsets": ("<i8", ("n+1",)),
    "detail_offsets": ("<i8", ("n+1",)),
}
_VERIFICATION: dict[str, tuple[str, tuple[int | str | None, ...]]] = {
    "grays": ("|u1", ("n", SEED_SIDE, SEED_SIDE)),
    "descriptor_planes": ("<u8", (None,)),
    "keypoints": ("<f4", (None, 2)),
    "detail_descriptors": ("|u1", (None, DESCRIPTOR_BYTES)),
    "detail_keypoints": ("<f4", (None, 2)),
}
_SPEC = {**_SHORTLIST, **_VERIFICATION}
_SPECS = {SEGMENT_VERSION: _SPEC, 1: {**_SPEC, "thumbs": ("<f4", _SPEC["thumbs"][1])}}
"""The arrays of each format version read."""


def _arrays_of(block: Block) -> dict[str, np.ndarray]:
    s, v = block.shortlist, block.verification
    keys = Strings.of(s.keys)
    keypoints, detail_descriptors, detail_keypoints = concatenated(block)
    return {
        "key_offsets": keys.offsets,
        "keys": keys.data,
        "url_offsets": s.urls.offsets,
        "urls": s.urls.data,
        "sha256": s.sha256,
        "sizes": s.sizes,
        "thumbs": s.thumbs,
        "colours": s.colours,
        "vote_offsets": s.votes.offsets,
        "vote_planes": s.votes.planes,
        "descriptor_offsets": s.descriptor_offsets,
        "detail_offsets": s.detail_offsets,
        "grays": v.grays,
        "descriptor_planes": v.descriptors.planes,
        "keypoints": keypoints,
        "detail_descriptors": detail_descriptors,
        "detail_keypoints": detail_keypoints,
    }


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def write_segment(out: BinaryIO, entries: Iterable[CatalogEntry]) -> int:
    """Write a segment of ``entries`` (any order; keys must be unique) to the binary file
    ``out``, array by array (no copy of the whole segment in memory); returns its size in bytes."""
    ordered = sorted(entries, key=lambda e: e.key)
    for a, b in itertools.pairwise(ordered):
        if a.key == b.key:
            raise ValueError(f"segment entries must have unique keys; {a.key!r} is repeated")
    block, _ = build_block(ordered)
    arrays = {name: np.ascontiguousarray(a, dtype=np.dtype(_SPEC[name][0])) for name, a in _arrays_of(block).items()}
    names = [*_SHORTLIST, *_VERIFICATION]
    shortlist_crc = 0
    for name in _SHORTLIST:  # the bytes between the shortlist arrays are zeros, as written below
        shortlist_crc = zlib.crc32(arrays[name].data, shortlist_crc)
        shortlist_crc = zlib.crc32(bytes(_aligned(arrays[name].nbytes) - arrays[name].nbytes), shortlist_crc)
    # Offsets depend on the header's length, which depends on the offsets: lay out with a
    # header size estimate, and grow it until the header fits.
    reserve = 4096
    while True:
        layout: dict[str, dict[str, Any]] = {}
        pos = _aligned(_PRELUDE.size + reserve)
        shortlist_end = end = pos
        for name in names:
            layout[name] = {"dtype": _SPEC[name][0], "shape": list(arrays[name].shape), "offset": pos}
            end = pos + arrays[name].nbytes
            pos = _aligned(end)
            if name == list(_SHORTLIST)[-1]:
                shortlist_end = pos
        header = {
            "feature_version": FEATURE_VERSION,
            "count": len(block),
            "shortlist_end": shortlist_end,
            "shortlist_crc32": shortlist_crc,
            "arrays": layout,
        }
        text = json.dumps(header, separators=(",", ":")).encode()
        if len(text) <= reserve:
            break
        reserve = _aligned(len(text))
    out.write(_PRELUDE.pack(MAGIC, SEGMENT_VERSION, len(text)) + text)
    written = _PRELUDE.size + len(text)
    for name in names:  # no padding after the last array: a cut file is always short
        offset = int(layout[name]["offset"])
        out.write(bytes(offset - written))
        out.write(arrays[name].data)
        written = offset + arrays[name].nbytes
    return end


def segment_bytes(entries: Iterable[CatalogEntry]) -> bytes:
    """A segment of ``entries`` (see :func:`write_segment`), as bytes to store."""
    buffer = io.BytesIO()
    write_segment(buffer, entries)
    return buffer.getvalue()


def save_segment(path: str | os.PathLike[str], entries: Iterable[CatalogEntry]) -> int:
    """Write a segment of ``entries`` to ``path`` (through a temporary file and a rename);
    returns its size in bytes."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as f:
        size = write_segment(f, entries)
    tmp.replace(target)
    return size


class Segment:
    """A read segment: its entries as one :class:`~harmony_image.packed.Block` whose shortlist
    tier is in memory and whose verification tier is memory-mapped (from a file) or views of
    the bytes given. Immutable; :meth:`SearchIndex.add_segment
    <harmony_image.index.SearchIndex.add_segment>` takes it."""

    def __init__(self, block: Block, *, source: str) -> None:
        self.block = block
        self.source = source
        self.header: dict[str, Any] = {}
        """The file's checked JSON header (array layout, counts, the shortlist tier's CRC-32)."""

    def __len__(self) -> int:
        return len(self.block)

    @property
    def keys(self) -> list[str]:
        """The entries' keys, sorted."""
        return self.block.shortlist.keys

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Segment:
        """Read the header and shortlist tier of the segment file ``path``; map the rest.

        Raises
        ------
        IndexFormatError
            Not a segment, another version, truncated, or inconsistent.
        """
        name = str(path)
        header, shortlist, mapped = _mapped(path, shortlist=True)
        segment = cls(
            _block(header, shortlist, name, lambda a: _array_tier(header, mapped, a, mapped=True)), source=name
        )
        segment.header = header
        return segment

    @classmethod
    def from_bytes(cls, data: bytes, *, name: str = "segment") -> Segment:
        """A segment from its bytes (the verification tier stays views of ``data``).

        Raises
        ------
        IndexFormatError
            As :meth:`open`.
        """
        buffer = np.frombuffer(data, dtype=np.uint8)
        if buffer.ctypes.data % 8:  # the kernels read 64-bit words: realign (a copy)
            buffer = buffer.copy()
        header = _read_header(buffer[: _PRELUDE.size].tobytes(), buffer, len(buffer), name)
        shortlist = buffer[: int(header["shortlist_end"])]
        segment = cls(
            _block(header, shortlist, name, lambda a: _array_tier(header, buffer, a, mapped=False)), source=name
        )
        segment.header = header
        return segment

    @classmethod
    def open_ranged(
        cls,
        read: RangeReader,
        *,
        size: int,
        name: str,
        head: bytes = b"",
        whole: Callable[[], str | os.PathLike[str]] | None = None,
        cache: RowCache | None = None,
    ) -> Segment:
        """A stored segment of ``size`` bytes read by byte ranges through ``read``: its header and
        shortlist tier now (``head``: the file's first bytes, as many as the caller has; the rest
        of them are read), each image's verification rows when a query first needs them
        (:class:`RangedTier`). ``whole()`` gives the path of a complete local copy of the file,
        for when every row is needed (``seed``; without it the whole file is read into memory);
        :meth:`attach` switches to such a copy as soon as there is one.

        Raises
        ------
        IndexFormatError
            As :meth:`open`, or a read that gave another number of bytes than asked for.
        """
        # The file's first bytes as read, in pieces: copied once, into the aligned array the
        # shortlist tier is kept in (one more copy of ~5.5 KB per image is memory freed but, from
        # many threads' arenas, seldom given back to the system).
        parts = [head] if head else []

        def upto(stop: int) -> None:
            have = sum(map(len, parts))
            if have < min(stop, size):
                parts.append(_checked_reads(read, [(have, min(stop, size))], name)[0])

        def first(n: int) -> bytes:
            upto(n)
            out = bytearray()
            for p in parts:
                out += p[: n - len(out)]
            return bytes(out)

        length = _PRELUDE.size + _PRELUDE.unpack_from(first(_PRELUDE.size))[2] if size >= _PRELUDE.size else 0
        start = first(length)
        header = _read_header(start[: _PRELUDE.size], np.frombuffer(start, dtype=np.uint8), size, name)
        end = int(header["shortlist_end"])
        upto(end)
        shortlist = np.empty(end, dtype=np.uint8)  # aligned for the kernels' 64-bit reads
        at = 0
        for p in parts:
            piece = np.frombuffer(p, dtype=np.uint8, count=min(len(p), end - at))
            shortlist[at : at + len(piece)] = piece
            at += len(piece)
        parts.clear()

        def tier(a: dict[str, np.ndarray]) -> RangedTier:
            return RangedTier(header, a, read, size=size, name=name, whole=whole, cache=cache)

        segment = cls(_block(header, shortlist, name, tier), source=name)
        segment.header = header
        return segment

    def attach(self, path: str | os.PathLike[str]) -> None:
        """Serve a ranged segment's verification tier from ``path``, a complete local copy of its
        file, from now on (a no-op for other segments). IndexFormatError when ``path`` is not
        this segment."""
        tier = self.block.verification
        if isinstance(tier, RangedTier):
            tier.attach(path)


def _mapped(path: str | os.PathLike[str], *, shortlist: bool) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """The checked header of the segment file ``path``, its bytes up to the end of the shortlist
    tier read into memory (with ``shortlist``; else none) and the whole file memory-mapped. The
    tier is read by a read call, not copied from the mapping, which would map its pages into the
    process besides (resident file pages counted twice)."""
    name = str(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        header = _read_header(f.read(_PRELUDE.size), f, size, name)
        first = np.empty(int(header["shortlist_end"]) if shortlist else 0, dtype=np.uint8)
        f.seek(0)
        if f.readinto(first.data) != len(first):
            raise IndexFormatError(f"segment {name} is truncated: it ends inside its shortlist tier")
        return header, first, np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), dtype=np.uint8)


def _read_header(prelude: bytes, rest: Any, size: int, name: str) -> dict[str, Any]:
    """The checked JSON header; ``rest`` is the open file after the prelude, or the whole buffer."""
    if len(prelude) < _PRELUDE.size:
        raise IndexFormatError(f"{name} is not a segment: {size} bytes is shorter than its prelude")
    magic, version, length = _PRELUDE.unpack(prelude)
    if magic != MAGIC:
        raise IndexFormatError(f"{name} is not a segment (magic {magic!r})")
    if version not in _SPECS:
        raise IndexFormatError(
            f"segment {name} has format version {version}, not one of {sorted(_SPECS)}; compact again"
        )
    if _PRELUDE.size + length > size:
        raise IndexFormatError(f"segment {name} is truncated: it ends inside its header")
    raw = rest.read(length) if hasattr(rest, "read") else rest[_PRELUDE.size : _PRELUDE.size + length].tobytes()
    try:
        header = json.loads(raw)
        feature_version = header["feature_version"]
        count, end = int(header["count"]), int(header["shortlist_end"])
        arrays = header["arrays"]
        int(header["shortlist_crc32"])
    except (ValueError, KeyError, TypeError) as exc:
        raise IndexFormatError(f"segment {name} has a damaged header ({exc})") from exc
    if feature_version != FEATURE_VERSION:
        raise IndexFormatError(
            f"segment {name} holds feature version {feature_version}, not {FEATURE_VERSION}; compact again"
        )
    if not isinstance(arrays, dict) or set(arrays) != set(_SPEC):
        raise IndexFormatError(f"segment {name} has a damaged header: its arrays are not the expected ones")
    if count < 0 or not 0 <= end <= size:
        raise IndexFormatError(f"segment {name} is truncated: its shortlist tier ends at {end}, the file at {size}")
    for array, (dtype, dims) in _SPECS[version].items():
        spec = arrays[array]
        shape = spec.get("shape") if isinstance(spec, dict) else None
        if (
            not isinstance(spec, dict)
            or spec.get("dtype") != dtype
            or not isinstance(shape, list)
            or len(shape) != len(dims)
            or not all(isinstance(d, int) and d >= 0 for d in shape)
            or not isinstance(spec.get("offset"), int)
        ):
            raise IndexFormatError(f"segment {name}: array {array} is not described as {dtype} of {len(dims)} axes")
        for got, want in zip(shape, dims, strict=True):
            expected = {"n": count, "n+1": count + 1}.get(want, want) if isinstance(want, str) else want
            if expected is not None and got != expected:
                raise IndexFormatError(
                    f"segment {name}: array {array} has shape {shape}, expected {dims} with n={count}"
                )
        offset = spec["offset"]
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        limit = end if array in _SHORTLIST else size
        if offset % ALIGN or offset < _PRELUDE.size + length or offset + nbytes > limit:
            raise IndexFormatError(
                f"segment {name} is truncated or damaged: array {array} ({nbytes} bytes at {offset}) "
                f"is not inside {'its shortlist tier' if array in _SHORTLIST else 'the file'} ({limit} bytes)"
            )
    return dict(header)


def _array(header: dict[str, Any], key: str, buffer: np.ndarray) -> np.ndarray:
    """Array ``key`` of a segment whose file's bytes (from its start) are ``buffer``: a read-only view."""
    spec = header["arrays"][key]
    dtype = np.dtype(spec["dtype"])
    count = int(np.prod(spec["shape"], dtype=np.int64))
    offset = int(spec["offset"])
    out: np.ndarray = buffer[offset : offset + count * dtype.itemsize].view(dtype).reshape(spec["shape"])
    out.flags.writeable = False
    return out


def _array_tier(header: dict[str, Any], whole: np.ndarray, a: dict[str, np.ndarray], *, mapped: bool) -> ArrayTier:
    """The verification tier as views of the whole file's bytes ``whole``; ``a``: the shortlist arrays."""
    v = {k: _array(header, k, whole) for k in _VERIFICATION}
    return ArrayTier(
        grays=v["grays"],
        descriptors=DescriptorPack.from_arrays(v["descriptor_planes"], a["descriptor_offsets"]),
        keypoints=v["keypoints"],
        detail_offsets=a["detail_offsets"],
        detail_descriptors=v["detail_descriptors"],
        detail_keypoints=v["detail_keypoints"],
        mapped=mapped,
    )


def _block(
    header: dict[str, Any],
    shortlist: np.ndarray,
    name: str,
    tier: Callable[[dict[str, np.ndarray]], VerificationTier],
) -> Block:
    """The block of a segment whose header and shortlist tier (the file's first bytes) are read;
    ``tier(shortlist arrays)`` gives its verification tier. Everything is checked but the
    verification tier's bytes (their arrays' places and lengths are)."""
    arrays = header["arrays"]
    first = min(int(arrays[k]["offset"]) for k in _SHORTLIST)
    if zlib.crc32(shortlist[first : int(header["shortlist_end"])].data) != int(header["shortlist_crc32"]):
        raise IndexFormatError(f"segment {name} is damaged: its shortlist tier fails its CRC-32")
    a = {k: _array(header, k, shortlist) for k in _SHORTLIST}
    v = {k: int(arrays[k]["shape"][0]) for k in _VERIFICATION}  # rows of each verification array

    def check_offsets(key: str, rows: int) -> None:
        o = a[key]
        if o[0] != 0 or o[-1] != rows or (len(o) > 1 and bool((np.diff(o) < 0).any())):
            raise IndexFormatError(f"segment {name} is damaged: {key} do not index its {rows} rows")

    check_offsets("key_offsets", len(a["keys"]))
    check_offsets("url_offsets", len(a["urls"]))
    check_offsets("vote_offsets", len(a["vote_planes"]) // 4)
    check_offsets("descriptor_offsets", v["descriptor_planes"] // 4)
    check_offsets("detail_offsets", v["detail_descriptors"])
    if len(a["vote_planes"]) % 4 or v["descriptor_planes"] % 4:
        raise IndexFormatError(f"segment {name} is damaged: descriptor planes are not whole descriptors")
    if v["keypoints"] * 4 != v["descriptor_planes"] or v["detail_keypoints"] != v["detail_descriptors"]:
        raise IndexFormatError(f"segment {name} is damaged: keypoints and descriptors differ in number")
    try:
        keys = Strings(a["keys"], a["key_offsets"]).to_list()
        Strings(a["urls"], a["url_offsets"]).to_list()
    except UnicodeDecodeError as exc:
        raise IndexFormatError(f"segment {name} is damaged: a key or URL is not UTF-8 ({exc})") from exc
    if any(x >= y for x, y in itertools.pairwise(keys)):
        raise IndexFormatError(f"segment {name} is damaged: its keys are not sorted and unique")
    shortlist_tier = ShortlistTier(
        keys=keys,
        urls=Strings(a["urls"], a["url_offsets"]),
        sha256=a["sha256"],
        thumbs=a["thumbs"] if a["thumbs"].dtype == np.uint16 else to_bfloat16(a["thumbs"]),  # version 1: float32
        colours=a["colours"],
        votes=DescriptorPack.from_arrays(a["vote_planes"], a["vote_offsets"]),
        descriptor_offsets=a["descriptor_offsets"],
        detail_offsets=a["detail_offsets"],
        sizes=a["sizes"],
    )
    return Block(shortlist_tier, tier(a))


def _checked_reads(read: RangeReader, ranges: Sequence[tuple[int, int]], name: str) -> Sequence[bytes]:
    """``read(ranges)``, each answer checked to be as long as its range."""
    got = read(ranges)
    if len(got) != len(ranges):
        raise IndexFormatError(f"segment {name}: {len(ranges)} byte ranges asked for, {len(got)} read")
    for (start, stop), data in zip(ranges, got, strict=True):
        if len(data) != stop - start:
            raise IndexFormatError(f"segment {name}: bytes {start}:{stop} read as {len(data)} bytes")
    return got


@dataclass(frozen=True)
class _Rows:
    """One image's verification rows, read by ranges (owned copies, aligned for the kernels)."""

    gray: np.ndarray
    planes: np.ndarray  # (4, n) uint64
    keypoints: np.ndarray
    detail_descriptors: np.ndarray
    detail_keypoints: np.ndarray

    @property
    def nbytes(self) -> int:
        arrays = (self.gray, self.planes, self.keypoints, self.detail_descriptors, self.detail_keypoints)
        return int(sum(a.nbytes for a in arrays))


class RowCache:
    """Verification rows read by byte ranges, shared by the segments of a reader: the least
    recently used are dropped past ``max_bytes``. Thread-safe."""

    def __init__(self, max_bytes: int = ROW_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._rows: OrderedDict[tuple[int, int], _Rows] = OrderedDict()
        self._owned: dict[int, int] = {}  # owner -> bytes it holds
        self._lock = threading.Lock()
        self._owners = itertools.count()

    def __len__(self) -> int:
        """Images whose rows are held."""
        with self._lock:
            return len(self._rows)

    def owner(self) -> int:
        """A new owner number (one per tier)."""
        return next(self._owners)

    def get(self, owner: int, i: int) -> _Rows | None:
        with self._lock:
            rows = self._rows.get((owner, i))
            if rows is not None:
                self._rows.move_to_end((owner, i))
            return rows

    def put(self, owner: int, i: int, rows: _Rows) -> None:
        with self._lock:
            if (owner, i) in self._rows:
                return
            self._rows[(owner, i)] = rows
            self._owned[owner] = self._owned.get(owner, 0) + rows.nbytes
            while sum(self._owned.values()) > self.max_bytes and len(self._rows) > 1:
                (o, _), old = self._rows.popitem(last=False)
                self._owned[o] -= old.nbytes

    def drop(self, owner: int) -> None:
        """Let go of ``owner``'s rows (its segment is served from elsewhere now)."""
        with self._lock:
            for key in [k for k in self._rows if k[0] == owner]:
                del self._rows[key]
            self._owned.pop(owner, None)

    def nbytes_of(self, owner: int) -> int:
        with self._lock:
            return self._owned.get(owner, 0)


class RangedTier(VerificationTier):
    """A stored segment's verification tier read by byte ranges of its file (see
    :meth:`Segment.open_ranged`): the rows of the images a query gathers are read at once (one
    call of the :data:`RangeReader` per segment, the ranges of neighbouring rows coalesced) and
    kept in a :class:`RowCache`. Whatever needs every row (``seed``) waits for a complete local
    copy of the file; once one is attached (:meth:`attach`), every read is from its mapping.

    A read that fails raises to the query that needed it (and is tried again by the next);
    bytes read are checked to be as many as asked for; the reader is trusted to read only the
    version of the file this tier's header came from (the adapters' ranged GETs are If-Match).
    """

    def __init__(
        self,
        header: dict[str, Any],
        shortlist: dict[str, np.ndarray],
        read: RangeReader,
        *,
        size: int,
        name: str,
        whole: Callable[[], str | os.PathLike[str]] | None = None,
        cache: RowCache | None = None,
    ) -> None:
        self.header, self.size, self.name = header, size, name
        self._read, self._whole_path = read, whole
        self._cache = cache if cache is not None else RowCache()
        self._owner = self._cache.owner()
        self._descriptor_offsets = shortlist["descriptor_offsets"]
        self._detail_offsets = shortlist["detail_offsets"]
        self._offset = {k: int(header["arrays"][k]["offset"]) for k in _VERIFICATION}
        self._pending: dict[int, Future[dict[int, _Rows]]] = {}
        self._lock = threading.Lock()
        self._whole_lock = threading.Lock()
        self._local: ArrayTier | None = None
        self.mapped = False
        self.ranges_read = 0
        """Byte ranges read so far (after coalescing), and their bytes:"""
        self.bytes_read = 0

    # ------------------------------------------------------------------ the whole file
    def attach(self, path: str | os.PathLike[str]) -> None:
        """Serve every row from ``path``, a complete local copy of this segment's file, from now
        on: its verification tier mapped, at the offsets of the shortlist tier already in memory
        (not read again: a second copy of ~5.5 KB per image). IndexFormatError when it is another
        segment (its header differs)."""
        header, _, mapped = _mapped(path, shortlist=False)
        if header != self.header:
            raise IndexFormatError(f"{path} is not a copy of segment {self.name}: their headers differ")
        offsets = {"descriptor_offsets": self._descriptor_offsets, "detail_offsets": self._detail_offsets}
        self._local = _array_tier(header, mapped, offsets, mapped=True)
        self.mapped = True
        self._cache.drop(self._owner)

    def _whole(self) -> ArrayTier:
        local = self._local
        if local is not None:
            return local
        with self._whole_lock:
            if self._local is None:
                if self._whole_path is not None:
                    self.attach(self._whole_path())
                else:
                    data = _checked_reads(self._read, [(0, self.size)], self.name)[0]
                    copy = Segment.from_bytes(data, name=self.name)
                    if copy.header != self.header:
                        raise IndexFormatError(f"segment {self.name} changed while in use: its header differs")
                    assert isinstance(copy.block.verification, ArrayTier)  # what from_bytes builds
                    self._local = copy.block.verification
            assert self._local is not None
            return self._local

    @property
    def grays(self) -> np.ndarray:  # type: ignore[override]  # the others' attribute, computed here
        """Every image's grayscale: waits for the whole file (see the class doc)."""
        return self._whole().grays

    @property
    def descriptors(self) -> DescriptorPack:  # type: ignore[override]
        """Every image's ORB descriptors: waits for the whole file (see the class doc)."""
        return self._whole().descriptors

    # ------------------------------------------------------------------ rows
    def _spans(self, i: int) -> list[tuple[int, int]]:
        """Image i's byte ranges in the file: grayscale, descriptor planes, keypoints, detail
        descriptors, detail keypoints."""
        side = SEED_SIDE * SEED_SIDE
        lo, hi = int(self._descriptor_offsets[i]), int(self._descriptor_offsets[i + 1])
        dlo, dhi = int(self._detail_offsets[i]), int(self._detail_offsets[i + 1])
        o = self._offset
        return [
            (o["grays"] + side * i, o["grays"] + side * (i + 1)),
            (o["descriptor_planes"] + 32 * lo, o["descriptor_planes"] + 32 * hi),
            (o["keypoints"] + 8 * lo, o["keypoints"] + 8 * hi),
            (o["detail_descriptors"] + DESCRIPTOR_BYTES * dlo, o["detail_descriptors"] + DESCRIPTOR_BYTES * dhi),
            (o["detail_keypoints"] + 8 * dlo, o["detail_keypoints"] + 8 * dhi),
        ]

    def _fetch(self, rows: list[int]) -> dict[int, _Rows]:
        spans = {i: self._spans(i) for i in rows}
        merged: list[list[int]] = []
        for start, stop in sorted(sp for per in spans.values() for sp in per if sp[1] > sp[0]):
            if merged and start <= merged[-1][1] + COALESCE_GAP:
                merged[-1][1] = max(merged[-1][1], stop)
            else:
                merged.append([start, stop])
        ranges = [(a, b) for a, b in merged]
        data = _checked_reads(self._read, ranges, self.name) if ranges else []
        with self._lock:
            self.ranges_read += len(ranges)
            self.bytes_read += sum(b - a for a, b in ranges)
        starts = [a for a, _ in ranges]

        def take(span: tuple[int, int], dtype: type, shape: tuple[int, ...]) -> np.ndarray:
            start, stop = span
            if stop == start:
                return np.empty(shape, dtype=dtype)
            k = int(np.searchsorted(starts, start, side="right")) - 1
            a = starts[k]
            array: np.ndarray = np.frombuffer(data[k][start - a : stop - a], dtype=dtype).reshape(shape).copy()
            array.flags.writeable = False
            return array

        out: dict[int, _Rows] = {}
        for i, (gray, planes, keypoints, detail, detail_kp) in spans.items():
            n = (planes[1] - planes[0]) // 32
            m = (detail[1] - detail[0]) // DESCRIPTOR_BYTES
            out[i] = _Rows(
                gray=take(gray, np.uint8, (SEED_SIDE, SEED_SIDE)),
                planes=take(planes, np.uint64, (4, n)),
                keypoints=take(keypoints, np.float32, (n, 2)),
                detail_descriptors=take(detail, np.uint8, (m, DESCRIPTOR_BYTES)),
                detail_keypoints=take(detail_kp, np.float32, (m, 2)),
            )
        return out

    def prefetch(self, rows: list[int]) -> Future[dict[int, _Rows]] | None:
        if self._local is not None:
            return None
        with self._lock:
            todo = sorted({i for i in rows if i not in self._pending and self._cache.get(self._owner, i) is None})
            if not todo:
                return None
            future = _fetches.submit(self._fetch, todo)
            for i in todo:
                self._pending[i] = future
        future.add_done_callback(lambda f: self._settle(todo, f))
        return future

    def _settle(self, rows: list[int], future: Future[dict[int, _Rows]]) -> None:
        with self._lock:
            if future.exception() is None:
                for i, got in future.result().items():
                    self._cache.put(self._owner, i, got)
            for i in rows:
                if self._pending.get(i) is future:
                    del self._pending[i]

    def _rows(self, i: int) -> _Rows:
        for _ in range(3):  # a row dropped from the cache between its read and here is read again
            cached = self._cache.get(self._owner, i)
            if cached is not None:
                return cached
            with self._lock:
                future = self._pending.get(i)
            if future is None:
                self.prefetch([i])
                with self._lock:
                    future = self._pending.get(i)
            if future is not None:
                got = future.result().get(i)  # a failed read raises here, to this query
                if got is not None:
                    return got
        raise IndexFormatError(f"segment {self.name}: image {i}'s verification rows could not be kept")

    def gray_of(self, i: int) -> np.ndarray:
        local = self._local
        return local.gray_of(i) if local is not None else self._rows(i).gray

    def planes_of(self, i: int) -> np.ndarray:
        local = self._local
        return local.planes_of(i) if local is not None else self._rows(i).planes

    def keypoints_of(self, i: int) -> np.ndarray:
        local = self._local
        return local.keypoints_of(i) if local is not None else self._rows(i).keypoints

    def detail_of(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        local = self._local
        if local is not None:
            return local.detail_of(i)
        rows = self._rows(i)
        return rows.detail_keypoints, rows.detail_descriptors

    @property
    def nbytes(self) -> int:
        """Bytes of rows held in memory (the attached file's are the kernel's page cache)."""
        local = self._local
        return local.nbytes if local is not None else self._cache.nbytes_of(self._owner)
