"""Builds the one native part, scanpixd.models._fhog (the HOG face scan).

Everything else is in pyproject.toml.  The extension is optional: where it does not
compile, the install goes on and faces are scanned by dlib (scanpixd.models.hog).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "scanpixd.models._fhog",
            sources=["scanpixd/models/_fhog.c"],
            depends=["scanpixd/models/_fhog_kernels.h"],
            # dlib's arithmetic is kept exactly (no fused multiply-adds) outside the filters;
            # Python's own -fwrapv stops the filter loops vectorising (1.9x slower scans)
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-wrapv"],
            optional=True,
        )
    ],
)
