"""The kernels without Python (tests/native/driver.c): built with this machine's C compiler,
it replays fixtures of real layer runs (tests/native/fixtures.py: every cell kind, the
layer-norm kinds in float64, both
directions, inference, training forward and backward, the projection in and before the
loop, the units split into parts, float32 and float64; weight-gradient products; the gate
functions on a sweep) and matches the results the extension gave; a damaged fixture fails.
.ci/run builds the same driver for aarch64 and runs it under qemu, and runs this machine's
build as Nehalem (baseline variant) and Haswell (AVX2)."""
import os
import platform
import shutil
import subprocess
import sys

import pytest

from nprnn.functional import native

HERE = os.path.join(os.path.dirname(__file__), "native")
CC = next((c for c in (os.environ.get("CC"), "cc", "gcc", "clang") if c and shutil.which(c)), None)
pytestmark = [pytest.mark.skipif(native._native is None, reason="the compiled kernels are not built"),
              pytest.mark.skipif(CC is None or platform.system() == "Windows", reason="no C compiler here")]


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    exe = str(tmp_path_factory.mktemp("driver") / "driver")
    res = subprocess.run([CC, "-O2", "-std=c11", "-Wall", "-Werror", "-o", exe, os.path.join(HERE, "driver.c"), "-lm"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return exe


def _fixtures(path, *extra):
    res = subprocess.run([sys.executable, os.path.join(HERE, "fixtures.py"), str(path), *extra], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr


def test_the_driver_replays_every_kernel(driver, tmp_path):
    _fixtures(tmp_path / "fx.bin")
    res = subprocess.run([driver, str(tmp_path / "fx.bin")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    # 459 float loops (the layer-norm kinds' 81 in float64; 108 with recurrent dropout and zoneout) and 24
    # quantized ones (nprnn.quantize: int8 and bf16)
    assert f"{native.isa()} variant, 483 loops, 12 products," in res.stdout and ": ok" in res.stdout, res.stdout


def test_a_damaged_fixture_fails(driver, tmp_path):
    _fixtures(tmp_path / "bad.bin", "--damage")
    res = subprocess.run([driver, str(tmp_path / "bad.bin")], capture_output=True, text=True)
    assert res.returncode == 1 and "FAIL" in res.stdout, res.stdout + res.stderr
