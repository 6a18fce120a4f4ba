"""The catalog packed for batch scoring, in two tiers.

* The **shortlist tier** — what the first pass of ``default`` scoring reads for every image —
  stays in memory: the 32x32 thumbnail (and the 16x16 int8 region thumbnail derived from it at
  the first query), :data:`VOTE_DESCRIPTORS` subsampled ORB descriptors (and their hash keys,
  also derived at the first query), the colour signature, sha256, key and URL (~7.6 KB per
  image, :attr:`ShortlistTier.nbytes`).
* The **verification tier** — the 256x256 grayscale, all ORB descriptors and keypoints, the
  detail features (~110 KB per image) — is read only for the rows a query keeps (all rows for
  ``seed``). It is in memory for entries added one by one, and memory-mapped from a stored
  segment (:mod:`harmony_image.segment`) for compacted ones — or read by byte ranges of a
  segment not on local disk, the rows a query gathers at once (:meth:`VerificationTier.prefetch`).

Entries come in :class:`Block` s (a batch with both tiers); :class:`PackedCatalog` orders the
live entries of all blocks by key — the catalog order ties are broken by — and runs the batch
kernels block by block. Every kernel scores each image on its own, so the numbers are the same
whichever block an image is in. :class:`~harmony_image.index.SearchIndex` builds one lazily
after changes; the scoring functions read only this.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np

from .features import HUE_BINS, SEED_SIDE, THUMB_SIDE, ImageFeatures
from .kernels import (
    DescriptorPack,
    cross_check_counts,
    dot_max,
    from_bfloat16,
    hashed_close,
    pack_keys,
    ssim_scores,
    to_bfloat16,
    vote_keys,
)
from .regions import (
    REGION_SIDE,
    CoarseThumbs,
    QueryRegions,
    RegionThumbs,
    best_crops,
    best_looks,
    best_windows,
    coarse_thumbs,
    region_bounds,
    region_thumbs,
)

VOTE_DESCRIPTORS = 96
"""Catalog descriptors per image that take part in the shortlist's keypoint vote."""
VOTE_KEY_BITS = np.array(
    [
        [8, 35, 62, 69, 78, 107, 114, 124, 185, 204, 211, 219, 233, 237],
        [5, 30, 33, 51, 66, 74, 95, 101, 112, 127, 191, 227, 242, 245],
        [29, 39, 67, 73, 79, 104, 107, 116, 129, 158, 177, 198, 224, 240],
        [52, 64, 86, 128, 130, 146, 155, 171, 187, 199, 208, 210, 251, 255],
    ],
    dtype=np.int32,
)
"""The keypoint vote's hash tables (:func:`~harmony_image.kernels.hashed_close`): 4 keys of 14
bits sampled from the 256 (drawn once at random, seed 1, and fixed here: a vote must be the same
in every process and shard). A query descriptor meets only the catalog descriptors that share a
key with it: pairs 20 bits apart share one with probability 0.79, 50 bits apart 0.18, unrelated
ones (~100) 0.004. Measured against the exhaustive vote (every pair within the
threshold) on the benchmark's catalogs of 1,000 and 10,000: the same recall@1 within one query
of 396, the first pass 3-7x cheaper (docs/SCORING.md)."""
DESCRIPTOR_BYTES = 32
"""An ORB descriptor: 256 bits."""


@dataclass(frozen=True)
class CatalogEntry:
    key: str
    url: str
    features: ImageFeatures


def subsample(descriptors: np.ndarray, count: int) -> np.ndarray:
    """At most ``count`` rows, evenly spread over the (scale-ordered) ORB descriptors."""
    if len(descriptors) <= count:
        return descriptors
    rows: np.ndarray = descriptors[np.linspace(0, len(descriptors) - 1, count).astype(int)]
    return rows


def offsets_of(counts: list[int]) -> np.ndarray:
    """(n + 1,) int64 start offsets of n consecutive runs of ``counts`` rows."""
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(np.asarray(counts, dtype=np.int64), out=offsets[1:])
    return offsets


def join_packs(chunks: list[np.ndarray], counts: list[int]) -> DescriptorPack:
    """A pack of images given by their plane chunks (each 1-D, 4n words) — the same planes, so the
    same scores."""
    planes = np.concatenate(chunks) if chunks else np.empty(0, dtype=np.uint64)
    return DescriptorPack.from_arrays(np.ascontiguousarray(planes, dtype=np.uint64), offsets_of(counts))


class Strings:
    """Many strings as one UTF-8 byte array and (n + 1,) offsets: no Python object per string."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray) -> None:
        self.data, self.offsets = data, offsets

    @classmethod
    def of(cls, values: list[str]) -> Strings:
        encoded = [v.encode() for v in values]
        data = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
        return cls(data, offsets_of([len(e) for e in encoded]))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.data[int(self.offsets[i]) : int(self.offsets[i + 1])].tobytes().decode()

    def to_list(self) -> list[str]:
        raw = self.data.tobytes()
        bounds = self.offsets.tolist()
        return [raw[a:b].decode() for a, b in itertools.pairwise(bounds)]

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + self.offsets.nbytes)


@dataclass(frozen=True)
class ShortlistTier:
    """What default scoring's first pass reads for every image of a block, held in memory."""

    keys: list[str]
    urls: Strings
    """Each entry's result URL; empty when it is the key."""
    sha256: np.ndarray
    """(n, 32) uint8: sha256 digests of the original bytes."""
    thumbs: np.ndarray
    """(n, THUMB_SIDE**2) thumbnails (:func:`~harmony_image.features.thumbnail`) as bfloat16
    (uint16 bits, :func:`~harmony_image.kernels.to_bfloat16`): half a float32's bytes."""
    colours: np.ndarray
    """(n, HUE_BINS + 1) float32 colour signatures."""
    votes: DescriptorPack
    """At most :data:`VOTE_DESCRIPTORS` descriptors per image (:func:`subsample`)."""
    descriptor_offsets: np.ndarray
    """(n + 1,) int64 offsets of each image's ORB descriptors and keypoints in the verification tier."""
    detail_offsets: np.ndarray
    """(n + 1,) int64 offsets of each image's detail descriptors and keypoints."""
    sizes: np.ndarray
    """(n, 2) int64 width and height of the original image, in pixels."""

    @cached_property
    def regions(self) -> RegionThumbs:
        """Region thumbnails (:mod:`~harmony_image.regions`), derived from ``thumbs`` when first
        read (a query's first pass): opening a segment allocates nothing more."""
        return region_thumbs(self.thumbs)

    @cached_property
    def coarse(self) -> CoarseThumbs:
        """The region thumbnails' coarse copies, which bound the region looks, derived when first
        read, as :attr:`regions` are."""
        return coarse_thumbs(self.regions)

    @cached_property
    def vote_keys(self) -> np.ndarray:
        """The vote descriptors' hash keys (:data:`VOTE_KEY_BITS`), derived when first read, as
        :attr:`regions` are."""
        return pack_keys(self.votes, VOTE_KEY_BITS)

    def __len__(self) -> int:
        return len(self.keys)

    def url(self, i: int) -> str:
        return self.urls[i] or self.keys[i]

    def sha256_hex(self, i: int) -> str:
        return bytes(self.sha256[i]).hex()

    @property
    def nbytes(self) -> int:
        """Bytes of this tier's arrays (the key strings are counted by their UTF-8 length)."""
        arrays: tuple[np.ndarray, ...] = (self.sha256, self.thumbs, self.colours, self.votes.planes, self.votes.offsets)
        arrays += (self.descriptor_offsets, self.detail_offsets, self.sizes)
        keys = sum(len(k.encode()) for k in self.keys)
        derived = sum(
            self.__dict__[name].nbytes for name in ("regions", "coarse", "vote_keys") if name in self.__dict__
        )
        return int(sum(a.nbytes for a in arrays) + derived + self.urls.nbytes + keys)


class VerificationTier(ABC):
    """The arrays only candidates are verified with (all rows for ``seed``), for a block's images."""

    grays: np.ndarray
    """(n, 256, 256) uint8: the seed's grayscales."""
    descriptors: DescriptorPack
    """Every image's ORB descriptors, as the seed kernels read them."""
    mapped: bool
    """Whether the arrays are memory-mapped (then not process memory: the kernel's page cache)."""

    def prefetch(self, rows: list[int]) -> Future[Any] | None:
        """Start reading images ``rows``' arrays, which are about to be read (a tier read by
        byte ranges fetches them all at once): the read it started, whose failure is the caller's
        (None: nothing to read; tiers in memory or mapped have nothing to do)."""
        return None

    def gray_of(self, i: int) -> np.ndarray:
        """Image i's (256, 256) uint8 grayscale."""
        gray: np.ndarray = self.grays[i]
        return gray

    def planes_of(self, i: int) -> np.ndarray:
        """Image i's ORB descriptors as (4, n) uint64 planes (:meth:`DescriptorPack.words`)."""
        return self.descriptors.words(i)

    @abstractmethod
    def keypoints_of(self, i: int) -> np.ndarray:
        """Image i's (n, 2) float32 ORB keypoint coordinates, rows as its descriptors."""

    @abstractmethod
    def detail_of(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Image i's detail keypoints (n, 2) float32 and descriptors (n, 32) uint8."""

    @property
    @abstractmethod
    def nbytes(self) -> int: ...


class ArrayTier(VerificationTier):
    """The tier as a segment stores it: each kind of array concatenated over the images, at the
    shortlist tier's offsets. Views of a memory-mapped file read only the pages a query needs."""

    def __init__(
        self,
        *,
        grays: np.ndarray,
        descriptors: DescriptorPack,
        keypoints: np.ndarray,
        detail_offsets: np.ndarray,
        detail_descriptors: np.ndarray,
        detail_keypoints: np.ndarray,
        mapped: bool,
    ) -> None:
        self.grays, self.descriptors, self.mapped = grays, descriptors, mapped
        self.keypoints = keypoints
        self.detail_offsets = detail_offsets
        self.detail_descriptors = detail_descriptors
        self.detail_keypoints = detail_keypoints

    def keypoints_of(self, i: int) -> np.ndarray:
        rows: np.ndarray = self.keypoints[self.descriptors.offsets[i] : self.descriptors.offsets[i + 1]]
        return rows

    def detail_of(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.detail_offsets[i], self.detail_offsets[i + 1]
        return self.detail_keypoints[lo:hi], self.detail_descriptors[lo:hi]

    @property
    def nbytes(self) -> int:
        arrays = (self.grays, self.descriptors.planes, self.keypoints, self.detail_descriptors, self.detail_keypoints)
        return int(sum(a.nbytes for a in arrays))


class EntriesTier(VerificationTier):
    """The tier of entries added one by one: grayscales and seed descriptors packed (the batch
    kernels read them), keypoints and detail features left in each entry's features."""

    def __init__(self, grays: np.ndarray, descriptors: DescriptorPack, features: list[ImageFeatures]) -> None:
        self.grays, self.descriptors, self.mapped = grays, descriptors, False
        self.features = features

    def keypoints_of(self, i: int) -> np.ndarray:
        return self.features[i].keypoints

    def detail_of(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.features[i].detail_keypoints, self.features[i].detail_descriptors

    @property
    def nbytes(self) -> int:
        per_entry = sum(
            f.keypoints.nbytes + f.detail_keypoints.nbytes + f.detail_descriptors.nbytes for f in self.features
        )
        return int(self.grays.nbytes + self.descriptors.planes.nbytes + self.descriptors.offsets.nbytes + per_entry)


@dataclass(frozen=True)
class Block:
    """A batch of catalog entries with both tiers, in the block's own order."""

    shortlist: ShortlistTier
    verification: VerificationTier

    def __len__(self) -> int:
        return len(self.shortlist)

    def descriptors_of(self, i: int) -> np.ndarray:
        """Image i's (n, 32) uint8 ORB descriptors, from their planes."""
        words = self.verification.planes_of(i)
        rows: np.ndarray = np.ascontiguousarray(words.T).view(np.uint8).reshape(-1, DESCRIPTOR_BYTES)
        return rows

    def features(self, i: int) -> ImageFeatures:
        """Image i's features: views of the tiers' arrays (a mapped segment's pages are read
        when used), but for the descriptors, rebuilt from their planes (16 KB at most)."""
        short, verification = self.shortlist, self.verification
        detail_keypoints, detail_descriptors = verification.detail_of(i)
        return ImageFeatures(
            sha256=short.sha256_hex(i),
            width=int(short.sizes[i, 0]),
            height=int(short.sizes[i, 1]),
            gray=verification.gray_of(i),
            keypoints=verification.keypoints_of(i),
            descriptors=self.descriptors_of(i),
            thumb=from_bfloat16(short.thumbs[i]),
            detail_keypoints=detail_keypoints,
            detail_descriptors=detail_descriptors,
            colours=short.colours[i],
        )


def build_block(entries: list[CatalogEntry]) -> tuple[Block, list[CatalogEntry]]:
    """Both tiers of ``entries`` (in their order), and the entries with their grayscales
    replaced by views into the verification tier's array, so each is held once."""
    n = len(entries)
    features = [e.features for e in entries]
    grays = np.empty((n, SEED_SIDE, SEED_SIDE), dtype=np.uint8)
    thumbs = np.empty((n, THUMB_SIDE * THUMB_SIDE), dtype=np.uint16)
    colours = np.zeros((n, HUE_BINS + 1), dtype=np.float32)
    sha256 = np.zeros((n, 32), dtype=np.uint8)
    sizes = np.zeros((n, 2), dtype=np.int64)
    for i, f in enumerate(features):
        grays[i] = f.gray
        thumbs[i] = to_bfloat16(f.thumb)
        colours[i] = f.colours
        sha256[i] = np.frombuffer(bytes.fromhex(f.sha256), dtype=np.uint8)
        sizes[i] = (f.width, f.height)
    viewed = [replace(e, features=replace(e.features, gray=grays[i])) for i, e in enumerate(entries)]
    descriptors = DescriptorPack([f.descriptors for f in features])
    shortlist = ShortlistTier(
        keys=[e.key for e in entries],
        urls=Strings.of(["" if e.url == e.key else e.url for e in entries]),
        sha256=sha256,
        thumbs=thumbs,
        colours=colours,
        votes=DescriptorPack([subsample(f.descriptors, VOTE_DESCRIPTORS) for f in features]),
        descriptor_offsets=descriptors.offsets,
        detail_offsets=offsets_of([len(f.detail_descriptors) for f in features]),
        sizes=sizes,
    )
    return Block(shortlist, EntriesTier(grays, descriptors, [e.features for e in viewed])), viewed


def concatenated(block: Block) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A block's keypoints (m, 2), detail descriptors (md, 32) and detail keypoints (md, 2), each
    concatenated over its images (as a segment stores them)."""
    v, n = block.verification, len(block)

    def concat(arrays: list[np.ndarray], width: int, dtype: type) -> np.ndarray:
        parts: list[np.ndarray] = [np.asarray(a, dtype=dtype).reshape(-1, width) for a in arrays]
        return np.concatenate(parts) if parts else np.empty((0, width), dtype=dtype)

    details = [v.detail_of(i) for i in range(n)]
    return (
        concat([v.keypoints_of(i) for i in range(n)], 2, np.float32),
        concat([d for _, d in details], DESCRIPTOR_BYTES, np.uint8),
        concat([k for k, _ in details], 2, np.float32),
    )


_NONE = np.zeros(0, dtype=np.int64)


class PackedCatalog:
    """The live entries of some blocks, ordered by key, as the scoring functions read them.

    A row is an entry's place in that order. ``alive[b]`` (None: all) marks which entries of
    block b take part: a removed or replaced entry stays in its immutable segment.
    """

    def __init__(self, blocks: list[Block], alive: list[np.ndarray | None] | None = None) -> None:
        alive = alive if alive is not None else [None] * len(blocks)
        self.blocks = blocks
        live = [np.arange(len(b)) if a is None else np.flatnonzero(a) for b, a in zip(blocks, alive, strict=True)]
        keys = [k for b, idx in zip(blocks, live, strict=True) for k in map(b.shortlist.keys.__getitem__, idx.tolist())]
        order = sorted(range(len(keys)), key=keys.__getitem__)  # timsort merges the blocks' sorted runs
        self.keys: list[str] = [keys[i] for i in order]
        """Each row's key."""
        block_of = np.concatenate([np.full(len(idx), b, dtype=np.int64) for b, idx in enumerate(live)] or [_NONE])
        local_of = np.concatenate([idx.astype(np.int64) for idx in live] or [_NONE])
        self.block_of = block_of[order].astype(np.int32)
        self.local_of = local_of[order].astype(np.int64)
        # block b's entry i is row rows_of[b][i], or -1 when it does not take part
        self.rows_of = [np.full(len(b), -1, dtype=np.int64) for b in blocks]
        for b, rows in enumerate(self.rows_of):
            in_block = np.flatnonzero(self.block_of == b)
            rows[self.local_of[in_block]] = in_block

    def __len__(self) -> int:
        return len(self.keys)

    def _locate(self, row: int) -> tuple[Block, int]:
        return self.blocks[int(self.block_of[row])], int(self.local_of[row])

    def url(self, row: int) -> str:
        block, i = self._locate(row)
        return block.shortlist.url(i)

    def sha256(self, row: int) -> str:
        block, i = self._locate(row)
        return block.shortlist.sha256_hex(i)

    def size_of(self, row: int) -> tuple[int, int]:
        """The row's image (width, height), pixels."""
        block, i = self._locate(row)
        width, height = block.shortlist.sizes[i].tolist()
        return int(width), int(height)

    def entry(self, row: int) -> CatalogEntry:
        block, i = self._locate(row)
        return CatalogEntry(key=self.keys[row], url=block.shortlist.url(i), features=block.features(i))

    def _scatter(
        self,
        per_block: list[np.ndarray],
        dtype: type,
        columns: tuple[int, ...] = (),
        *,
        rows_of: list[np.ndarray] | None = None,
    ) -> np.ndarray:
        """Per-block results (one per block entry, each of shape ``columns``) placed at the rows of
        the live entries (``rows_of``: each part's rows, for parts other than the blocks)."""
        out: np.ndarray = np.empty((len(self), *columns), dtype=dtype)
        for rows, values in zip(self.rows_of if rows_of is None else rows_of, per_block, strict=True):
            live = rows >= 0
            out[rows[live]] = values[live]
        return out

    def look_scores(self, query_a: np.ndarray, query_b: np.ndarray) -> np.ndarray:
        """:func:`~harmony_image.kernels.dot_max` of every row's thumbnail with two query thumbnails."""
        return self._scatter([dot_max(b.shortlist.thumbs, query_a, query_b) for b in self.blocks], np.float32)

    @cached_property
    def _coarse(self) -> tuple[CoarseThumbs, np.ndarray]:
        """Every block's :attr:`ShortlistTier.coarse`, one after the other, and each entry's row
        (-1: it does not take part): the bounds in one call for the whole catalog, not one a
        block (measured: a third of the time on a catalog of 50 blocks)."""
        return (
            CoarseThumbs.concatenate([b.shortlist.coarse for b in self.blocks]),
            np.concatenate(self.rows_of or [_NONE]),
        )

    def region_looks(self, query: QueryRegions, *, keep: int) -> np.ndarray:
        """:func:`~harmony_image.regions.best_windows` of the rows that can be among the ``keep``
        best by it, NaN for the others (:func:`~harmony_image.regions.best_looks`: each row's look
        bounded by :func:`~harmony_image.regions.region_bounds`, the exact one computed for the
        rows whose bound reaches the best)."""
        coarse, rows = self._coarse
        bounds = self._scatter([region_bounds(coarse, query.groups)], np.float32, rows_of=[rows])
        return best_looks(bounds, lambda at: self.region_looks_at(at, query), keep)

    def region_looks_at(self, rows: np.ndarray, query: QueryRegions) -> np.ndarray:
        """:func:`~harmony_image.regions.best_windows` of ``rows``: their best region looks (for
        more than half the catalog, of every row, block by block, rather than gathered)."""
        if len(rows) > len(self) // 2:
            every = self._scatter([best_windows(b.shortlist.regions, query)[0] for b in self.blocks], np.float32)
            looks: np.ndarray = every[rows]
            return looks
        return best_windows(self._region_rows(rows), query)[0]

    def crop_looks(self, query: QueryRegions) -> np.ndarray:
        """:func:`~harmony_image.regions.best_crops` of every row: its best crop look."""
        return self._scatter([best_crops(b.shortlist.regions, query)[0] for b in self.blocks], np.float32)

    def crop_views(self, rows: np.ndarray, query: QueryRegions) -> np.ndarray:
        """Whether the query's mirror (not the query) gives each of ``rows`` its crop look."""
        return best_crops(self._region_rows(rows), query)[1]

    def region_windows(self, rows: np.ndarray, query: QueryRegions) -> np.ndarray:
        """The index of the query's best window for each of ``rows``."""
        return best_windows(self._region_rows(rows), query)[1]

    def _region_rows(self, rows: np.ndarray) -> RegionThumbs:
        rows = np.asarray(rows, dtype=np.int64)
        codes = np.empty((len(rows), REGION_SIDE * REGION_SIDE), dtype=np.int8)
        inverse = np.empty(len(rows), dtype=np.float32)
        blocks = self.block_of[rows]
        for b in np.unique(blocks).tolist():
            at = np.flatnonzero(blocks == b)
            regions, local = self.blocks[b].shortlist.regions, self.local_of[rows[at]]
            codes[at], inverse[at] = regions.codes[local], regions.inverse_norms[local]
        return RegionThumbs(codes, inverse)

    def vote_counts(self, queries: Sequence[np.ndarray], threshold: int) -> np.ndarray:
        """:func:`~harmony_image.kernels.hashed_close` of each of ``queries`` (sets of descriptor
        rows) with every row's vote descriptors: (rows, len(queries)), all sets in one pass."""
        query = np.concatenate([np.asarray(q, dtype=np.uint8).reshape(-1, DESCRIPTOR_BYTES) for q in queries])
        sizes = [len(q) for q in queries]
        query_keys = vote_keys(query, VOTE_KEY_BITS)  # once for every block
        per_block = [
            hashed_close(
                query,
                b.shortlist.votes,
                b.shortlist.vote_keys,
                VOTE_KEY_BITS,
                threshold,
                query_keys=query_keys,
                groups=sizes,
            )
            for b in self.blocks
        ]
        return self._scatter(per_block, np.int32, (len(queries),))

    def seed_scores(self, gray: np.ndarray, descriptors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """SSIM with ``gray`` and cross-checked match counts of ``descriptors``, every row: the
        whole verification tier, block by block (a segment's straight from its mapping)."""
        ssim = [ssim_scores(gray, b.verification.grays) for b in self.blocks]
        counts = [cross_check_counts(descriptors, b.verification.descriptors) for b in self.blocks]
        return self._scatter(ssim, np.float64), self._scatter(counts, np.int32)

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, DescriptorPack]:
        """The grayscales and packed seed descriptors of ``rows``, as the seed kernels read them."""
        grays = np.empty((len(rows), SEED_SIDE, SEED_SIDE), dtype=np.uint8)
        located = [self._locate(row) for row in rows.tolist()]
        wanted: dict[int, list[int]] = {}
        for row in rows.tolist():
            wanted.setdefault(int(self.block_of[row]), []).append(int(self.local_of[row]))
        started = [self.blocks[b].verification.prefetch(local) for b, local in wanted.items()]
        for reading in started:  # every block's reads start before the first is waited for
            if reading is not None:
                reading.result()  # a failed read fails this gather however soon it failed (not read again)
        chunks, counts = [], []
        for k, (block, i) in enumerate(located):
            grays[k] = block.verification.gray_of(i)
            planes = block.verification.planes_of(i)
            chunks.append(planes.reshape(-1))
            counts.append(planes.shape[1])
        return grays, join_packs(chunks, counts)

    def colours_of(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), HUE_BINS + 1), dtype=np.float32)
        for k, row in enumerate(rows.tolist()):
            block, i = self._locate(row)
            out[k] = block.shortlist.colours[i]
        return out

    def descriptors_of(self, row: int) -> np.ndarray:
        block, i = self._locate(row)
        return block.descriptors_of(i)

    def keypoints_of(self, row: int) -> np.ndarray:
        block, i = self._locate(row)
        return block.verification.keypoints_of(i)

    def detail_keypoints_of(self, row: int) -> np.ndarray:
        block, i = self._locate(row)
        return block.verification.detail_of(i)[0]

    def detail_planes(self, row: int) -> np.ndarray:
        """Row's detail descriptors as (4, n) uint64 planes (built on demand: few rows need them)."""
        block, i = self._locate(row)
        descriptors = block.verification.detail_of(i)[1]
        return np.ascontiguousarray(np.ascontiguousarray(descriptors).view(np.uint64).reshape(-1, 4).T)

    @property
    def shortlist_nbytes(self) -> int:
        """Bytes of the shortlist tier's arrays, plus this catalog's row maps (8 B per row) and, once
        a query has read them, the coarse copies of every block together (:meth:`region_looks`)."""
        short = sum(b.shortlist.nbytes for b in self.blocks)
        together = self.__dict__["_coarse"][0].nbytes if "_coarse" in self.__dict__ else 0
        return int(short + self.block_of.nbytes + self.local_of.nbytes + together)

    @property
    def nbytes(self) -> int:
        """Bytes held in process memory: the shortlist tier and the verification tier of the
        blocks that are not memory-mapped (a mapped segment's pages are the kernel's cache)."""
        verification = sum(b.verification.nbytes for b in self.blocks if not b.verification.mapped)
        return self.shortlist_nbytes + int(verification)
