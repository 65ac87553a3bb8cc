"""Build the optional compiled kernels (nprnn.functional._native).

The extension is optional: where it cannot be built (no C compiler, or one without GCC's
vector extensions, such as MSVC's cl), setuptools warns and the install goes on; nprnn then
runs its NumPy kernels and ``nprnn.backend_info()`` says why.  The flags depend on the
compiler: GCC and clang (Linux, macOS, MinGW), clang-cl (the supported Windows compiler: it
takes the vector extensions and target attributes), MSVC's cl (tried, refused by the vector
extensions).  Everything else is in pyproject.toml.
"""
import os
import shutil

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# No -ffast-math: the kernels' exp reduces by ln 2 in two parts, which reassociation would
# undo; -ffp-contract=fast fuses their multiply-adds (ISO C mode turns fusing off).
GNU_FLAGS = ["-O3", "-ffp-contract=fast", "-fno-math-errno", "-std=c11"]


class BuildExt(build_ext):
    """Compile flags by compiler type, not by platform (MinGW's gcc on Windows takes GCC's)."""

    def build_extensions(self):
        kind = self.compiler.compiler_type
        if kind == "msvc":
            clang_cl = shutil.which("clang-cl")
            if clang_cl:  # cl refuses the vector extensions: clang-cl takes MSVC's options and GCC's C
                if not getattr(self.compiler, "initialized", True):
                    self.compiler.initialize()
                self.compiler.cc = clang_cl
            flags = ["/O2", "/std:c11"]
            if clang_cl:
                flags += ["/clang:-ffp-contract=fast", "/clang:-fno-math-errno"]
        else:  # unix (GCC, clang) and mingw32
            flags = list(GNU_FLAGS)
        for ext in self.extensions:
            ext.extra_compile_args = flags + list(ext.extra_compile_args or [])
        self.force = True  # every build compiles with this build's compiler (CC=false included)
        super().build_extensions()

    def build_extension(self, ext):
        """Never ship what an earlier build left: the old binary goes first, so a compiler
        that fails now leaves no extension (and the NumPy tier says why), not a stale one."""
        target = self.get_ext_fullpath(ext.name)
        if os.path.exists(target):
            os.remove(target)
        super().build_extension(ext)


setup(
    ext_modules=[
        Extension(
            "nprnn.functional._native",
            sources=["src/nprnn/functional/_native.c"],
            depends=["src/nprnn/functional/_native_kernels.h", "src/nprnn/functional/_native_isas.h",
                     "src/nprnn/functional/_native_quant.h", "src/nprnn/functional/_native_lscan.h",
                     "src/nprnn/functional/_native_core.h"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": BuildExt},
)
