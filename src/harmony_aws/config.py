"""Settings of the Lambda functions, from environment variables (set in template.yaml).

Every variable the code reads is listed in :data:`ENV_VARS`; :meth:`Settings.from_env` refuses an
unknown ``HARMONY_*`` variable, so a misspelt name in the template fails at cold start instead of
being silently ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from harmony_image import DEFAULT_MAX_PIXELS, DEFAULT_SCORING, HarmonyError, Scoring, SearchParams
from harmony_image.params import DEFAULT_K, check_scoring

from .errors import ConfigError

MAX_SHARDS = 1024

ENV_VARS: dict[str, str] = {
    "HARMONY_BUCKET": "the catalog bucket (SearchFunction; IndexFunction's reindex; S3 events name their own)",
    "HARMONY_INDEX_TTL_SECONDS": "how long a warm SearchFunction trusts its in-memory index (default 10)",
    "HARMONY_PRESIGN_SECONDS": "lifetime of presigned result URLs (default 900)",
    "HARMONY_MAX_PIXELS": "largest image accepted, in pixels (default 40000000)",
    "HARMONY_MAX_IMAGE_BYTES": "largest image fetched from a URL or S3, in bytes (default 20 MiB)",
    "HARMONY_FETCH_TIMEOUT_SECONDS": "timeout of a URL query (default 10)",
    "HARMONY_DEFAULT_SCORING": "scoring when the request names none: default|seed (default: default)",
    "HARMONY_ALLOW_PRIVATE_URLS": "tests only: allow URL queries to private addresses (default off)",
    "HARMONY_DUPLICATES_QUEUE_URL": "SearchFunction: the SQS queue POST /duplicates sends its slices to",
    "HARMONY_REINDEX_QUEUE_URL": (
        "IndexFunction: the SQS queue a planned reindex or compaction sends its items to (unset: in one call)"
    ),
    "HARMONY_SHARDS": "shards the catalog is compacted into (IndexFunction's compaction) or searched in (default 1)",
    "HARMONY_SHARD": "ShardFunction: the shard it serves, as i/n (e.g. 0/4)",
    "HARMONY_SHARD_FUNCTIONS": (
        "SearchFunction: ShardFunction names, shard 0 first, comma-separated; or one name with {shard},"
        " for shards 0 to HARMONY_SHARDS - 1 (unset: none)"
    ),
}


def _num(env: Mapping[str, str], name: str, default: float, *, lo: float, hi: float) -> float:
    raw = env.get(name, "")
    if raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={raw!r} must be between {lo:g} and {hi:g}")
    return value


@dataclass(frozen=True)
class Settings:
    bucket: str | None = None
    index_ttl: float = 10.0
    presign_seconds: int = 900
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_image_bytes: int = 20 * 1024 * 1024
    fetch_timeout: float = 10.0
    default_scoring: Scoring = DEFAULT_SCORING
    duplicates_queue_url: str | None = None
    reindex_queue_url: str | None = None
    shards: int = 1
    shard: tuple[int, int] | None = None
    shard_functions: tuple[str, ...] = ()

    def search_params(
        self, k: int = DEFAULT_K, scoring: Scoring | None = None, min_score: float | None = None
    ) -> SearchParams:
        """The request's parameters, with this deployment's default scoring when it names none."""
        return SearchParams(k=k, scoring=scoring or self.default_scoring, min_score=min_score)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, require_bucket: bool = False) -> Settings:
        env = os.environ if env is None else env
        unknown = sorted(k for k in env if k.startswith("HARMONY_") and k not in ENV_VARS)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(ENV_VARS))}")
        bucket = env.get("HARMONY_BUCKET", "").strip() or None
        if require_bucket and not bucket:
            raise ConfigError("HARMONY_BUCKET is not set: the function does not know its bucket")
        try:
            scoring = check_scoring(env.get("HARMONY_DEFAULT_SCORING", "").strip() or DEFAULT_SCORING)
        except HarmonyError as exc:
            raise ConfigError(f"HARMONY_DEFAULT_SCORING: {exc.message}") from None
        shards = int(_num(env, "HARMONY_SHARDS", 1, lo=1, hi=MAX_SHARDS))
        return cls(
            bucket=bucket,
            index_ttl=_num(env, "HARMONY_INDEX_TTL_SECONDS", 10.0, lo=0, hi=86400),
            presign_seconds=int(_num(env, "HARMONY_PRESIGN_SECONDS", 900, lo=1, hi=604800)),
            max_pixels=int(_num(env, "HARMONY_MAX_PIXELS", DEFAULT_MAX_PIXELS, lo=1, hi=1e9)),
            max_image_bytes=int(_num(env, "HARMONY_MAX_IMAGE_BYTES", 20 * 1024 * 1024, lo=1, hi=2**31)),
            fetch_timeout=_num(env, "HARMONY_FETCH_TIMEOUT_SECONDS", 10.0, lo=0.1, hi=300),
            default_scoring=scoring,
            duplicates_queue_url=env.get("HARMONY_DUPLICATES_QUEUE_URL", "").strip() or None,
            reindex_queue_url=env.get("HARMONY_REINDEX_QUEUE_URL", "").strip() or None,
            shards=shards,
            shard=_shard(env.get("HARMONY_SHARD", "")),
            shard_functions=_shard_functions(env.get("HARMONY_SHARD_FUNCTIONS", ""), shards, "HARMONY_SHARDS" in env),
        )


def _shard_functions(raw: str, shards: int, shards_set: bool) -> tuple[str, ...]:
    """The ShardFunctions' names, shard 0 first: a comma-separated list, or one name with
    ``{shard}`` standing for 0 to ``shards`` - 1 (what template.yaml gives: <stack>-shard-{shard})."""
    names = tuple(f.strip() for f in raw.split(",") if f.strip())
    if any("{shard}" in n for n in names):
        if len(names) != 1:
            raise ConfigError(f"HARMONY_SHARD_FUNCTIONS={raw!r}: a name with {{shard}} stands alone")
        if shards < 2:
            raise ConfigError(f"HARMONY_SHARD_FUNCTIONS={raw!r} needs HARMONY_SHARDS, the number of shards (2 or more)")
        return tuple(names[0].replace("{shard}", str(i)) for i in range(shards))
    if names and shards_set and len(names) != shards:
        raise ConfigError(f"HARMONY_SHARD_FUNCTIONS names {len(names)} functions, HARMONY_SHARDS says {shards} shards")
    return names


def _shard(raw: str) -> tuple[int, int] | None:
    """``"i/n"`` -> ``(i, n)``; empty -> None."""
    if not raw.strip():
        return None
    i, _, n = raw.partition("/")
    try:
        shard = (int(i), int(n))
    except ValueError:
        raise ConfigError(f"HARMONY_SHARD={raw!r} must be i/n, e.g. 0/4") from None
    if not 0 <= shard[0] < shard[1] <= MAX_SHARDS:
        raise ConfigError(f"HARMONY_SHARD={raw!r}: need 0 <= i < n <= {MAX_SHARDS}")
    return shard
