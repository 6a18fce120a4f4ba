"""The duplicate report: groups of catalog images that are the same image or a copy of one.

Every catalog entry is queried against the whole index with ``default`` scoring, its stored
features being the query. Each catalog image it finds scoring at least ``min_score`` (by default
:data:`~harmony_image.scoring.SAME_IMAGE_THRESHOLD`: "the same image or an edited copy") is an
*edge* (:class:`Edge`: query -> found, with the score); entries with identical content (same
sha256) find each other with 1.0. Edges become undirected *pairs*: by default only images that
find each other (``mutual``; the scores are asymmetric: each direction verifies the query's
keypoints), with ``mutual=False`` any image found in either direction. Pairs are merged into
groups — connected components (union-find), so a crop and a resize of one photo meet through the
photo — and each group gets a keeper chosen by a rule.

Why mutual by default: one false pair joins two whole groups, and one-way matches are where the
false pairs are. On the benchmark's planted copies (docs/BENCHMARKS.md, "Duplicate report") pairs
found either way put 537 of 10,000 images into wrong groups (group-pair precision 0.51, recall
0.97); mutual pairs 6 (precision 0.999, recall 0.92: some heavy crops and light changes of one
photo form a group of their own).

The work splits so that it can be fanned out:

* :func:`find_edges` queries the entries of a *slice* of the catalog (a list of keys; all of
  them by default) and returns their edges — independent per slice;
* :func:`duplicate_groups` turns edges from any number of slices into groups with keepers and
  scores; the edges of slices that cover the catalog give exactly the whole catalog's report.

:func:`find_duplicates` does both over the whole index.

Queries from stored features: a catalog record keeps everything default scoring reads except the
512 px detail image, which a query uses only to featurise its mirror image at detail resolution.
So the mirror view of a stored entry is verified at 256 px only: a mirrored copy that is also a
heavy crop can be missed. ``query_features`` lets a caller that has the images supply full query
features (``extract_features(data)``) instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from .errors import InvalidParameterError
from .features import ImageFeatures
from .index import SearchIndex, SearchResult
from .packed import CatalogEntry
from .params import MAX_K, SearchParams, check_min_score
from .scoring import SAME_IMAGE_THRESHOLD

KeepRule = Literal["largest", "oldest", "shortest"]
KEEP_RULES: tuple[str, ...] = get_args(KeepRule)
"""Which member of a group to keep: ``largest`` pixel count, ``oldest`` timestamp, ``shortest`` key."""

QUERY_K = 12
"""Results asked of each query. Default scoring's shortlist is its minimum up to k = 12
(:func:`~harmony_image.scoring.shortlist_size`), so 12 costs what 5 costs; a query whose 12
results all reach ``min_score`` is asked again with :data:`~harmony_image.params.MAX_K`."""

Progress = Callable[[int, int], None]
"""``progress(done, total)``: entries of the slice queried so far, and how many there are."""


@dataclass(frozen=True)
class Edge:
    """A match: ``a``, searched with default scoring, found ``b`` with ``score`` (>= the
    threshold); 1.0 both ways between entries with identical content."""

    a: str
    b: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "score": self.score}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Edge:
        """The inverse of :meth:`to_dict` (edges cross process boundaries as JSON)."""
        return cls(str(data["a"]), str(data["b"]), float(data["score"]))


@dataclass(frozen=True)
class Pair:
    """Two catalog keys (``a < b``) found to be duplicates; ``score``: the higher of the two
    directions' scores, or with ``mutual`` the lower (the score both directions reach)."""

    a: str
    b: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "score": self.score}


@dataclass(frozen=True)
class Member:
    """A group member. ``score``: the member's default score as a copy of the keeper — the keeper's
    features queried against the group's members — 1.0 for the keeper and for identical content.
    A member joined to the group through another member (not to the keeper) can score below the
    threshold: a left and a right crop of one photo share no pixels."""

    key: str
    url: str
    score: float
    sha256: str
    width: int
    height: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "url": self.url,
            "score": self.score,
            "sha256": self.sha256,
            "width": self.width,
            "height": self.height,
        }


@dataclass(frozen=True)
class DuplicateGroup:
    """A group: the keeper's key, the members (keeper first, then by score), and the pairs that
    joined them (:func:`pairs_of`)."""

    keep: str
    members: tuple[Member, ...]
    pairs: tuple[Pair, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "keep": self.keep,
            "members": [m.to_dict() for m in self.members],
            "pairs": [p.to_dict() for p in self.pairs],
        }


@dataclass(frozen=True)
class DuplicateReport:
    """Every group of duplicates (largest first), the catalog size, and the seconds it took."""

    groups: tuple[DuplicateGroup, ...]
    images: int
    took_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"groups": [g.to_dict() for g in self.groups], "images": self.images, "took_s": self.took_s}


def check_keep(keep: str) -> KeepRule:
    if keep not in KEEP_RULES:
        raise InvalidParameterError(f"keep must be one of {', '.join(KEEP_RULES)}; got {keep!r}")
    return keep  # type: ignore[return-value]  # narrowed by the membership test


def _entry(index: SearchIndex, key: str) -> CatalogEntry:
    entry = index.get(key)
    if entry is None:
        raise InvalidParameterError(f"{key!r} is not in the index")
    return entry


def _features(index: SearchIndex, key: str) -> ImageFeatures:
    return _entry(index, key).features


def find_edges(
    index: SearchIndex,
    *,
    keys: Sequence[str] | None = None,
    min_score: float = SAME_IMAGE_THRESHOLD,
    query_features: Callable[[str], ImageFeatures] | None = None,
    progress: Progress | None = None,
) -> list[Edge]:
    """The edges of the entries ``keys`` (all of the index's if None) in the whole index.

    Parameters
    ----------
    index : SearchIndex
        The catalog. Every key of ``keys`` must be in it.
    keys : sequence of str, optional
        The slice to query. Each distinct content is queried once, by its first key in key order,
        and each of its other keys and that one find each other with 1.0; so slices that together
        cover the catalog produce every edge of the whole catalog exactly once.
    min_score : float
        Score in [0, 1] from which a found image is an edge; default
        :data:`~harmony_image.scoring.SAME_IMAGE_THRESHOLD`.
    query_features : callable, optional
        ``key -> ImageFeatures`` of the query for ``key``; default: the stored features (see the
        module docstring for what they lack).
    progress : callable, optional
        ``progress(done, total)`` after each entry of the slice.

    Returns
    -------
    list of Edge
        ``a`` the query, ``b`` what it found: in the order of ``keys``, each query's by descending
        score. A found image stands for its content: ``b`` is that content's first key.
    """
    checked = check_min_score(min_score)
    threshold = SAME_IMAGE_THRESHOLD if checked is None else checked
    todo = list(index.keys()) if keys is None else list(keys)
    # content -> its first key in the whole index: the one that queries and is found
    first_of: dict[str, str] = {}
    for key in sorted(index.keys()):
        first_of.setdefault(_features(index, key).sha256, key)
    edges: list[Edge] = []
    for done, key in enumerate(todo, 1):
        stored = _features(index, key)
        first = first_of[stored.sha256]
        if first != key:
            edges += [Edge(key, first, 1.0), Edge(first, key, 1.0)]
        else:
            query = query_features(key) if query_features is not None else stored
            edges += [
                Edge(key, first_of[r.sha256], r.score)
                for r in _copies(index, query, threshold)
                if r.sha256 != stored.sha256
            ]
        if progress is not None:
            progress(done, len(todo))
    return edges


def _copies(index: SearchIndex, query: ImageFeatures, min_score: float) -> list[SearchResult]:
    """The distinct catalog images scoring >= ``min_score`` for ``query``, best first. Distinct as
    the search counts them: entries sharing a content hash or a result URL count once."""
    k = QUERY_K
    while True:
        results = index.search(query, SearchParams(k=k, scoring="default", min_score=min_score))
        if len(results) < k or k >= MAX_K:
            return results
        k = MAX_K


def pairs_of(edges: Iterable[Edge], *, mutual: bool = True) -> list[Pair]:
    """Edges (from any number of slices) as undirected pairs, sorted by ``(a, b)``: with ``mutual``
    (the default) only pairs matched in both directions, with the lower score; otherwise every
    pair matched in either direction, with its higher score."""
    scores: dict[tuple[str, str], dict[bool, float]] = {}
    for e in edges:
        if e.a == e.b:
            raise ValueError(f"an edge joins two keys; got {e.a!r} twice")
        forward = e.a < e.b
        by_direction = scores.setdefault((e.a, e.b) if forward else (e.b, e.a), {})
        by_direction[forward] = max(e.score, by_direction.get(forward, 0.0))
    pairs = []
    for (a, b), by_direction in sorted(scores.items()):
        if not mutual:
            pairs.append(Pair(a, b, max(by_direction.values())))
        elif len(by_direction) == 2:
            pairs.append(Pair(a, b, min(by_direction.values())))
    return pairs


def connected_groups(pairs: Iterable[Pair | Edge]) -> list[list[str]]:
    """The connected components of ``pairs`` (union-find): each sorted, ordered by their first key."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    for p in pairs:
        ra, rb = root(p.a), root(p.b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[str, list[str]] = {}
    for x in parent:
        groups.setdefault(root(x), []).append(x)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: g[0])


def choose_keeper(
    index: SearchIndex,
    keys: Sequence[str],
    *,
    keep: KeepRule = "largest",
    timestamps: Mapping[str, float] | None = None,
) -> str:
    """The member of ``keys`` to keep.

    ``largest``: most pixels (width x height); ``oldest``: smallest ``timestamps[key]`` (any
    unit, e.g. a file's modification time in seconds; every key needs one); ``shortest``: fewest
    characters in the key. Ties go to the shorter key, then to the first in key order.
    """
    keep = check_keep(keep)
    if keep == "oldest":
        missing = [k for k in keys if timestamps is None or k not in timestamps]
        if missing:
            raise InvalidParameterError(f"keep='oldest' needs a timestamp for every key; none for {missing[0]!r}")
    ts = timestamps or {}

    def rank(key: str) -> tuple[float, int, str]:
        tie = (len(key), key)
        if keep == "largest":
            f = _features(index, key)
            return (-float(f.width * f.height), *tie)
        if keep == "oldest":
            return (float(ts[key]), *tie)
        return (0.0, *tie)

    return min(keys, key=rank)


def keeper_scores(index: SearchIndex, keeper: str, keys: Sequence[str]) -> dict[str, float]:
    """Each of ``keys``' default score as a copy of ``keeper``: the keeper's stored features
    queried against an index of these members only (every one verified, none shortlisted
    away); 1.0 for the keeper's own content."""
    query = _features(index, keeper)
    by_content: dict[str, list[str]] = {}
    for key in keys:
        by_content.setdefault(_features(index, key).sha256, []).append(key)
    others = [ks[0] for sha, ks in by_content.items() if sha != query.sha256]
    score_of = {query.sha256: 1.0}
    for start in range(0, len(others), MAX_K):
        chunk = SearchIndex()
        for key in others[start : start + MAX_K]:
            chunk.add(key, _features(index, key), url=key)
        for r in chunk.search(query, SearchParams(k=len(chunk), scoring="default")):
            score_of[r.sha256] = r.score
    return {key: score_of[_features(index, key).sha256] for key in keys}


def duplicate_groups(
    index: SearchIndex,
    edges: Iterable[Edge],
    *,
    mutual: bool = True,
    keep: KeepRule = "largest",
    timestamps: Mapping[str, float] | None = None,
) -> list[DuplicateGroup]:
    """Groups from the edges of one or more :func:`find_edges` slices (:func:`pairs_of`,
    then :func:`connected_groups`), largest group first (then by keeper key): each with its
    keeper (:func:`choose_keeper`), its members (keeper first, then by :func:`keeper_scores`
    descending) and the pairs that joined them."""
    keep = check_keep(keep)
    pairs = pairs_of(edges, mutual=mutual)
    groups: list[DuplicateGroup] = []
    pairs_in: dict[str, list[Pair]] = {}
    components = connected_groups(pairs)
    component_of = {key: g[0] for g in components for key in g}
    for p in pairs:
        pairs_in.setdefault(component_of[p.a], []).append(p)
    for keys in components:
        keeper = choose_keeper(index, keys, keep=keep, timestamps=timestamps)
        scores = keeper_scores(index, keeper, keys)
        members = []
        for key in sorted(keys, key=lambda k: (k != keeper, -scores[k], k)):
            entry = _entry(index, key)
            f = entry.features
            members.append(Member(key, entry.url, scores[key], f.sha256, f.width, f.height))
        groups.append(DuplicateGroup(keeper, tuple(members), tuple(pairs_in[keys[0]])))
    groups.sort(key=lambda g: (-len(g.members), g.keep))
    return groups


def find_duplicates(
    index: SearchIndex,
    *,
    min_score: float = SAME_IMAGE_THRESHOLD,
    mutual: bool = True,
    keep: KeepRule = "largest",
    timestamps: Mapping[str, float] | None = None,
    query_features: Callable[[str], ImageFeatures] | None = None,
    progress: Progress | None = None,
) -> DuplicateReport:
    """The whole catalog's duplicate report: :func:`find_edges` over every entry, then
    :func:`duplicate_groups`; ``took_s`` is the wall-clock seconds of both."""
    keep = check_keep(keep)
    started = time.perf_counter()
    edges = find_edges(index, min_score=min_score, query_features=query_features, progress=progress)
    groups = duplicate_groups(index, edges, mutual=mutual, keep=keep, timestamps=timestamps)
    return DuplicateReport(tuple(groups), len(index), round(time.perf_counter() - started, 3))
