"""The optional C extension (tensorvcs/_native.c); everything else is in pyproject.toml.

``optional=True``: where no C compiler works the package installs without it, and
tensorvcs/accel.py uses numpy for the same loops (tests/test_native.py checks both paths
agree, and that an install with no compiler succeeds)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "tensorvcs._native",
            ["tensorvcs/_native.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
