"""Build the optional compiled kernels (nprnn.functional._native).

The extension is optional: where it cannot be built (no C compiler, another compiler that
refuses GCC's flags), setuptools warns and the install goes on; nprnn then runs its NumPy
kernels (``nprnn.backend()`` says which).  Everything else is in pyproject.toml.
"""
import sys

from setuptools import Extension, setup

if sys.platform == "win32":
    flags = ["/O2", "/fp:fast"]
else:
    # -ffast-math lets GCC vectorise exp and tanh through glibc's libmvec; NaN and inf keep
    # their meaning (-fno-finite-math-only).  Compile flags only: at link time GCC 12 would
    # add crtfastmath.o, which turns denormals off for the whole process.
    flags = ["-O3", "-ffast-math", "-fno-finite-math-only", "-fno-math-errno", "-std=c11"]

setup(
    ext_modules=[
        Extension(
            "nprnn.functional._native",
            sources=["src/nprnn/functional/_native.c"],
            depends=["src/nprnn/functional/_native_kernels.h", "src/nprnn/functional/_native_isas.h"],
            extra_compile_args=flags,
            libraries=[] if sys.platform == "win32" else ["m"],  # libm brings libmvec where it exists
            optional=True,
        )
    ]
)
