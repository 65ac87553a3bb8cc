"""The regularizers' 0/1 masks (dropout between layers, recurrent dropout, zoneout,
weight_drop): ``stack.bernoulli`` draws one 64-bit key from the layer's generator and
compares SplitMix64's 32-bit words from it with round(p * 2**32).  The NumPy definition
(``splitmix_words``) against the published algorithm, the compiled kernel against the
definition bit for bit on every instruction set variant, and the masks' frequencies."""
import numpy as np
import pytest

from nprnn.functional import native, stack


def _splitmix64(state, n):
    """SplitMix64 as published (Steele, Lea and Flood 2014; Vigna's splitmix64.c), in Python integers."""
    out = []
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) % 2**64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
        out.append(z ^ (z >> 31))
    return out


def _outputs(words):
    return [int(words[2 * i]) | int(words[2 * i + 1]) << 32 for i in range(len(words) // 2)]


def test_the_words_are_splitmix64_low_half_first():
    # the reference implementation's outputs from state 1234567
    assert _outputs(stack.splitmix_words(6, 1234567)) == [6457827717110365317, 3203168211198807973,
                                                          9817491932198370423]
    for key in (0, 1, 2**63 + 12345, 2**64 - 1):
        assert _outputs(stack.splitmix_words(40, key)) == _splitmix64(key, 20)
    assert stack.splitmix_words(7, 99).tolist() == stack.splitmix_words(8, 99)[:7].tolist()
    assert stack.splitmix_words(0, 5).size == 0


def _variants():
    return list(native._native.widths()) if native._native is not None else []


@pytest.mark.skipif(native._native is None, reason="the compiled kernels are not built")
@pytest.mark.parametrize("variant", _variants())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_compiled_masks_equal_the_definition_bit_for_bit(variant, dtype):
    native._native.set_isa(variant)
    try:
        for n in (0, 1, 2, 3, 17, 1001, 4099):
            for key in (0, 7, 2**63 + 5, 2**64 - 1):
                for t in (0, 1, 2**31, 2**32 - 1, 2**32):
                    out = np.full(n, 7, dtype)
                    native._native.bernoulli(out, key, t)
                    want = (stack.splitmix_words(n, key) < t).astype(dtype)
                    np.testing.assert_array_equal(out, want, err_msg=f"{variant} n={n} key={key} t={t}")
    finally:
        native._native.set_isa("best")


@pytest.mark.skipif(native._native is None, reason="the compiled kernels are not built")
def test_the_compiled_masks_refuse_what_they_cannot_take():
    with pytest.raises(ValueError, match="float32 or float64"):
        native._native.bernoulli(np.zeros(4, np.int32), 1, 5)
    with pytest.raises(ValueError, match="at most 2\\*\\*32"):
        native._native.bernoulli(np.zeros(4, np.float32), 1, 2**32 + 1)
    with pytest.raises(OverflowError):
        native._native.bernoulli(np.zeros(4, np.float32), -1, 5)
    with pytest.raises(TypeError):
        native._native.bernoulli(np.zeros(4, np.float32), 1.5, 5)
    frozen = np.zeros(4, np.float32)
    frozen.flags.writeable = False
    with pytest.raises((ValueError, BufferError)):
        native._native.bernoulli(frozen, 1, 5)
    with pytest.raises((ValueError, BufferError)):
        native._native.bernoulli(np.zeros((4, 4), np.float32)[:, 0], 1, 5)


@pytest.mark.parametrize("p", [0.0, 1e-12, 0.1, 0.5, 0.97, 1 - 1e-12, 1.0])
def test_masks_have_probability_p_and_come_from_the_generator(p):
    n = 1_000_000
    m = stack.bernoulli((1000, 1000), p, np.random.default_rng(3), np.float32)
    assert m.shape == (1000, 1000) and m.dtype == np.float32
    assert set(np.unique(m)) <= {0.0, 1.0}
    assert abs(m.mean() - p) <= 5 * np.sqrt(p * (1 - p) / n) + 2.0**-32
    if 0 < p < 1:  # neighbours (the two halves of one output, and across outputs) are independent
        a = m.ravel().astype(np.float64) - p
        for lag in (1, 2, 3):
            assert abs(np.mean(a[:-lag] * a[lag:])) < 5 * p * (1 - p) / np.sqrt(n)
    rng = np.random.default_rng(11)
    first, second = stack.bernoulli((5000,), 0.5, rng, np.float64), stack.bernoulli((5000,), 0.5, rng, np.float64)
    assert not np.array_equal(first, second)  # each call draws a key of its own
    np.testing.assert_array_equal(first, stack.bernoulli((5000,), 0.5, np.random.default_rng(11), np.float64))
    rng = np.random.default_rng(11)
    stack.bernoulli((5000,), 0.5, rng, np.float64)
    assert rng.bit_generator.random_raw() == np.random.default_rng(11).bit_generator.random_raw(2)[1]


@pytest.mark.skipif(native._native is None, reason="the compiled kernels are not built")
def test_both_tiers_draw_the_same_masks():
    """The NumPy tier makes the words with NumPy, the compiled tier in C: the same masks, so
    a seeded training run is the same on either."""
    before = native.backend()
    got = {}
    try:
        for tier in ("numpy", "native"):
            native.set_backend(tier)
            got[tier] = [stack.bernoulli((31, 7), p, np.random.default_rng(5), dt)
                         for p in (0.25, 0.9) for dt in (np.float32, np.float64)]
    finally:
        native.set_backend(before)
    for a, b in zip(got["numpy"], got["native"]):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
