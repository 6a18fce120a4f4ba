"""AWS adapters of Harmony-Image: S3 access, the index's write path (records) and read path
(a warm index), result URLs, query sources and the search service that the Lambda handlers
(functions/*/app.py) call. The engine (:mod:`harmony_image`) has no AWS imports; everything
that talks to AWS lives here. Bucket layout: :mod:`harmony_aws.layout`.
"""
