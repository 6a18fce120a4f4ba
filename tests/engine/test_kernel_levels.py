"""Every kernel level this machine runs gives the same numbers: bit-identical to each other, the
cross-check equal to OpenCV's BFMatcher(NORM_HAMMING, crossCheck=True), votes (exhaustive and
hashed) and 2-NN equal to numpy brute force, SSIM within 1e-5 of scikit-image; HARMONY_KERNEL picks or refuses a level.

Self-contained on purpose (no conftest fixtures, no AWS packages): `make arm64-test` runs this
file under qemu-aarch64 against the arm64 layer's cross-compiled kernels
(`pytest --noconftest`), where a child Python must be started through the emulator —
KERNEL_TEST_PYTHON gives that command.
"""

from __future__ import annotations

import functools
import itertools
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from harmony_image import kernels
from harmony_image.features import seed_gray, seed_orb
from harmony_image.kernels import (
    DescriptorPack,
    count_close,
    crop_max,
    cross_check_counts,
    dot_max,
    from_bfloat16,
    hashed_close,
    match_two,
    nearest_two,
    pack_keys,
    region_group_max,
    region_max,
    ssim_pair,
    ssim_scores,
    to_bfloat16,
    vote_keys,
)
from harmony_image.packed import VOTE_KEY_BITS

IMAGES = Path(__file__).resolve().parents[1] / "fixtures" / "images"
SAMPLES = Path(__file__).resolve().parents[2] / "src" / "harmony_local" / "samples"
COMPILED = [level for level in kernels.levels() if level != "numpy"]
ALL_LEVELS = kernels.levels()
THRESHOLDS = (-1, 0, 30, 50, 64, 255, 256)
KEY_BITS = {
    "vote": VOTE_KEY_BITS,  # what the first pass uses
    "crowded": np.array([[0, 1, 2], [255, 100, 7]]),  # 8 keys: long chains of query rows per key
    "widest": np.arange(128).reshape(8, 16) * 2 + 1,  # the most tables and bits the kernel takes
}
# how to start another Python of the same kind (under qemu-user: through the emulator)
CHILD_PYTHON = shlex.split(os.environ.get("KERNEL_TEST_PYTHON", "")) or [sys.executable]


_LEVEL_PARAMS: list[Any] = [*COMPILED] or [pytest.param("none", marks=pytest.mark.skip("C kernels not built"))]


@pytest.fixture(params=_LEVEL_PARAMS)
def level(request: pytest.FixtureRequest) -> Iterator[str]:
    with kernels.using(request.param):
        yield request.param


# ------------------------------------------------------------------ inputs (deterministic)


@functools.cache
def photo_grays() -> tuple[np.ndarray, ...]:
    paths = sorted(p for folder in (SAMPLES / "catalog", SAMPLES / "queries", IMAGES) for p in folder.glob("*.jpg"))
    grays = []
    for p in paths[:16]:
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is not None:
            grays.append(seed_gray(bgr))
    assert len(grays) >= 8
    return tuple(grays)


@functools.cache
def grays() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(11)
    ramp = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    edge = [
        np.zeros((256, 256), np.uint8),
        np.full((256, 256), 255, np.uint8),
        ramp,
        ramp.T.copy(),
        (np.indices((256, 256)).sum(axis=0) % 2 * 255).astype(np.uint8),
        rng.integers(0, 256, (256, 256), dtype=np.uint8),
        rng.integers(250, 256, (256, 256), dtype=np.uint8),
    ]
    photos = photo_grays()
    return (*photos, 255 - photos[0], *edge)


@functools.cache
def descriptor_sets() -> dict[str, np.ndarray]:
    """Real ORB sets and the awkward cases: empty, 1-2 rows, complements (distance 256), ties,
    all-zero/all-one rows, sizes that are not multiples of any vector width."""
    rng = np.random.default_rng(5)
    real = [seed_orb(g)[1] for g in photo_grays()]
    base = rng.integers(0, 256, (40, 32), dtype=np.uint8)
    big = max(real, key=len)
    sets = {f"real{j}": d for j, d in enumerate(real)}
    sets |= {
        "empty": np.zeros((0, 32), np.uint8),
        "one": big[:1].copy(),
        "two": big[:2].copy(),
        "complements+dups": np.concatenate([~base[:10], base[:5], base[:5]]),
        "complements": ~base,
        "repeated": np.repeat(base[:3], 4, axis=0),
        "zeros+ones": np.concatenate([np.zeros((5, 32), np.uint8), np.full((6, 32), 255, np.uint8)]),
        "random129": rng.integers(0, 256, (129, 32), dtype=np.uint8),
    }
    for n in (3, 7, 8, 9, 15, 16, 17, 31, 33, 65):
        sets[f"size{n}"] = big[rng.choice(len(big), n, replace=False)]
    sets["far in the last word"] = _flipped(base[:3], rng)
    return sets


def _flipped(rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Copies of ``rows`` (base[:3]: the "repeated" queries) 51, 50 and 51 bits away: all in the last
    64-bit word, and 30 in the third + 21 in the last.  The votes kernels read the last word only for
    pairs the first three leave within the threshold, so at 50 these sit on both sides of that test."""
    out = []
    for row, (before, in_last) in zip(rows, ((0, 51), (0, 50), (30, 21)), strict=True):
        bits = np.unpackbits(row)
        bits[128 + rng.choice(64, before, replace=False)] ^= 1
        bits[192 + rng.choice(64, in_last, replace=False)] ^= 1
        out.append(np.packbits(bits))
    return np.array(out, np.uint8)


def query_sets() -> dict[str, np.ndarray]:
    sets = descriptor_sets()
    names = ["real0", "real3", "one", "two", "complements", "repeated", "zeros+ones", "size17", "random129"]
    return {n: sets[n] for n in names}


@functools.cache
def thumbnails() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit-norm rows held as bfloat16 (as the shortlist's 32x32 thumbnails) and two float32 queries."""
    rng = np.random.default_rng(9)
    rows = rng.normal(size=(301, 1024)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return to_bfloat16(rows), rows[7].copy(), rows[200][::-1].copy()


def brute_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.unpackbits(a[:, None, :] ^ b[None, :, :], axis=2).sum(axis=2)


@functools.cache
def opencv_counts() -> dict[str, list[int]]:
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
    catalog = list(descriptor_sets().values())
    return {
        name: [len(matcher.match(q, d)) if len(q) and len(d) else 0 for d in catalog]
        for name, q in query_sets().items()
    }


@functools.cache
def reference_ssim() -> np.ndarray:
    """scikit-image's SSIM of a few queries against every gray (None without scikit-image)."""
    metrics = pytest.importorskip("skimage.metrics")
    gs = grays()
    return np.array([[metrics.structural_similarity(q, g) for g in gs] for q in gs[::4]])


@functools.cache
def outputs_at(level: str) -> dict[str, np.ndarray]:
    """Everything the kernels return on the inputs above, at ``level``."""
    with kernels.using(level):
        pack = DescriptorPack(list(descriptor_sets().values()))
        stack = np.stack(grays())
        out: dict[str, np.ndarray] = {}
        for name, q in query_sets().items():
            out[f"cross/{name}"] = cross_check_counts(q, pack)
            for t in THRESHOLDS:
                out[f"close/{name}/{t}"] = count_close(q, pack, t)
            for bits_name, bits in KEY_BITS.items():
                keys = pack_keys(pack, bits)
                out[f"keys/{bits_name}"] = keys
                for t in (0, 50, 256):
                    out[f"hashed/{name}/{bits_name}/{t}"] = hashed_close(q, pack, keys, bits, t)
            for j, d in enumerate(descriptor_sets()):
                for part, arr in zip(("idx", "d1", "d2"), nearest_two(q, pack.words(j)), strict=True):
                    out[f"two/{name}/{d}/{part}"] = arr
            for part, arr in zip(("cross", "idx", "d1", "d2"), match_two(q, pack), strict=True):
                out[f"match_two/{name}/{part}"] = arr
        for i, g in enumerate(grays()[::4]):
            out[f"ssim/{i}"] = ssim_scores(g, stack)
        out["ssim_pair/0"], out["ssim_pair/1"] = ssim_pair(grays()[0], grays()[-1], stack)
        out["dot_max"] = dot_max(*thumbnails())
        out["region_max/best"], out["region_max/which"] = region_max(*region_inputs())
        rows, windows, scale = region_inputs()
        out["region_group_max"] = region_group_max(rows, windows, scale, np.array([1, 16, 17, 23]))
        sets = list(query_sets().values())
        grouped = np.concatenate([sets[0], sets[1]])
        out["hashed/grouped"] = hashed_close(
            grouped, pack, pack_keys(pack, VOTE_KEY_BITS), VOTE_KEY_BITS, 50, groups=[len(sets[0]), 0, len(sets[1])]
        )
        out["crop_max/best"], out["crop_max/which"] = crop_max(*crop_inputs())
        return out


# ------------------------------------------------------------------ every level: exact references


def test_cross_check_equals_opencv_matcher(level):
    pack = DescriptorPack(list(descriptor_sets().values()))
    for name, q in query_sets().items():
        assert cross_check_counts(q, pack).tolist() == opencv_counts()[name], name


def test_cross_check_on_an_offsets_subrange(level):
    """kernels.py splits the catalog between threads by slicing offsets into one pack."""
    pack = DescriptorPack(list(descriptor_sets().values()))
    q = query_sets()["real0"]
    lo, hi = 3, len(pack) - 2
    out = np.zeros(hi - lo, np.int32)
    assert kernels._module is not None
    kernels._module.cross_check_counts(q, pack.planes, pack.offsets[lo : hi + 1], out)
    assert out.tolist() == opencv_counts()["real0"][lo:hi]


def _offset_calls(
    module: Any, q: np.ndarray, planes: np.ndarray, offsets: np.ndarray, short: int = 0
) -> dict[str, Any]:
    """Each compiled function that reads images by offsets into the planes, its outputs sized for
    ``offsets`` (n + 1 of them: n images; every descriptor's keys), less ``short`` images or keys."""
    n, nq = len(offsets) - 1 - short, len(q)
    keys = np.zeros((planes.size // 4 - short, 1), np.uint16)
    bits = np.arange(8, dtype=np.int32)
    return {
        "cross_check_counts": lambda: module.cross_check_counts(q, planes, offsets, np.zeros(n, np.int32)),
        "match_two": lambda: module.match_two(
            q,
            planes,
            offsets,
            np.zeros(n, np.int32),
            np.zeros((n, nq), np.int32),
            np.zeros((n, nq), np.uint16),
            np.zeros((n, nq), np.uint16),
        ),
        "count_close": lambda: module.count_close(q, planes, offsets, 50, np.zeros(n, np.int32)),
        "pack_keys": lambda: module.pack_keys(planes, offsets, bits, 1, keys),
        "hashed_close": lambda: module.hashed_close(
            q,
            np.zeros((nq, 1), np.uint16),
            np.zeros(nq, np.uint8),
            1,
            planes,
            offsets,
            keys,
            1,
            8,
            50,
            np.zeros(n, np.int32),
        ),
    }


@pytest.mark.parametrize("name", ["cross_check_counts", "match_two", "count_close", "pack_keys", "hashed_close"])
def test_compiled_functions_refuse_offsets_outside_the_planes_and_short_outputs(level, name):
    """What kernels.py never sends, the C functions still refuse with a ValueError that names
    them, rather than read or write past a buffer: offsets past the planes, falling or negative,
    and outputs shorter than the offsets ask for."""
    module = kernels._module
    assert module is not None
    pack = DescriptorPack(list(descriptor_sets().values()))
    q, total = query_sets()["real0"], int(pack.offsets[-1])
    _offset_calls(module, q, pack.planes, pack.offsets)[name]()  # as kernels.py calls them
    for bad in ([0, total + 1], [0, 5, 3], [-1, 3], [0, total, total + 32]):
        with pytest.raises(ValueError, match=f"{name}: offsets out of range"):
            _offset_calls(module, q, pack.planes, np.array(bad, np.int64))[name]()
    with pytest.raises(ValueError, match=f"{name}: buffer sizes do not match"):
        _offset_calls(module, q, pack.planes, pack.offsets, short=1)[name]()


@functools.cache
def brute_force() -> dict[str, tuple[np.ndarray, ...]]:
    """Per query: count_close per threshold, and per catalog set the first nearest index and the
    two smallest distances (65535 where there is none)."""
    sets = descriptor_sets()
    out: dict[str, tuple[np.ndarray, ...]] = {}
    for name, q in query_sets().items():
        close = np.zeros((len(THRESHOLDS), len(sets)), np.int32)
        for j, d in enumerate(sets.values()):
            if not len(q):
                continue
            if not len(d):
                out[f"{name}/{j}"] = (np.full(len(q), -1), np.full(len(q), 0xFFFF), np.full(len(q), 0xFFFF))
                continue
            dist = brute_distances(q, d)
            ordered = np.sort(dist, axis=1)
            second = ordered[:, 1] if len(d) > 1 else np.full(len(q), 0xFFFF)
            out[f"{name}/{j}"] = (dist.argmin(axis=1), ordered[:, 0], second)  # argmin: first index on ties
            close[:, j] = [(ordered[:, 0] <= t).sum() for t in THRESHOLDS]
        out[name] = (close,)
    return out


def test_count_close_and_nearest_two_equal_brute_force(level):
    sets = descriptor_sets()
    pack = DescriptorPack(list(sets.values()))
    expected = brute_force()
    for name, q in query_sets().items():
        for i, t in enumerate(THRESHOLDS):
            assert count_close(q, pack, t).tolist() == expected[name][0][i].tolist(), (name, t)
        for j, cname in enumerate(sets):
            got = nearest_two(q, pack.words(j))
            for part, a, b in zip(("idx", "d1", "d2"), got, expected[f"{name}/{j}"], strict=True):
                assert a.tolist() == b.tolist(), (name, cname, part)


def test_hashed_votes_equal_brute_force(level):
    """hashed_close counts the query rows with a catalog descriptor that shares a key with them and
    lies within the threshold: no more than count_close, which does not ask for a shared key."""
    sets = descriptor_sets()
    pack = DescriptorPack(list(sets.values()))
    for bits_name, bits in KEY_BITS.items():
        keys = pack_keys(pack, bits)
        for j, d in enumerate(sets.values()):
            assert keys[pack.offsets[j] : pack.offsets[j + 1]].tolist() == vote_keys(d, bits).tolist()
        for name, q in query_sets().items():
            sharing = (vote_keys(q, bits)[:, None, :] == keys[None, :, :]).any(axis=2)
            dist = brute_distances(q, np.concatenate(list(sets.values())))
            for t in THRESHOLDS:
                close = sharing & (dist <= t)
                expected = [int(close[:, lo:hi].any(axis=1).sum()) for lo, hi in itertools.pairwise(pack.offsets)]
                got = hashed_close(q, pack, keys, bits, t)
                assert got.tolist() == expected, (bits_name, name, t)
                assert (got <= count_close(q, pack, t)).all()


def test_hashed_votes_find_a_copy_and_its_close_pairs():
    """On real photos (some of them copies of others): an image's own descriptors all vote for
    it, and images the exhaustive vote finds unrelated stay far below."""
    sets = descriptor_sets()
    pack = DescriptorPack([d for name, d in sets.items() if name.startswith("real")])
    keys = pack_keys(pack, VOTE_KEY_BITS)
    for j, q in enumerate(d for name, d in sets.items() if name.startswith("real")):
        votes = hashed_close(q, pack, keys, VOTE_KEY_BITS, 50)
        assert votes[j] == votes.max() == len(q)
        unrelated = count_close(q, pack, 50) < 0.2 * len(q)
        assert unrelated.sum() >= len(pack) // 2
        assert (votes[unrelated] < 0.2 * len(q)).all()


def test_hashed_votes_take_the_query_keys_computed_once(level):
    pack = DescriptorPack(list(descriptor_sets().values()))
    keys = pack_keys(pack, VOTE_KEY_BITS)
    for q in query_sets().values():
        given = hashed_close(q, pack, keys, VOTE_KEY_BITS, 50, query_keys=vote_keys(q, VOTE_KEY_BITS))
        assert given.tolist() == hashed_close(q, pack, keys, VOTE_KEY_BITS, 50).tolist()


def test_hashed_votes_count_groups_of_rows_apart_in_one_pass(level):
    """Sets of query rows counted together (the first pass's query, mirror and detail rows) get
    each set's own counts, as if each were counted alone; an empty set counts nothing."""
    pack = DescriptorPack(list(descriptor_sets().values()))
    keys = pack_keys(pack, VOTE_KEY_BITS)
    sets = [q for q in query_sets().values() if len(q)]
    parts = [sets[0], sets[1][:0], sets[1], sets[0][:1], sets[-1]]
    together = hashed_close(np.concatenate(parts), pack, keys, VOTE_KEY_BITS, 50, groups=[len(p) for p in parts])
    assert together.shape == (len(pack), len(parts)) and together.dtype == np.int32
    for g, part in enumerate(parts):
        assert together[:, g].tolist() == hashed_close(part, pack, keys, VOTE_KEY_BITS, 50).tolist(), g
    assert together[:, 1].tolist() == [0] * len(pack)
    assert together.sum() > 0


def test_hashed_votes_refuse_groups_that_do_not_fit():
    pack = DescriptorPack(list(descriptor_sets().values()))
    keys = pack_keys(pack, VOTE_KEY_BITS)
    q = query_sets()["real0"]
    for groups in ([len(q) - 1], [len(q), 1], [], [len(q) + 1, -1], [0] * 16 + [len(q)]):
        with pytest.raises(ValueError, match="sizes of row sets that add up to the"):
            hashed_close(q, pack, keys, VOTE_KEY_BITS, 50, groups=groups)


def test_hashed_votes_refuse_a_catalog_key_wider_than_the_keys(level):
    pack = DescriptorPack(list(descriptor_sets().values()))
    keys = pack_keys(pack, VOTE_KEY_BITS)
    keys[-1, 2] |= 1 << 14  # the last descriptor's third key: a 15th bit
    with pytest.raises(ValueError, match="a catalog key has more bits than the keys"):
        hashed_close(query_sets()["real0"], pack, keys, VOTE_KEY_BITS, 50)


def test_hashed_votes_refuse_keys_that_do_not_fit():
    pack = DescriptorPack(list(descriptor_sets().values()))
    q = query_sets()["real0"]
    keys = pack_keys(pack, VOTE_KEY_BITS)
    with pytest.raises(ValueError, match="pack_keys of the pack"):
        hashed_close(q, pack, keys[:-1], VOTE_KEY_BITS, 50)
    with pytest.raises(ValueError, match="vote_keys of the query"):
        hashed_close(q, pack, keys, VOTE_KEY_BITS, 50, query_keys=vote_keys(q[:-1], VOTE_KEY_BITS))
    with pytest.raises(ValueError, match="1-8 tables of 1-16 bits"):
        hashed_close(q, pack, keys, np.zeros((9, 4), np.int32), 50)
    with pytest.raises(ValueError, match="0-255"):
        vote_keys(q, np.array([[256]]))


def test_match_two_is_cross_check_and_nearest_two_in_one_pass(level):
    sets = descriptor_sets()
    pack = DescriptorPack(list(sets.values()))
    expected = brute_force()
    for name, q in query_sets().items():
        counts, idx, d1, d2 = match_two(q, pack)
        assert counts.tolist() == opencv_counts()[name], name
        if not len(q):
            continue
        for j, cname in enumerate(sets):
            for part, a, b in zip(("idx", "d1", "d2"), (idx[j], d1[j], d2[j]), expected[f"{name}/{j}"], strict=True):
                assert a.tolist() == b.tolist(), (name, cname, part)


def test_ssim_matches_scikit_image(level):
    expected = reference_ssim()
    stack = np.stack(grays())
    for i, q in enumerate(grays()[::4]):
        assert np.abs(ssim_scores(q, stack) - expected[i]).max() <= 1e-5
        assert ssim_scores(q, q[None])[0] == pytest.approx(1.0, abs=1e-6)
    # two queries in one pass (the query and its mirror image): the same numbers, bit for bit
    first, other = grays()[0], np.ascontiguousarray(grays()[4][:, ::-1])
    pair = ssim_pair(first, other, stack)
    assert np.array_equal(pair[0], ssim_scores(first, stack)) and np.array_equal(pair[1], ssim_scores(other, stack))


def test_dot_max_is_the_better_correlation(level):
    rows, a, b = thumbnails()
    got = dot_max(rows, a, b)
    wide = from_bfloat16(rows).astype(np.float64)
    assert got.dtype == np.float32 and got.shape == (len(rows),)
    assert np.allclose(got, np.maximum(wide @ a, wide @ b), atol=1e-6)
    assert got[7] == pytest.approx(1.0, abs=1e-4)  # row 7 is the first query, rounded to bfloat16
    with pytest.raises(TypeError, match="bfloat16"):
        dot_max(wide.astype(np.float32), a, b)


def test_bfloat16_rounds_to_nearest_even_and_widens_exactly():
    halfway = np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 1 + 2**-8 + 2**-20], dtype=np.float32)
    assert from_bfloat16(to_bfloat16(halfway)).tolist() == [1.0, 1 + 2**-6, -1.0, 1 + 2**-7]
    rows, _, _ = thumbnails()
    wide = from_bfloat16(rows)
    assert np.array_equal(to_bfloat16(wide), rows)  # a round trip keeps every bit
    with pytest.raises(TypeError, match="from_bfloat16: bits must be bfloat16"):
        from_bfloat16(wide)  # float32, not its bits
    exact = np.random.default_rng(9).normal(size=(301, 1024)).astype(np.float32)
    exact /= np.linalg.norm(exact, axis=1, keepdims=True)
    assert np.all(np.abs(wide - exact) <= np.abs(exact) * 2**-8)  # half a unit in the 8th significant bit


@functools.cache
def region_inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int8 rows and windows (m = 4k + 3: the tail after the kernel's 4-window sweeps), with
    extreme values, a zero row and repeated windows (ties: the first wins), and scales."""
    rng = np.random.default_rng(11)
    rows = rng.integers(-127, 128, (37, 256), dtype=np.int8)
    rows[0], rows[1] = 127, 0
    windows = rng.integers(-127, 128, (23, 256), dtype=np.int8)
    windows[0], windows[5], windows[9] = -127, windows[2], windows[2]
    scale = rng.uniform(0.5, 2.0, len(windows)).astype(np.float32)
    scale[5] = scale[9] = scale[2]
    return rows, windows, scale


def test_region_max_is_the_best_exact_window(level):
    rows, windows, scale = region_inputs()
    best, which = region_max(rows, windows, scale)
    exact = (rows.astype(np.int64) @ windows.astype(np.int64).T).astype(np.float32) * scale
    assert best.dtype == np.float32 and np.array_equal(best, exact.max(axis=1))
    assert np.array_equal(which, exact.argmax(axis=1))  # the first of equal windows
    assert which[1] == 0 and best[1] == 0.0  # a zero row: every window ties at 0


@pytest.mark.parametrize("d", [17, 254, 258])
def test_region_max_at_other_row_lengths(level, d):
    """Rows and windows of other lengths than the 16x16 thumbnails: odd (the generic loop) and even
    lengths that are not a multiple of any vector's."""
    rng = np.random.default_rng(d)
    rows = rng.integers(-127, 128, (13, d), dtype=np.int8)
    windows = rng.integers(-127, 128, (9, d), dtype=np.int8)
    scale = rng.uniform(0.5, 2.0, len(windows)).astype(np.float32)
    best, which = region_max(rows, windows, scale)
    exact = (rows.astype(np.int64) @ windows.astype(np.int64).T).astype(np.float32) * scale
    assert np.array_equal(best, exact.max(axis=1)) and np.array_equal(which, exact.argmax(axis=1))


@pytest.mark.parametrize("d", [64, 256, 17])
def test_region_group_max_is_each_groups_best(level, d):
    """Each group's best window product, as region_max of its windows alone: groups of whole and
    partial vectors of sixteen windows, of one window, and rows of other lengths."""
    rng = np.random.default_rng(d)
    rows = rng.integers(-127, 128, (29, d), dtype=np.int8)
    rows[3] = 0
    windows = rng.integers(-127, 128, (50, d), dtype=np.int8)
    scale = rng.uniform(0.5, 2.0, len(windows)).astype(np.float32)
    ends = np.array([1, 17, 33, 40, 50])
    best = region_group_max(rows, windows, scale, ends)
    assert best.shape == (len(ends), len(rows)) and best.dtype == np.float32
    for g, (lo, hi) in enumerate(itertools.pairwise([0, *ends.tolist()])):
        exact = (rows.astype(np.int64) @ windows[lo:hi].astype(np.int64).T).astype(np.float32) * scale[lo:hi]
        assert np.array_equal(best[g], exact.max(axis=1)), g
        assert np.array_equal(best[g], region_max(rows, windows[lo:hi], scale[lo:hi])[0]), g


def test_region_group_max_refuses_groups_that_do_not_cover_the_windows():
    rows, windows, scale = region_inputs()
    for ends in ([], [5], [0, 23], [10, 9, 23], [23, 24]):
        with pytest.raises(ValueError, match="ends must rise"):
            region_group_max(rows, windows, scale, np.array(ends, dtype=np.int64))


def _template_scale(taps: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    out = []
    for t in np.split(taps.astype(np.int64), np.cumsum(sizes.astype(np.int64) ** 2)[:-1]):
        spread = t.size * (t * t).sum() - t.sum() ** 2
        out.append(1 / np.sqrt(spread) if spread > 0 else 0.0)
    return np.array(out, dtype=np.float32)


@functools.cache
def crop_inputs() -> tuple[np.ndarray, int, np.ndarray, np.ndarray, np.ndarray]:
    """Region thumbnails of real photos and random ones (n = 8k + 5: a short last group of lanes),
    one flat and one with a template cut out of it at a known place; templates of every size
    1..12 and extreme values, one repeated (ties: the first wins)."""
    rng = np.random.default_rng(12)
    photos = [cv2.resize(g, (16, 16), interpolation=cv2.INTER_AREA).astype(np.int16) - 128 for g in photo_grays()]
    rows = np.concatenate(
        [np.stack(photos).reshape(len(photos), 256), rng.integers(-127, 128, (37 - len(photos), 256))]
    ).astype(np.int8)
    rows[3] = 5  # flat: every window scores 0
    sizes = np.array([1, 2, 3, 5, 7, 7, 9, 11, 12, 12], dtype=np.int32)
    templates = [rng.integers(-127, 128, s * s) for s in sizes]
    templates[4] = rows[6].reshape(16, 16)[4:11, 2:9].reshape(-1)  # row 6 holds it at (x 2, y 4)
    templates[5] = templates[4][::-1].copy()
    templates[8] = np.full(144, 127)
    templates[8][::7] = -127
    templates[9] = templates[8]
    taps = np.concatenate(templates).astype(np.int16)
    return rows, 16, taps, sizes, _template_scale(taps, sizes)


def test_crop_max_is_opencvs_normalised_correlation_at_the_best_window(level):
    """The best of OpenCV's TM_CCOEFF_NORMED over every template and position (windows flatter
    than one code step in standard deviation count 0), and where it is."""
    rows, side, taps, sizes, scale = crop_inputs()
    best, which = crop_max(rows, side, taps, sizes, scale)
    assert best.dtype == np.float32 and which.shape == (len(rows),)
    starts = np.concatenate([[0], np.cumsum(sizes.astype(np.int64) ** 2)])
    for i, row in enumerate(rows):
        image = row.reshape(side, side).astype(np.float32)
        j, place = divmod(int(which[i]), side * side)
        y, x = divmod(place, side)
        s = int(sizes[j])
        window = image[y : y + s, x : x + s]
        assert window.shape == (s, s), (i, j, x, y)
        reference = -np.inf
        for k, size in enumerate(sizes.tolist()):
            t = taps[starts[k] : starts[k + 1]].reshape(size, size).astype(np.float32)
            scores = cv2.matchTemplate(image, t, cv2.TM_CCOEFF_NORMED)
            windows = np.lib.stride_tricks.sliding_window_view(image, (size, size))
            scores[windows.std(axis=(2, 3)) < 1.0] = 0.0
            scores[~np.isfinite(scores)] = 0.0
            reference = max(reference, float(scores.max()))
            if k == j:
                assert scores[y, x] == pytest.approx(best[i], abs=1e-4), (i, j)
        assert best[i] == pytest.approx(reference, abs=1e-4), i
    assert best[3] == 0.0 and which[3] == 0  # flat: the first window of the first template
    assert best[6] == pytest.approx(1.0, abs=1e-6) and which[6] == 4 * 256 + 4 * 16 + 2


def test_crop_max_refuses_templates_it_cannot_sum_exactly():
    rows, side, taps, sizes, scale = crop_inputs()
    if kernels._module is None:
        pytest.skip("C kernels not built")
    out, which = np.zeros(len(rows), np.float32), np.zeros(len(rows), np.int32)
    sums = np.zeros(len(sizes), np.int32)
    for bad_sizes in (np.array([13], np.int32), np.array([0], np.int32), np.array([17], np.int32)):
        bad_taps = np.zeros(int(bad_sizes[0]) ** 2, np.int16)
        with pytest.raises(ValueError, match="crop_max: expects"):
            kernels._module.crop_max(rows, side, bad_taps, bad_sizes, sums[:1], scale[:1], out, which)
    with pytest.raises(ValueError, match="crop_max: expects"):
        kernels._module.crop_max(rows, side, taps[:-1], sizes, sums, scale, out, which)


def test_more_descriptors_than_32_bit_keys_hold(level):
    """Over 65,535 descriptors on either side the kernels switch to 64-bit keys."""
    rng = np.random.default_rng(3)
    wide = rng.integers(0, 256, (70_003, 32), dtype=np.uint8)
    small = np.concatenate([wide[[5, 69_999, 65_536]], rng.integers(0, 256, (2, 32), dtype=np.uint8)])
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
    assert cross_check_counts(small, DescriptorPack([wide])).tolist() == [len(matcher.match(small, wide))]
    assert cross_check_counts(wide, DescriptorPack([small])).tolist() == [len(matcher.match(wide, small))]
    idx, d1, _d2 = nearest_two(small, DescriptorPack([wide]).words(0))
    assert idx[:3].tolist() == [5, 69_999, 65_536] and d1[:3].tolist() == [0, 0, 0]


def synthetic_outputs() -> bytes:
    """Every kernel's output on inputs made without any decoder (so the same bytes on every
    machine): random and patterned grays, random descriptors, random unit-norm rows."""
    rng = np.random.default_rng(2024)
    ramp = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    gs = np.stack([rng.integers(0, 256, (256, 256), dtype=np.uint8) for _ in range(3)] + [ramp, ramp.T.copy()])
    sets = [rng.integers(0, 256, (n, 32), dtype=np.uint8) for n in (1, 7, 17, 100, 333)]
    sets += [np.repeat(sets[3][:5], 3, axis=0), ~sets[4][:40]]
    pack = DescriptorPack(sets)
    rows = rng.normal(size=(40, 1024)).astype(np.float32)
    parts = [ssim_scores(g, gs) for g in gs] + list(ssim_pair(gs[0], gs[3], gs))
    for q in sets:
        parts += [cross_check_counts(q, pack), count_close(q, pack, 100), *match_two(q, pack)]
        parts += [hashed_close(q, pack, pack_keys(pack, KEY_BITS["crowded"]), KEY_BITS["crowded"], 100)]
    parts.append(dot_max(to_bfloat16(rows), rows[3], rows[11]))
    codes = rng.integers(-127, 128, (50, 256), dtype=np.int8)
    parts += list(region_max(codes, codes[:13], rng.uniform(0.1, 1.0, 13).astype(np.float32)))
    coarse = codes[:, :64]
    parts.append(
        region_group_max(coarse, coarse[:40], rng.uniform(0.1, 1.0, 40).astype(np.float32), np.array([16, 35, 40]))
    )
    grouped = np.concatenate([sets[3], sets[4]])
    parts.append(hashed_close(grouped, pack, pack_keys(pack, VOTE_KEY_BITS), VOTE_KEY_BITS, 60, groups=[100, 0, 333]))
    sizes = np.array([3, 7, 9, 12], dtype=np.int32)
    taps = np.concatenate([codes[20 + i, : s * s] for i, s in enumerate(sizes.tolist())]).astype(np.int16)
    parts += list(crop_max(codes, 16, taps, sizes, _template_scale(taps, sizes)))
    return b"".join(np.ascontiguousarray(p).tobytes() for p in parts)


# sha256 of synthetic_outputs(), recorded on x86_64; `make arm64-test` checks it on aarch64
SYNTHETIC_SHA256 = "0725eb156732a093c8f182fd7b80ca45e986ed7b6557d6468d9926a1514fc5ea"


def test_outputs_are_the_same_bytes_on_every_machine(level):
    """Bit-identical across architectures too: no FMA contraction, fixed summation orders."""
    import hashlib

    assert hashlib.sha256(synthetic_outputs()).hexdigest() == SYNTHETIC_SHA256


# ------------------------------------------------------------------ levels against each other


@pytest.mark.parametrize("other", ALL_LEVELS[1:] or ["none"])
def test_every_level_is_bit_identical_to_the_fastest(other):
    """C levels are bit-identical in every output (SSIM, dot_max, region_max and crop_max included); numpy equals them
    exactly too except SSIM, within 1e-6 (it is computed in another order)."""
    if other == "none":
        pytest.skip("one level only")
    ref, got = outputs_at(ALL_LEVELS[0]), outputs_at(other)
    assert ref.keys() == got.keys()
    for key in ref:
        if other == "numpy" and key.startswith("ssim"):
            assert np.abs(ref[key] - got[key]).max() <= 1e-6, key
        else:
            assert np.array_equal(ref[key], got[key]) and ref[key].dtype == got[key].dtype, key


def test_levels_and_switching():
    assert kernels.levels()[-1] == "numpy"
    if not COMPILED:
        pytest.skip("C kernels not built")
    module = kernels._module
    assert module is not None
    assert tuple(module.levels) == tuple(COMPILED) and "portable" in COMPILED
    assert f"c-{module.kernel}" == kernels.IMPLEMENTATION
    for lv in ALL_LEVELS:
        with kernels.using(lv) as impl:
            assert impl == kernels.IMPLEMENTATION == ("numpy" if lv == "numpy" else f"c-{lv}")
    with pytest.raises(ValueError, match="is not a kernel level"):
        kernels.use("bogus")
    before = kernels.use("auto")
    try:
        assert module.kernel == COMPILED[0]
    finally:
        kernels.use(before)


# ------------------------------------------------------------------ HARMONY_KERNEL at import


def _import_with(value: str | None, *, package: bool = False) -> subprocess.CompletedProcess[str]:
    """Import the extension (or, with ``package``, harmony_image.kernels) in a child Python with
    HARMONY_KERNEL set to ``value``. The extension alone needs no numpy: quick under emulation."""
    env = {k: v for k, v in os.environ.items() if k != "HARMONY_KERNEL"}
    if value is not None:
        env["HARMONY_KERNEL"] = value
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    assert kernels._module is not None
    if package:
        code = "from harmony_image import kernels; print(kernels.IMPLEMENTATION, *kernels.levels())"
    else:
        code = (
            "import importlib.util as u; s = u.spec_from_file_location('harmony_image._kernels', "
            f"{kernels._module.__file__!r}); m = u.module_from_spec(s); s.loader.exec_module(m); "
            "print('c-' + m.kernel, *m.levels, 'numpy')"
        )
    return subprocess.run([*CHILD_PYTHON, "-c", code], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.skipif(not COMPILED, reason="C kernels not built")
def test_harmony_kernel_chooses_or_forces_a_level():
    for value, expected in ((None, COMPILED[0]), ("", COMPILED[0]), ("auto", COMPILED[0]), ("portable", "portable")):
        res = _import_with(value)
        assert res.returncode == 0, res.stderr[-2000:]
        assert res.stdout.split() == [f"c-{expected}", *COMPILED, "numpy"], (value, res.stdout)


@pytest.mark.skipif(not COMPILED, reason="C kernels not built")
def test_harmony_kernel_refuses_unknown_and_unsupported_levels():
    for value in ("bogus", "AVX2"):
        res = _import_with(value)
        assert res.returncode != 0
        assert f"RuntimeError: HARMONY_KERNEL={value} is not a kernel level" in res.stderr
        assert "supported here: " + ", ".join(COMPILED) in res.stderr
    known = {"x86_64": ["avx512", "avx2", "popcnt", "portable"], "aarch64": ["neon", "portable"]}
    missing = [lv for lv in known.get(os.uname().machine, []) if lv not in COMPILED]
    for value in missing:
        res = _import_with(value)
        assert f"RuntimeError: HARMONY_KERNEL={value}: this CPU does not support that kernel level" in res.stderr


@pytest.mark.skipif(not COMPILED, reason="C kernels not built")
@pytest.mark.skipif("KERNEL_TEST_PYTHON" in os.environ, reason="numpy + OpenCV imports take minutes emulated")
def test_a_bad_harmony_kernel_is_not_hidden_by_the_numpy_fallback():
    """RuntimeError, not ImportError: kernels.py turns an ImportError into a silent numpy fallback."""
    res = _import_with("bogus", package=True)
    assert res.returncode != 0 and "RuntimeError: HARMONY_KERNEL=bogus is not a kernel level" in res.stderr
    res = _import_with("portable", package=True)
    assert res.returncode == 0 and res.stdout.split() == ["c-portable", *COMPILED, "numpy"], res.stderr[-2000:]
