"""Build the optional compiled kernels (nprnn.functional._native).

The extension is optional: where it cannot be built (no C compiler, another compiler that
refuses GCC's flags), setuptools warns and the install goes on; nprnn then runs its NumPy
kernels (``nprnn.backend()`` says which).  Everything else is in pyproject.toml.
"""
import sys

from setuptools import Extension, setup

if sys.platform == "win32":
    flags = ["/O2"]
else:
    # No -ffast-math: the kernels' exp reduces by ln 2 in two parts, which reassociation
    # would undo; -ffp-contract=fast fuses their multiply-adds (ISO C mode turns it off).
    flags = ["-O3", "-ffp-contract=fast", "-fno-math-errno", "-std=c11"]

setup(
    ext_modules=[
        Extension(
            "nprnn.functional._native",
            sources=["src/nprnn/functional/_native.c"],
            depends=["src/nprnn/functional/_native_kernels.h", "src/nprnn/functional/_native_isas.h"],
            extra_compile_args=flags,
            optional=True,
        )
    ]
)
