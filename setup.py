"""Builds the optional C kernels; pyproject.toml holds everything else.

``optional=True``: without a C compiler the install still succeeds and the engine uses its
numpy implementation (same results, several times slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "harmony_image._kernels",
            sources=["src/harmony_image/_kernels.c"],
            # Python builds with -fwrapv, which keeps GCC from vectorising the int32 loops (2x slower);
            # no FMA contraction, so every CPU level computes the same floats (-std=c11 implies it);
            # sqrtf need not set errno, so it vectorises (no result changes).
            extra_compile_args=["-O3", "-std=c11", "-fno-wrapv", "-ffp-contract=off", "-fno-math-errno"],
            optional=True,
        )
    ]
)
