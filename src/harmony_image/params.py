"""Search parameters: their limits, defined once, and the one place they are validated.

The Lambda handlers' request annotations, the CLI's argument types and the engine all read the
constants below; :class:`SearchParams` checks a set of values when it is built, so code that
holds one never checks again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from .errors import InvalidParameterError

Scoring = Literal["default", "seed"]
SCORINGS: tuple[str, ...] = get_args(Scoring)
"""``default`` (shortlist, verify, calibrate) and ``seed`` (the original method, exact)."""

DEFAULT_SCORING: Scoring = "default"
DEFAULT_K = 5
MAX_K = 50
"""Results per query: 1 to MAX_K distinct catalog images."""

MIN_SCORE = 0.0
MAX_SCORE = 1.0
"""Scores lie in [MIN_SCORE, MAX_SCORE]; ``min_score`` drops results below it."""


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InvalidParameterError(f"k must be a whole number between 1 and {MAX_K}; got {k!r}")
    return k


def check_scoring(scoring: str) -> Scoring:
    if scoring not in SCORINGS:
        raise InvalidParameterError(f"scoring must be one of {', '.join(SCORINGS)}; got {scoring!r}")
    return scoring  # type: ignore[return-value]  # narrowed by the membership test


def check_min_score(min_score: float | None) -> float | None:
    if min_score is None:
        return None
    if (
        isinstance(min_score, bool)
        or not isinstance(min_score, (int, float))
        or not MIN_SCORE <= min_score <= MAX_SCORE
    ):
        raise InvalidParameterError(f"min_score must be between {MIN_SCORE:g} and {MAX_SCORE:g}; got {min_score!r}")
    return float(min_score)


@dataclass(frozen=True)
class SearchParams:
    """What a search asks for; invalid values raise :class:`InvalidParameterError` (422).

    Parameters
    ----------
    k : int
        Number of results, 1 to :data:`MAX_K`. Catalog entries sharing a URL or a content hash
        count once, and duplicates are dropped before the cut.
    scoring : {"default", "seed"}
        ``seed`` is the original Harmony-Image score, computed exactly for every catalog image;
        ``default`` ranks better and is faster on large catalogs (docs/SCORING.md).
    min_score : float, optional
        Drop results scoring below this value (0 to 1).
    """

    k: int = DEFAULT_K
    scoring: Scoring = DEFAULT_SCORING
    min_score: float | None = None

    def __post_init__(self) -> None:
        check_k(self.k)
        check_scoring(self.scoring)
        object.__setattr__(self, "min_score", check_min_score(self.min_score))
