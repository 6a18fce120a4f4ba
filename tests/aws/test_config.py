"""harmony_aws.config: the shard settings a deployment's environment gives the functions."""

from __future__ import annotations

import pytest

from harmony_aws.config import Settings
from harmony_aws.errors import ConfigError


def test_shard_functions_from_a_name_pattern_or_a_list():
    # template.yaml's form: one name with {shard}, as many shards as HARMONY_SHARDS
    env = {"HARMONY_SHARD_FUNCTIONS": "shop-shard-{shard}", "HARMONY_SHARDS": "12"}
    settings = Settings.from_env(env)
    assert settings.shard_functions == tuple(f"shop-shard-{i}" for i in range(12)) and settings.shards == 12
    # a list, shard 0 first, agreeing with HARMONY_SHARDS when that is set
    listed = Settings.from_env({"HARMONY_SHARD_FUNCTIONS": "a, b,c"})
    assert listed.shard_functions == ("a", "b", "c")
    assert Settings.from_env({"HARMONY_SHARD_FUNCTIONS": "a,b", "HARMONY_SHARDS": "2"}).shard_functions == ("a", "b")
    assert Settings.from_env({"HARMONY_SHARD_FUNCTIONS": "", "HARMONY_SHARDS": "1"}).shard_functions == ()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HARMONY_SHARD_FUNCTIONS": "s-{shard}"}, "needs HARMONY_SHARDS"),
        ({"HARMONY_SHARD_FUNCTIONS": "s-{shard}", "HARMONY_SHARDS": "1"}, "needs HARMONY_SHARDS"),
        ({"HARMONY_SHARD_FUNCTIONS": "s-{shard},t", "HARMONY_SHARDS": "2"}, "stands alone"),
        ({"HARMONY_SHARD_FUNCTIONS": "a,b,c", "HARMONY_SHARDS": "2"}, "names 3 functions, HARMONY_SHARDS says 2"),
        ({"HARMONY_SHARD_FUNCTIONS": "s-{shard}", "HARMONY_SHARDS": "5000"}, "between 1 and 1024"),
    ],
)
def test_shard_settings_that_disagree_are_refused_by_name(env, message):
    with pytest.raises(ConfigError, match=message) as err:
        Settings.from_env(env)
    assert "HARMONY_SHARD" in str(err.value)
