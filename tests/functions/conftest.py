"""Shared AWS fixtures (tests/aws_fixtures.py)."""

from tests.aws_fixtures import *  # noqa: F401,F403
