"""The duplicate report: groups of catalog images that are the same image or a copy of one.

Every catalog entry is queried against the whole index with ``default`` scoring, its stored
features being the query. A pair scoring at least ``min_score`` (by default
:data:`~harmony_image.scoring.SAME_IMAGE_THRESHOLD`: "the same image or an edited copy") is an
*edge*; entries with identical content (same sha256) are joined by an edge of score 1.0. Edges
are merged into groups (connected components, so a crop and a resize of one photo meet through
the photo), and each group gets a keeper chosen by a rule.

The work splits in two so that it can be fanned out:

* :func:`find_edges` queries the entries of a *slice* of the catalog (a list of keys; all of them
  by default) and returns their edges — independent per slice;
* :func:`duplicate_groups` merges edges from any number of slices into groups with keepers and
  scores; merging the edges of slices that cover the catalog gives the whole catalog's report.

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
from .index import SearchIndex
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
    """Two catalog keys (``a < b``) whose default score reached the threshold; ``score`` is the
    higher of the two directions that were scored (1.0 for identical content)."""

    a: str
    b: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "score": self.score}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Edge:
        return edge(str(data["a"]), str(data["b"]), float(data["score"]))


def edge(a: str, b: str, score: float) -> Edge:
    """The edge between ``a`` and ``b`` in canonical order."""
    if a == b:
        raise ValueError(f"an edge joins two keys; got {a!r} twice")
    return Edge(a, b, score) if a < b else Edge(b, a, score)


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
    """A group: the keeper's key, the members (keeper first, then by score), and the edges that
    joined them (every pair found at or above the threshold, in either direction)."""

    keep: str
    members: tuple[Member, ...]
    pairs: tuple[Edge, ...]

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
    """The edges of the entries ``keys`` (all of the index's if None) to the whole index.

    Parameters
    ----------
    index : SearchIndex
        The catalog. Every key of ``keys`` must be in it.
    keys : sequence of str, optional
        The slice to query. Slices that together cover the catalog give, merged by
        :func:`duplicate_groups`, exactly the whole catalog's report: each distinct content is
        queried once, by its first key in key order, in whichever slice holds that key.
    min_score : float
        Score in [0, 1] from which a pair is an edge; default
        :data:`~harmony_image.scoring.SAME_IMAGE_THRESHOLD`.
    query_features : callable, optional
        ``key -> ImageFeatures`` of the query for ``key``; default: the stored features (see the
        module docstring for what they lack).
    progress : callable, optional
        ``progress(done, total)`` after each entry of the slice.

    Returns
    -------
    list of Edge
        Sorted by ``(a, b)``; an edge found in both directions appears once with the higher score.
    """
    checked = check_min_score(min_score)
    threshold = SAME_IMAGE_THRESHOLD if checked is None else checked
    todo = list(index.keys()) if keys is None else list(keys)
    # content -> its first key in the whole index: the one that queries and that identical
    # copies are joined to
    first_of: dict[str, str] = {}
    for key in sorted(index.keys()):
        first_of.setdefault(_features(index, key).sha256, key)
    found: dict[tuple[str, str], float] = {}

    def add(a: str, b: str, score: float) -> None:
        e = edge(a, b, score)
        found[(e.a, e.b)] = max(score, found.get((e.a, e.b), 0.0))

    for done, key in enumerate(todo, 1):
        stored = _features(index, key)
        first = first_of[stored.sha256]
        if first != key:
            add(first, key, 1.0)
        else:
            query = query_features(key) if query_features is not None else stored
            for result in _copies(index, query, threshold):
                if result[1] != stored.sha256:
                    add(key, result[0], result[2])
        if progress is not None:
            progress(done, len(todo))
    return [Edge(a, b, s) for (a, b), s in sorted(found.items())]


def _copies(index: SearchIndex, query: ImageFeatures, min_score: float) -> list[tuple[str, str, float]]:
    """(key, sha256, score) of the distinct catalog images scoring >= ``min_score`` for ``query``
    (the search keeps one key per content: the first in key order among equal scores)."""
    k = QUERY_K
    while True:
        results = index.search(query, SearchParams(k=k, scoring="default", min_score=min_score))
        if len(results) < k or k >= MAX_K:
            return [(r.key, r.sha256, r.score) for r in results]
        k = MAX_K


def merge_edges(edges: Iterable[Edge]) -> list[Edge]:
    """Edges from several slices as one list: each pair once, with its highest score, sorted."""
    best: dict[tuple[str, str], float] = {}
    for e in edges:
        best[(e.a, e.b)] = max(e.score, best.get((e.a, e.b), 0.0))
    return [Edge(a, b, s) for (a, b), s in sorted(best.items())]


def connected_groups(edges: Iterable[Edge]) -> list[list[str]]:
    """The connected components of ``edges`` (union-find): each sorted, ordered by their first key."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    for e in edges:
        ra, rb = root(e.a), root(e.b)
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
    keep: KeepRule = "largest",
    timestamps: Mapping[str, float] | None = None,
) -> list[DuplicateGroup]:
    """Groups from the edges of one or more :func:`find_edges` slices, largest group first (then
    by keeper key): each with its keeper (:func:`choose_keeper`), its members (keeper first, then
    by :func:`keeper_scores` descending) and the edges that joined them."""
    keep = check_keep(keep)
    merged = merge_edges(edges)
    groups: list[DuplicateGroup] = []
    pairs_of: dict[str, list[Edge]] = {}
    components = connected_groups(merged)
    component_of = {key: g[0] for g in components for key in g}
    for e in merged:
        pairs_of.setdefault(component_of[e.a], []).append(e)
    for keys in components:
        keeper = choose_keeper(index, keys, keep=keep, timestamps=timestamps)
        scores = keeper_scores(index, keeper, keys)
        members = []
        for key in sorted(keys, key=lambda k: (k != keeper, -scores[k], k)):
            entry = _entry(index, key)
            f = entry.features
            members.append(Member(key, entry.url, scores[key], f.sha256, f.width, f.height))
        groups.append(DuplicateGroup(keeper, tuple(members), tuple(pairs_of[keys[0]])))
    groups.sort(key=lambda g: (-len(g.members), g.keep))
    return groups


def find_duplicates(
    index: SearchIndex,
    *,
    min_score: float = SAME_IMAGE_THRESHOLD,
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
    groups = duplicate_groups(index, edges, keep=keep, timestamps=timestamps)
    return DuplicateReport(tuple(groups), len(index), round(time.perf_counter() - started, 3))
