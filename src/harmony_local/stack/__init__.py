"""The local stack: the SAM template's Lambda handlers behind a real HTTP server (API Gateway
REST proxy events), an embedded S3 (moto's server) whose uploads fire the template's
S3-triggered functions, and the web page — without containers.

* :mod:`.template` — the one reader of template.yaml (functions, layers, routes, triggers);
* :mod:`.lambdas` — the one way to run a handler like Lambda (worker processes, LambdaContext);
* :mod:`.apigw` — HTTP request <-> API Gateway proxy event / response;
* :mod:`.server` — :class:`~.server.LocalStack`: S3, triggers and the HTTP front;
* :mod:`.cli` — ``python -m harmony_local``.

Import the submodules: this package imports nothing, so ``harmony --help`` needs neither
PyYAML, boto3 nor moto.
"""
