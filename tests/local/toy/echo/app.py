"""Toy handlers for the local stack's own tests (no numpy, so workers start fast)."""

import json
import os
import time


def echo(event, context):
    """Returns the API Gateway event it got, its environment and its context."""
    body = {
        "event": event,
        "env": {
            k: v
            for k, v in os.environ.items()
            if k.startswith(("HARMONY_", "TOY_", "AWS_LAMBDA", "_HANDLER", "AWS_ENDPOINT"))
        },
        "context": {
            "function_name": context.function_name,
            "remaining_ms": context.get_remaining_time_in_millis(),
            "memory": context.memory_limit_in_mb,
        },
        "cwd": os.getcwd(),
    }
    return {
        "statusCode": 201,
        "headers": {"Content-Type": "application/json", "X-Toy": "1"},
        "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"]},
        "body": json.dumps(body),
    }


def binary(event, context):
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "image/png"},
        "isBase64Encoded": True,
        "body": "iVBORw0KGgo=",
    }


def slow(event, context):
    time.sleep(5)
    return {"statusCode": 200, "body": "late"}


def boom(event, context):
    raise ValueError("boom")


def s3_recorder(event, context):
    """Writes each S3 event it gets to events/<n>.json in the bucket, so a test can read them."""
    import boto3

    s3 = boto3.client("s3")
    for rec in event["Records"]:
        s3.put_object(Bucket=os.environ["TOY_BUCKET"], Key=f"seen/{time.time_ns()}.json", Body=json.dumps(rec))
    return {"records": len(event["Records"])}
