"""A handler whose module takes 1.5 s to import, like one that loads numpy and OpenCV."""

import time

time.sleep(1.5)


def handler(event, context):
    return {"statusCode": 200, "headers": {"Content-Type": "text/plain"}, "body": "hello"}
