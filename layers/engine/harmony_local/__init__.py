"""Harmony-Image's local stack: the SAM template's Lambda handlers behind a real HTTP server
(API Gateway REST proxy events), an embedded S3 (moto's server) whose catalog/ and queries/
uploads fire the template's S3-triggered functions, and the web page — without containers.

    python -m harmony_local serve            # start, seed the sample catalog, stay up
    python -m harmony_local demo             # ... and print the top 5 for a sample query

Imports are lazy: ``harmony --help`` must not need PyYAML, boto3 or moto.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LocalStack", "StackConfig", "Template", "TemplateError", "load_template"]


def __getattr__(name: str) -> Any:
    if name in ("LocalStack", "StackConfig"):
        from . import stack

        return getattr(stack, name)
    if name in ("Template", "TemplateError", "load_template"):
        from . import template

        return getattr(template, name)
    raise AttributeError(name)
