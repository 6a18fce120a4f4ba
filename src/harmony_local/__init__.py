"""Harmony-Image on your machine: the ``harmony`` command, a local folder as a catalog, the
importer, the bundled sample catalog, and the local stack (:mod:`harmony_local.stack`).

None of this ships to Lambda: the engine layer holds :mod:`harmony_image` and
:mod:`harmony_aws` only.
"""
