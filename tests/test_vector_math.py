"""The compiled kernels' own exp, tanh and sigmoid (no libm call is left in the extension),
against NumPy's in extended precision on a dense sweep, on every instruction set variant
this CPU runs: the error bounds the README states, and special values as PyTorch has them.

Measured on x86-64 (an AVX-512 machine; the baseline variant has no FMA), the largest error
in units in the last place of the correctly rounded result (baseline / AVX2 and AVX-512):

| function | float32 | float64 |
|---|---|---|
| exp | 0.96 / 1.00 | 1.14 / 0.87 |
| tanh | 1.43 / 1.33 | 5.81 / 4.81 |
| sigmoid | 2.46 / 2.46 | 2.30 / 2.36 |
"""
import numpy as np
import pytest

from nprnn.functional import native

pytestmark = pytest.mark.skipif(native._native is None, reason="the compiled kernels are not built")

BOUND = {"exp": (1.5, 1.5), "tanh": (2.0, 6.0), "sigmoid": (3.0, 3.0)}  # ulps: float32, float64
WHICH = {"exp": 0, "tanh": 1, "sigmoid": 2}
EXTENDED = np.finfo(np.longdouble).eps < np.finfo(np.float64).eps  # x86's 80-bit long double


def _variants():
    return list(native._native.widths()) if native._native is not None else []


@pytest.fixture(params=_variants())
def variant(request):
    native._native.set_isa(request.param)
    yield request.param
    native._native.set_isa("best")


def _apply(name, x):
    a = np.array(x, copy=True)
    native._native.apply(WHICH[name], a)
    return a


def _reference(name, x):
    xl = x.astype(np.longdouble)
    with np.errstate(over="ignore"):
        return {"exp": np.exp(xl), "tanh": np.tanh(xl), "sigmoid": 1 / (1 + np.exp(-xl))}[name]


def test_each_variant_is_compiled_for_its_instruction_set():
    """FN(width) is built from an expression that compiles only under the variant's target
    attribute, and returns the vector width it computed with."""
    widths = native._native.widths()
    assert widths["baseline"] == 16
    assert widths.get("avx2", 32) == 32 and widths.get("avx512", 64) == 64
    assert native.isa() in widths


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["exp", "tanh", "sigmoid"])
def test_error_bound_on_a_dense_sweep(variant, name, dtype):
    if dtype == np.float64 and not EXTENDED:
        pytest.skip("long double is double here: no reference finer than float64")
    fi = np.finfo(dtype)
    lim = 90.0 if dtype == np.float32 else 710.0  # past both overflow edges
    tiny = np.geomspace(fi.smallest_subnormal, 1, 100_001)  # denormal inputs up to 1
    x = np.concatenate([np.linspace(-lim, lim, 400_001), tiny, -tiny]).astype(dtype)
    got, want = _apply(name, x), _reference(name, x)
    with np.errstate(over="ignore"):
        rounded = np.abs(want.astype(dtype))
    finite = np.isfinite(rounded)
    ulps = np.abs(got.astype(np.longdouble) - want)[finite] / np.spacing(rounded[finite]).astype(np.longdouble)
    bound = BOUND[name][dtype == np.float64]
    worst = int(np.argmax(ulps))
    where = x[finite][worst]
    assert ulps[worst] <= bound, f"{name} {dtype.__name__} on {variant}: {float(ulps[worst]):.2f} ulp at {where!r}"
    with np.errstate(over="ignore"):
        assert np.array_equal(got[~finite], want[~finite].astype(dtype))  # overflow: inf, as NumPy


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_special_values_as_pytorch(variant, dtype):
    fi = np.finfo(dtype)
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, fi.max, -fi.max, fi.smallest_subnormal,
                  -fi.smallest_subnormal, 1e3, -1e3], dtype)
    for name, want in [("exp", [1, 1, np.inf, 0, np.nan, np.inf, 0, 1, 1, np.inf, 0]),
                       ("tanh", [0.0, -0.0, 1, -1, np.nan, 1, -1, fi.smallest_subnormal,
                                 -fi.smallest_subnormal, 1, -1]),
                       ("sigmoid", [0.5, 0.5, 1, 0, np.nan, 1, 0, 0.5, 0.5, 1, 0])]:
        got = _apply(name, x)
        np.testing.assert_array_equal(got, np.array(want, dtype), err_msg=f"{name} on {variant}")
        assert np.array_equal(np.signbit(got[:2]), np.signbit(np.array(want[:2], dtype))), name  # tanh(-0) = -0
    # the smallest results are denormals, not flushed to zero
    edge = np.array([np.log(fi.smallest_subnormal) + 0.5, -100.0 if dtype == np.float32 else -740.0], dtype)
    np.testing.assert_array_equal(_apply("exp", edge) > 0, [True, True])
    np.testing.assert_array_equal(_apply("sigmoid", edge) > 0, [True, True])


def test_apply_refuses_what_it_cannot_take():
    with pytest.raises(ValueError, match="which in 0..2"):
        native._native.apply(3, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="float32/float64"):
        native._native.apply(0, np.zeros(4, np.int32))


def test_the_built_variants_hold_their_instructions():
    """The disassembled extension: the AVX-512 variant's functions use zmm registers, the
    AVX2 variant's ymm and no zmm, the baseline's neither (a compiler that ignored the
    target attributes would leave all three alike: clang did, under `#pragma GCC target`)."""
    import platform
    import re
    import shutil
    import subprocess

    objdump = shutil.which("objdump")
    if objdump is None or platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("objdump and an x86-64 build are needed")
    text = subprocess.run([objdump, "-d", "--no-show-raw-insn", native._native.__file__], capture_output=True,
                          text=True, check=True).stdout
    counts: dict = {}
    variant = None
    for line in text.splitlines():
        head = re.match(r"^[0-9a-f]+ <([\w.]+)>:$", line)  # (a compiler's clones: name.constprop.0, name.part.0)
        if head:
            found = re.search(r"_(avx512|avx2|base)$", head.group(1).split(".")[0])
            variant = found.group(1) if found else None
            continue
        if variant:
            c = counts.setdefault(variant, {"zmm": 0, "ymm": 0})
            for reg in ("zmm", "ymm"):
                c[reg] += reg in line
    if not counts:
        pytest.skip("the extension carries no function names (stripped)")
    assert counts["avx512"]["zmm"] > 1000, counts
    assert counts["avx2"]["ymm"] > 1000 and counts["avx2"]["zmm"] == 0, counts
    assert counts["base"]["ymm"] == counts["base"]["zmm"] == 0, counts


def test_the_extension_calls_no_libm():
    """No exp/tanh/libmvec symbol is left undefined in the built extension: nothing ties it to
    a C library's version (the wheel's manylinux tag is checked by .ci/other-cpus)."""
    import platform
    import re
    import shutil
    import subprocess

    nm = shutil.which("nm")
    if nm is None or platform.system() != "Linux":
        pytest.skip("nm on Linux is needed")
    undefined = subprocess.run([nm, "-D", "--undefined-only", native._native.__file__], capture_output=True,
                               text=True, check=True).stdout.split()
    names = {u.split("@")[0] for u in undefined}
    libm = {n for n in names if re.fullmatch(r"(exp|tanh|log|pow|sqrt|expm1|log1p)f?|_ZGV\w+", n)}
    assert not libm, libm
    assert "memcpy" in names or "malloc" in names  # the listing is real: C library calls are there
