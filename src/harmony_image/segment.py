"""Segments: many catalog entries in one immutable file, both tiers in fixed-dtype arrays.

Compaction folds per-object records (:meth:`~harmony_image.features.ImageFeatures.to_bytes`)
into segments; a reader loads a segment's shortlist tier into memory and maps the rest
(:mod:`harmony_image.packed` describes the tiers), so a cold start is a few large reads.

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
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .errors import IndexFormatError
from .features import FEATURE_VERSION, HUE_BINS, SEED_SIDE, THUMB_SIDE
from .kernels import DescriptorPack
from .packed import DESCRIPTOR_BYTES, ArrayTier, Block, CatalogEntry, ShortlistTier, Strings, build_block, concatenated

MAGIC = b"HIMGSEG\0"
SEGMENT_VERSION = 1
ALIGN = 64
"""Array alignment in the file, bytes: a cache line, and a multiple of every dtype's size."""
_PRELUDE = struct.Struct("<8sII")

# name -> (dtype, shape with "n" for the entry count and None for a length checked elsewhere)
_SHORTLIST: dict[str, tuple[str, tuple[int | str | None, ...]]] = {
    "key_offsets": ("<i8", ("n+1",)),
    "keys": ("|u1", (None,)),
    "url_offsets": ("<i8", ("n+1",)),
    "urls": ("|u1", (None,)),
    "sha256": ("|u1", ("n", 32)),
    "sizes": ("<i8", ("n", 2)),
    "thumbs": ("<f4", ("n", THUMB_SIDE * THUMB_SIDE)),
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
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header = _read_header(f.read(_PRELUDE.size), f, size, name)
            end = int(header["shortlist_end"])
            f.seek(0)
            shortlist = np.empty(end, dtype=np.uint8)
            if f.readinto(shortlist.data) != end:
                raise IndexFormatError(f"segment {name} is truncated: it ends inside its shortlist tier")
            mapped = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), dtype=np.uint8)
        return cls(_block(header, shortlist, mapped, name, mapped=True), source=name)

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
        return cls(_block(header, buffer[: int(header["shortlist_end"])], buffer, name, mapped=False), source=name)


def _read_header(prelude: bytes, rest: Any, size: int, name: str) -> dict[str, Any]:
    """The checked JSON header; ``rest`` is the open file after the prelude, or the whole buffer."""
    if len(prelude) < _PRELUDE.size:
        raise IndexFormatError(f"{name} is not a segment: {size} bytes is shorter than its prelude")
    magic, version, length = _PRELUDE.unpack(prelude)
    if magic != MAGIC:
        raise IndexFormatError(f"{name} is not a segment (magic {magic!r})")
    if version != SEGMENT_VERSION:
        raise IndexFormatError(f"segment {name} has format version {version}, not {SEGMENT_VERSION}; compact again")
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
    for array, (dtype, dims) in _SPEC.items():
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


def _block(header: dict[str, Any], shortlist: np.ndarray, whole: np.ndarray, name: str, *, mapped: bool) -> Block:
    def array(key: str, buffer: np.ndarray) -> np.ndarray:
        spec = header["arrays"][key]
        dtype = np.dtype(spec["dtype"])
        count = int(np.prod(spec["shape"], dtype=np.int64))
        offset = int(spec["offset"])
        out: np.ndarray = buffer[offset : offset + count * dtype.itemsize].view(dtype).reshape(spec["shape"])
        out.flags.writeable = False
        return out

    arrays = header["arrays"]
    first = min(int(arrays[k]["offset"]) for k in _SHORTLIST)
    if zlib.crc32(shortlist[first : int(header["shortlist_end"])].data) != int(header["shortlist_crc32"]):
        raise IndexFormatError(f"segment {name} is damaged: its shortlist tier fails its CRC-32")
    a = {k: array(k, shortlist) for k in _SHORTLIST}
    v = {k: array(k, whole) for k in _VERIFICATION}

    def check_offsets(key: str, rows: int) -> None:
        o = a[key]
        if o[0] != 0 or o[-1] != rows or (len(o) > 1 and bool((np.diff(o) < 0).any())):
            raise IndexFormatError(f"segment {name} is damaged: {key} do not index its {rows} rows")

    check_offsets("key_offsets", len(a["keys"]))
    check_offsets("url_offsets", len(a["urls"]))
    check_offsets("vote_offsets", len(a["vote_planes"]) // 4)
    check_offsets("descriptor_offsets", len(v["descriptor_planes"]) // 4)
    check_offsets("detail_offsets", len(v["detail_descriptors"]))
    if len(a["vote_planes"]) % 4 or len(v["descriptor_planes"]) % 4:
        raise IndexFormatError(f"segment {name} is damaged: descriptor planes are not whole descriptors")
    if len(v["keypoints"]) * 4 != len(v["descriptor_planes"]) or len(v["detail_keypoints"]) != len(
        v["detail_descriptors"]
    ):
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
        thumbs=a["thumbs"],
        colours=a["colours"],
        votes=DescriptorPack.from_arrays(a["vote_planes"], a["vote_offsets"]),
        descriptor_offsets=a["descriptor_offsets"],
        detail_offsets=a["detail_offsets"],
        sizes=a["sizes"],
    )
    verification = ArrayTier(
        grays=v["grays"],
        descriptors=DescriptorPack.from_arrays(v["descriptor_planes"], a["descriptor_offsets"]),
        keypoints=v["keypoints"],
        detail_offsets=a["detail_offsets"],
        detail_descriptors=v["detail_descriptors"],
        detail_keypoints=v["detail_keypoints"],
        mapped=mapped,
    )
    return Block(shortlist_tier, verification)
