"""Batch scoring kernels: the compiled ``_kernels`` extension when it was built, else numpy.

Both implementations give the same numbers (tests compare them with each other and with
scikit-image / OpenCV); the extension is 5-50x faster and releases the GIL, so a catalog is
split across threads, one per core.

The extension holds one copy of its loops per CPU level (x86_64: ``avx512``, ``avx2``,
``popcnt``, ``portable``; aarch64: ``neon``, ``portable``) and picks the fastest the CPU
supports at import; ``HARMONY_KERNEL=<level>`` forces one (RuntimeError if unknown or not
supported). :func:`levels` lists what this machine can run, :func:`use` switches in-process.
Every level returns bit-identical results.
"""

from __future__ import annotations

import importlib
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from types import ModuleType
from typing import TypeVar

import numpy as np

from .ssim import SsimQuery

T = TypeVar("T")


def _compiled() -> ModuleType | None:
    """The extension built by `pip install` (setup.py); None without a C compiler, or with
    HARMONY_PURE_PYTHON=1 (tests run both implementations)."""
    if os.environ.get("HARMONY_PURE_PYTHON") == "1":
        return None
    try:
        return importlib.import_module(f"{__package__}._kernels")
    except ImportError:  # pragma: no cover - a build without a compiler
        return None


_module = _compiled()
_kernels = _module  # the implementation in use: the extension, or None for numpy


def _implementation() -> str:
    return f"c-{_kernels.kernel}" if _kernels is not None else "numpy"


IMPLEMENTATION = _implementation()
"""``c-<level>`` (e.g. ``c-avx2``) or ``numpy``: what the scoring functions below run."""


def levels() -> tuple[str, ...]:
    """The levels this machine runs, fastest first: the extension's, then ``numpy``."""
    compiled: tuple[str, ...] = tuple(_module.levels) if _module is not None else ()
    return (*compiled, "numpy")


def use(level: str) -> str:
    """Run every later call at ``level`` (one of :func:`levels`, or ``auto`` for the fastest);
    returns the level used before. Raises ValueError for a level this machine cannot run."""
    global _kernels, IMPLEMENTATION
    before = IMPLEMENTATION.removeprefix("c-")
    if level == "numpy":
        _kernels = None
    elif _module is None:
        raise ValueError(f"kernel level {level!r}: the C extension is not built here; levels: numpy")
    else:
        _module.use(level)
        _kernels = _module
    IMPLEMENTATION = _implementation()
    return before


@contextmanager
def using(level: str) -> Iterator[str]:
    """``with using("avx2"):`` run at that level inside the block, then at the one before."""
    before = use(level)
    try:
        yield IMPLEMENTATION
    finally:
        use(before)


THREADS = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
_pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="harmony-kernel") if THREADS > 1 else None


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, n, parts + 1).astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]


_serial = False  # set by serial(): every call on the calling thread (per-core timings)


@contextmanager
def serial() -> Iterator[None]:
    """``with serial():`` the kernels run on the calling thread only (the benchmark's per-core
    timings). Not for concurrent use."""
    global _serial
    before, _serial = _serial, True
    try:
        yield
    finally:
        _serial = before


def _parallel(fn: Callable[[int, int], None], n: int, min_per_thread: int = 32) -> None:
    parts = 1 if _serial else min(THREADS, max(1, n // min_per_thread))
    spans = _split(n, parts)
    if _pool is None or len(spans) <= 1:
        for lo, hi in spans:
            fn(lo, hi)
        return
    for future in [_pool.submit(fn, lo, hi) for lo, hi in spans]:
        future.result()


def map_threads(fn: Callable[[T], None], items: Iterable[T]) -> None:
    """Call ``fn(item)`` for each item on the kernel threads (for work that releases the GIL)."""
    items = list(items)
    if _pool is None or _serial or len(items) <= 1:
        for item in items:
            fn(item)
        return
    for future in [_pool.submit(fn, item) for item in items]:
        future.result()


def ssim_scores(query: np.ndarray, grays: np.ndarray) -> np.ndarray:
    """SSIM (scikit-image defaults) of a 256x256 uint8 ``query`` against ``grays`` (n, 256, 256)."""
    n = grays.shape[0]
    out = np.zeros(n, dtype=np.float64)
    if n == 0:
        return out
    query = np.ascontiguousarray(query, dtype=np.uint8)
    grays = np.ascontiguousarray(grays, dtype=np.uint8)
    if _kernels is not None:
        _parallel(lambda lo, hi: _kernels.ssim_scores(query, grays[lo:hi], out[lo:hi]), n)
    else:
        prepared = SsimQuery(query)

        def run(lo: int, hi: int) -> None:
            out[lo:hi] = prepared.scores(grays[lo:hi])

        _parallel(run, n)
    return out


def ssim_pair(query_a: np.ndarray, query_b: np.ndarray, grays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`ssim_scores` of two queries (default scoring: the query and its mirror image) in
    one pass over ``grays``, sharing each image's own window sums; the same numbers."""
    n = grays.shape[0]
    out_a, out_b = np.zeros(n, dtype=np.float64), np.zeros(n, dtype=np.float64)
    if n == 0:
        return out_a, out_b
    if _kernels is None:
        return ssim_scores(query_a, grays), ssim_scores(query_b, grays)
    kernel = _kernels
    query_a = np.ascontiguousarray(query_a, dtype=np.uint8)
    query_b = np.ascontiguousarray(query_b, dtype=np.uint8)
    grays = np.ascontiguousarray(grays, dtype=np.uint8)
    _parallel(lambda lo, hi: kernel.ssim_pair(query_a, query_b, grays[lo:hi], out_a[lo:hi], out_b[lo:hi]), n, 8)
    return out_a, out_b


def to_bfloat16(values: np.ndarray) -> np.ndarray:
    """float32 ``values`` as bfloat16, rounded to the nearest (ties to even): the uint16 top halves
    of their IEEE bits. bfloat16 keeps float32's exponent and 8 of its 24 significant bits (an
    error of 2**-8 at most per entry); a thumbnail held so takes half the memory, and its
    correlations move by 5e-5 (median; 1e-3 at most: 3,000 of the benchmark's catalog thumbnails
    against 100 of its queries). Finite values only."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    return rounded.astype(np.uint16)


def require_bfloat16(bits: np.ndarray, what: str) -> None:
    """TypeError naming ``what`` unless ``bits`` are bfloat16 bits (uint16, :func:`to_bfloat16`):
    float32 values cast to uint16 would be read as other numbers without a word."""
    if bits.dtype != np.uint16:
        raise TypeError(f"{what} must be bfloat16 bits (uint16, see to_bfloat16), not {bits.dtype}")


def from_bfloat16(bits: np.ndarray) -> np.ndarray:
    """bfloat16 ``bits`` (uint16, :func:`to_bfloat16`) as float32, exactly."""
    require_bfloat16(bits, "from_bfloat16: bits")
    widened: np.ndarray = (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return widened


def dot_max(rows: np.ndarray, query_a: np.ndarray, query_b: np.ndarray) -> np.ndarray:
    """``max(rows @ query_a, rows @ query_b)`` for bfloat16 ``rows`` (n, d) (uint16 bits,
    :func:`to_bfloat16`), d a multiple of 8, and float32 queries, in one fixed order of float32
    operations (each entry widened exactly, eight running sums, then a fixed tree), so the numbers
    are the same at every level, on every CPU and in the numpy fallback; BLAS's are not, and its
    threads spin-wait (50x slower measured) when another thread holds a core."""
    n = rows.shape[0]
    out = np.empty(n, dtype=np.float32)
    if n == 0:
        return out
    require_bfloat16(rows, "dot_max: rows")
    rows = np.ascontiguousarray(rows)
    query_a = np.ascontiguousarray(query_a, dtype=np.float32)
    query_b = np.ascontiguousarray(query_b, dtype=np.float32)
    if _kernels is not None:
        kernel = _kernels
        _parallel(lambda lo, hi: kernel.dot_max(rows[lo:hi], query_a, query_b, out[lo:hi]), n, 256)
        return out
    for lo in range(0, n, 1024):  # widened a slice at a time: no float32 copy of every row
        part = from_bfloat16(rows[lo : lo + 1024])
        np.maximum(_dot8(part, query_a), _dot8(part, query_b), out=out[lo : lo + 1024])
    return out


def region_max(rows: np.ndarray, windows: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For int8 ``rows`` (n, d) and int8-valued ``windows`` (m, d): per row, the largest
    ``(row . window_j) * scale[j]`` (float32) and the first j that gives it. The dot products are
    exact integers (in float32 too, while below 2**24), so the numbers are the same at every
    level, on every CPU and in the numpy fallback, whatever rows are scored together."""
    n = rows.shape[0]
    out, which = np.zeros(n, dtype=np.float32), np.zeros(n, dtype=np.int32)
    if n == 0 or len(windows) == 0:
        return out, which.astype(np.int64)
    rows = np.ascontiguousarray(rows, dtype=np.int8)
    scale = np.ascontiguousarray(scale, dtype=np.float32)
    if _kernels is not None:
        kernel = _kernels
        wide = np.ascontiguousarray(windows, dtype=np.int16)
        _parallel(lambda lo, hi: kernel.region_max(rows[lo:hi], wide, scale, out[lo:hi], which[lo:hi]), n, 64)
        return out, which.astype(np.int64)
    scaled = (rows.astype(np.float32) @ np.asarray(windows, dtype=np.float32).T) * scale
    at = scaled.argmax(axis=1)
    return scaled[np.arange(n), at], at


def region_group_max(rows: np.ndarray, windows: np.ndarray, scale: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """:func:`region_max` of ``rows`` with each group of ``windows`` — the windows from
    ``ends[g - 1]`` (0 for the first) to ``ends[g]`` — without the window's index: (groups, n)
    float32, the same numbers as :func:`region_max` of each group's windows alone."""
    ends = np.ascontiguousarray(ends, dtype=np.int64)
    if len(ends) == 0 or ends[-1] != len(windows) or (np.diff(ends, prepend=0) <= 0).any():
        raise ValueError(f"ends must rise from above 0 to the {len(windows)} windows, one per group: {ends.tolist()}")
    n = rows.shape[0]
    out = np.empty((len(ends), n), dtype=np.float32)
    if n == 0:
        return out
    rows = np.ascontiguousarray(rows, dtype=np.int8)
    scale = np.ascontiguousarray(scale, dtype=np.float32)
    if _kernels is not None:
        kernel = _kernels
        wide = np.ascontiguousarray(windows, dtype=np.int16)

        def run(lo: int, hi: int) -> None:
            part = np.empty((len(ends), hi - lo), dtype=np.float32)
            kernel.region_group_max(rows[lo:hi], wide, scale, ends, part)
            out[:, lo:hi] = part

        _parallel(run, n, 64)
        return out
    for g, (lo, hi) in enumerate(zip([0, *ends[:-1].tolist()], ends.tolist(), strict=True)):
        out[g] = region_max(rows, windows[lo:hi], scale[lo:hi])[0]
    return out


def crop_max(
    rows: np.ndarray, side: int, taps: np.ndarray, sizes: np.ndarray, scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For int8 thumbnails ``rows`` (n, side*side) and m int8-valued square templates (``taps``:
    their values one after the other, template j ``sizes[j]`` a side): per row, the best
    normalised correlation of a template with a window of the thumbnail of its size, and where
    (``j * side**2 + y * side + x``, the first of equal ones; windows flatter than one code
    step in standard deviation score 0). ``scale[j]`` is
    ``1 / sqrt(s**2 * sum(t**2) - sum(t)**2)`` of template j (at most 12 a side): the
    correlation is ``num * scale[j] / sqrt(variance)`` with num and variance exact int32, so the numbers
    are the same at every level, on every CPU and in the numpy fallback."""
    n = rows.shape[0]
    out, which = np.zeros(n, dtype=np.float32), np.zeros(n, dtype=np.int32)
    if n == 0 or len(sizes) == 0:
        return out, which.astype(np.int64)
    rows = np.ascontiguousarray(rows, dtype=np.int8)
    taps = np.ascontiguousarray(taps, dtype=np.int16)
    sizes = np.ascontiguousarray(sizes, dtype=np.int32)
    sums = np.array([int(t.sum()) for t in np.split(taps, np.cumsum(sizes.astype(np.int64) ** 2)[:-1])], np.int32)
    scale = np.ascontiguousarray(scale, dtype=np.float32)
    if _kernels is not None:
        kernel = _kernels
        _parallel(
            lambda lo, hi: kernel.crop_max(rows[lo:hi], side, taps, sizes, sums, scale, out[lo:hi], which[lo:hi]),
            n,
            64,
        )
        return out, which.astype(np.int64)
    images = rows.reshape(n, side, side).astype(np.int64)
    integral = np.zeros((n, side + 1, side + 1), np.int64)
    integral[:, 1:, 1:] = images.cumsum(1).cumsum(2)
    squares = np.zeros_like(integral)
    squares[:, 1:, 1:] = (images * images).cumsum(1).cumsum(2)
    values, start = [], 0
    for j, s in enumerate(sizes.tolist()):
        template = taps[start : start + s * s].astype(np.int64)
        start += s * s
        windows = np.lib.stride_tricks.sliding_window_view(images, (s, s), axis=(1, 2))
        products = windows.reshape(n, -1, s * s) @ template
        p = side - s + 1

        def box(table: np.ndarray, s: int = s, p: int = p) -> np.ndarray:
            whole: np.ndarray = table[:, s:, s:] - table[:, :p, s:] - table[:, s:, :p] + table[:, :p, :p]
            return whole.reshape(n, -1)

        total, square = box(integral), box(squares)
        variance = (s * s * square - total * total).astype(np.int32)
        num = (s * s * products - int(sums[j]) * total).astype(np.int32)
        with np.errstate(divide="ignore", invalid="ignore"):
            v = num.astype(np.float32) * scale[j] / np.sqrt(variance.astype(np.float32))
        v = np.where(variance < s**4, np.float32(0.0), v).astype(np.float32)
        position = (np.arange(p)[:, None] * side + np.arange(p)[None, :]).reshape(-1)
        values.append((v, j * side * side + position))
    scores = np.concatenate([v for v, _ in values], axis=1)
    places = np.concatenate([at for _, at in values])
    best = scores.argmax(axis=1)
    return scores[np.arange(n), best], places[best]


def _dot8(rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """The kernel's order in numpy: a reduction over a middle axis adds slices in order."""
    n, d = rows.shape
    products = (rows * query).reshape(n, d // 8, 8)
    s = np.add.reduce(products, axis=1, dtype=np.float32)
    total: np.ndarray = ((s[:, 0] + s[:, 1]) + (s[:, 2] + s[:, 3])) + ((s[:, 4] + s[:, 5]) + (s[:, 6] + s[:, 7]))
    return total


class DescriptorPack:
    """ORB descriptors of many images, packed for :func:`cross_check_counts`.

    Image j's descriptors are rows ``offsets[j]:offsets[j+1]``, stored as four planes of
    64-bit words (all first words, then all second words, ...) so the kernel streams them.
    """

    def __init__(self, descriptor_sets: list[np.ndarray]) -> None:
        counts = np.array([len(d) for d in descriptor_sets], dtype=np.int64)
        self.offsets = np.zeros(len(descriptor_sets) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.offsets[1:])
        self.planes = np.empty(int(self.offsets[-1]) * 4, dtype=np.uint64)
        for j, d in enumerate(descriptor_sets):
            lo, hi = int(self.offsets[j]), int(self.offsets[j + 1])
            if hi > lo:
                words = np.ascontiguousarray(d, dtype=np.uint8).view(np.uint64).reshape(-1, 4)
                self.planes[4 * lo : 4 * hi] = words.T.reshape(-1)

    @classmethod
    def from_arrays(cls, planes: np.ndarray, offsets: np.ndarray) -> DescriptorPack:
        """A pack over ``planes`` and ``offsets`` laid out as :meth:`__init__` lays them out
        (a stored segment's, memory-mapped or not), without copying them."""
        pack = cls.__new__(cls)
        pack.planes, pack.offsets = planes, offsets
        return pack

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def words(self, j: int) -> np.ndarray:
        """Image j's descriptors as (4, n) uint64 planes."""
        lo, hi = int(self.offsets[j]), int(self.offsets[j + 1])
        return self.planes[4 * lo : 4 * hi].reshape(4, hi - lo)


def cross_check_counts(query: np.ndarray, pack: DescriptorPack) -> np.ndarray:
    """Number of cross-checked Hamming matches of ``query`` (n, 32) uint8 with each packed image.

    Equals ``len(cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(query, d_j))``.
    """
    n = len(pack)
    out = np.zeros(n, dtype=np.int32)
    if n == 0 or len(query) == 0:
        return out
    query = np.ascontiguousarray(query, dtype=np.uint8)
    if _kernels is not None:

        def run(lo: int, hi: int) -> None:
            _kernels.cross_check_counts(query, pack.planes, pack.offsets[lo : hi + 1], out[lo:hi])

        # offsets are absolute row numbers into planes, so a slice of them addresses a sub-range
        _parallel(run, n)
        return out
    q_words = query.view(np.uint64).reshape(-1, 4)
    rows = np.arange(len(query))
    for j in range(n):
        c = pack.words(j)
        if c.shape[1] == 0:
            continue
        dist = _distances(q_words, c)
        nearest_catalog = dist.argmin(axis=1)  # first minimum, as OpenCV
        nearest_query = dist.argmin(axis=0)
        out[j] = int(np.count_nonzero(nearest_query[nearest_catalog] == rows))
    return out


def count_close(query: np.ndarray, pack: DescriptorPack, threshold: int) -> np.ndarray:
    """Per packed image: how many rows of ``query`` have a descriptor within ``threshold`` bits."""
    n = len(pack)
    out = np.zeros(n, dtype=np.int32)
    if n == 0 or len(query) == 0:
        return out
    query = np.ascontiguousarray(query, dtype=np.uint8)
    if _kernels is not None:
        _parallel(
            lambda lo, hi: _kernels.count_close(query, pack.planes, pack.offsets[lo : hi + 1], threshold, out[lo:hi]), n
        )
        return out
    q_words = query.view(np.uint64).reshape(-1, 4)
    for j in range(n):
        c = pack.words(j)
        if c.shape[1]:
            out[j] = int(np.count_nonzero(_distances(q_words, c).min(axis=1) <= threshold))
    return out


def _bit_keys(words: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """(n, tables) uint16 keys of descriptors given as (n, 4) uint64 words."""
    keys = np.zeros((len(words), len(bits)), dtype=np.uint16)
    for t, positions in enumerate(bits.tolist()):
        for j, b in enumerate(positions):
            keys[:, t] |= (((words[:, b // 64] >> np.uint64(b % 64)) & np.uint64(1)) << np.uint64(j)).astype(np.uint16)
    return keys


def _checked_bits(bits: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(bits, dtype=np.int32)
    if bits.ndim != 2 or not 1 <= bits.shape[0] <= 8 or not 1 <= bits.shape[1] <= 16:
        raise ValueError(f"bits must be (tables, key bits) with 1-8 tables of 1-16 bits, got shape {bits.shape}")
    if bits.min() < 0 or bits.max() > 255:
        raise ValueError("bits must be bit positions of a 256-bit descriptor (0-255)")
    return bits


def vote_keys(rows: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Bit-sampling keys of descriptor ``rows`` ((n, 32) uint8): (n, tables) uint16, bit j of key t
    being bit ``bits[t, j]`` of the descriptor (bit b of its 64-bit little-endian word b // 64).
    Two descriptors ``d`` bits apart share a key of ``m`` sampled bits with probability about
    ``(1 - d / 256) ** m``, over the choice of the bits (Indyk and Motwani, 1998)."""
    return pack_keys(DescriptorPack([np.asarray(rows, dtype=np.uint8).reshape(-1, 32)]), bits)


def pack_keys(pack: DescriptorPack, bits: np.ndarray) -> np.ndarray:
    """:func:`vote_keys` of every descriptor of ``pack``, in packed order: (total, tables) uint16."""
    bits = _checked_bits(bits)
    total = int(pack.offsets[-1])
    if _kernels is None:
        return _bit_keys(_pack_words(pack), bits)
    out = np.empty((total, len(bits)), dtype=np.uint16)
    kernel, tables = _kernels, len(bits)
    _parallel(lambda lo, hi: kernel.pack_keys(pack.planes, pack.offsets[lo : hi + 1], bits, tables, out), len(pack))
    return out


def _pack_words(pack: DescriptorPack) -> np.ndarray:
    """Every descriptor of ``pack`` as (total, 4) uint64 words, in packed order."""
    counts = np.diff(pack.offsets)
    owner = np.repeat(np.arange(len(pack)), counts)
    row = np.arange(int(pack.offsets[-1]))
    start, count = pack.offsets[owner], counts[owner]
    return np.stack([pack.planes[4 * start + w * count + (row - start)] for w in range(4)], axis=1)


HASH_MAX_GROUPS = 16
"""Most groups of query rows :func:`hashed_close` counts apart in one pass."""


def hashed_close(
    query: np.ndarray,
    pack: DescriptorPack,
    keys: np.ndarray,
    bits: np.ndarray,
    threshold: int,
    *,
    query_keys: np.ndarray | None = None,
    groups: Sequence[int] | None = None,
) -> np.ndarray:
    """Per packed image: how many rows of ``query`` share a key with one of its descriptors (in
    any table: ``keys`` is :func:`pack_keys` of ``pack`` with the same ``bits``) and lie within
    ``threshold`` bits of it. :func:`count_close` counted every row within the threshold, over
    every pair; this reads only the pairs that share a key (locality-sensitive hashing by bit
    sampling: Gionis, Indyk and Motwani, VLDB 1999), so its cost grows with those, and it counts
    close pairs the more often the closer they are. ``query_keys`` (:func:`vote_keys` of ``query``
    with ``bits``) spares computing them again for each pack a query meets.

    ``groups`` counts several sets of query rows in one pass over the catalog's keys: ``query``
    holds their rows one after the other, ``groups[g]`` of set g (1 to :data:`HASH_MAX_GROUPS`
    sets, any of them empty). The result is then (n, len(groups)), each column the counts of
    one set's rows alone."""
    bits = _checked_bits(bits)
    n = len(pack)
    sizes = [len(query)] if groups is None else [int(g) for g in groups]
    if not 1 <= len(sizes) <= HASH_MAX_GROUPS or min(sizes) < 0 or sum(sizes) != len(query):
        raise ValueError(
            f"groups must be 1 to {HASH_MAX_GROUPS} sizes of row sets that add up to the {len(query)} query rows, "
            f"not {sizes}"
        )
    width = len(sizes)
    group = np.repeat(np.arange(width, dtype=np.uint8), sizes)
    out = np.zeros((n, width), dtype=np.int32)
    if n == 0 or len(query) == 0 or threshold < 0:
        return out if groups is not None else out[:, 0]
    query = np.ascontiguousarray(query, dtype=np.uint8)
    query_keys = vote_keys(query, bits) if query_keys is None else np.ascontiguousarray(query_keys, dtype=np.uint16)
    if query_keys.shape != (len(query), len(bits)):
        raise ValueError(f"query_keys must be vote_keys of the query with these bits: shape {query_keys.shape}")
    keys = np.ascontiguousarray(keys, dtype=np.uint16)
    if keys.shape != (int(pack.offsets[-1]), len(bits)):
        raise ValueError(f"keys must be pack_keys of the pack with these bits: shape {keys.shape}")
    if _kernels is not None:
        kernel, tables, nbits = _kernels, len(bits), bits.shape[1]
        _parallel(
            lambda lo, hi: kernel.hashed_close(
                query,
                query_keys,
                group,
                width,
                pack.planes,
                pack.offsets[lo : hi + 1],
                keys,
                tables,
                nbits,
                threshold,
                out[lo:hi],
            ),
            n,
        )
        return out if groups is not None else out[:, 0]
    words, q_words = _pack_words(pack), query.view(np.uint64).reshape(-1, 4)
    owner = np.repeat(np.arange(n), np.diff(pack.offsets))
    voted = []
    for t in range(len(bits)):
        order = np.argsort(query_keys[:, t], kind="stable")
        sorted_keys = query_keys[order, t]
        lo = np.searchsorted(sorted_keys, keys[:, t], "left")
        hi = np.searchsorted(sorted_keys, keys[:, t], "right")
        sharing = hi - lo
        row = np.repeat(np.arange(len(words)), sharing)
        rank = np.arange(len(row)) - np.repeat(np.cumsum(sharing) - sharing, sharing)
        rows = order[np.repeat(lo, sharing) + rank]
        dist = sum(np.bitwise_count(q_words[rows, w] ^ words[row, w]).astype(np.int32) for w in range(4))
        close = dist <= threshold
        voted.append(rows[close].astype(np.int64) * n + owner[row[close]])
    pairs = np.unique(np.concatenate(voted))
    image, voter = pairs % n, pairs // n
    out += np.bincount(image * width + group[voter], minlength=n * width).reshape(n, width).astype(np.int32)
    return out if groups is not None else out[:, 0]


def nearest_two(query: np.ndarray, planes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each row of ``query``: index of its nearest descriptor in ``planes`` ((4, n) uint64,
    see :meth:`DescriptorPack.words`; first index on ties), and the two smallest distances
    (65535 where there is none)."""
    nq = len(query)
    idx = np.full(nq, -1, dtype=np.int32)
    d1 = np.full(nq, 0xFFFF, dtype=np.uint16)
    d2 = np.full(nq, 0xFFFF, dtype=np.uint16)
    if nq == 0 or planes.shape[1] == 0:
        return idx, d1, d2
    query = np.ascontiguousarray(query, dtype=np.uint8)
    if _kernels is not None:
        _kernels.nearest_two(query, np.ascontiguousarray(planes), idx, d1, d2)
        return idx, d1, d2
    dist = _distances(query.view(np.uint64).reshape(-1, 4), planes)
    idx[:] = dist.argmin(axis=1)
    rows = np.arange(nq)
    d1[:] = dist[rows, idx]
    if planes.shape[1] > 1:
        dist[rows, idx] = 0xFFFF
        d2[:] = dist.min(axis=1)
    return idx, d1, d2


def match_two(query: np.ndarray, pack: DescriptorPack) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`cross_check_counts` and :func:`nearest_two` of ``query`` with every packed image,
    in one pass over the descriptor pairs: the counts (n,), and the nearest index (within the
    image), smallest and second smallest distance of each query row, each of shape (n, nq)."""
    n, nq = len(pack), len(query)
    counts = np.zeros(n, dtype=np.int32)
    idx = np.full((n, nq), -1, dtype=np.int32)
    d1 = np.full((n, nq), 0xFFFF, dtype=np.uint16)
    d2 = np.full((n, nq), 0xFFFF, dtype=np.uint16)
    if n == 0 or nq == 0:
        return counts, idx, d1, d2
    query = np.ascontiguousarray(query, dtype=np.uint8)
    if _kernels is not None:
        kernel = _kernels

        def run(lo: int, hi: int) -> None:
            offsets = pack.offsets[lo : hi + 1]
            kernel.match_two(query, pack.planes, offsets, counts[lo:hi], idx[lo:hi], d1[lo:hi], d2[lo:hi])

        _parallel(run, n, min_per_thread=4)
        return counts, idx, d1, d2
    counts[:] = cross_check_counts(query, pack)
    for j in range(n):
        idx[j], d1[j], d2[j] = nearest_two(query, pack.words(j))
    return counts, idx, d1, d2


def _distances(q_words: np.ndarray, c_planes: np.ndarray) -> np.ndarray:
    dist: np.ndarray = np.bitwise_count(q_words[:, 0, None] ^ c_planes[0]).astype(np.uint16)
    for w in (1, 2, 3):
        dist += np.bitwise_count(q_words[:, w, None] ^ c_planes[w])
    return dist
