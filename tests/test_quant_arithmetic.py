"""The quantized arithmetic's oracle (nprnn.functional.quant, issue 25) against the
references it follows: onnxruntime's DynamicQuantizeLinear (row by row) and MatMulInteger
for int8, PyTorch's bfloat16 rounding for bf16; and its error against float32."""
import numpy as np
import pytest

from nprnn.functional import quant


def _rows(rng, rows=16, cols=33):
    x = rng.standard_normal((rows, cols)).astype(np.float32) * rng.uniform(0.01, 10, (rows, 1)).astype(np.float32)
    x[0] = np.abs(x[0])  # all positive: the range is extended to 0
    x[1] = -np.abs(x[1])  # all negative
    x[2] = 0  # all zero: scale 1
    if cols >= 5:
        x[3, :5] = [0.5, 1.5, 2.5, -0.5, -1.5]  # ties
    return x


def _ort_session(graph):
    ort = pytest.importorskip("onnxruntime")
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_activation_rows_quantize_as_onnxruntimes_dynamic_quantize_linear():
    pytest.importorskip("onnx")
    from onnx import TensorProto as T
    from onnx import helper

    sess = _ort_session(helper.make_graph(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"])], "g",
        [helper.make_tensor_value_info("x", T.FLOAT, None)],
        [helper.make_tensor_value_info(n, t, None) for n, t in (("q", T.UINT8), ("s", T.FLOAT), ("z", T.UINT8))]))
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = _rows(rng)
        q, scale, zero = quant.quantize_rows_uint8(x)
        for r in range(x.shape[0]):
            want_q, want_s, want_z = sess.run(None, {"x": x[r]})
            np.testing.assert_array_equal(q[r], want_q, err_msg=f"row {r}")
            assert scale[r] == want_s and zero[r] == want_z, (r, scale[r], want_s, zero[r], want_z)


def test_integer_sums_equal_onnxruntimes_matmul_integer():
    pytest.importorskip("onnx")
    from onnx import TensorProto as T
    from onnx import helper

    sess = _ort_session(helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b", "za"], ["y"])], "g",
        [helper.make_tensor_value_info("a", T.UINT8, None), helper.make_tensor_value_info("b", T.INT8, None),
         helper.make_tensor_value_info("za", T.UINT8, None)],
        [helper.make_tensor_value_info("y", T.INT32, None)]))
    rng = np.random.default_rng(1)
    for k in (1, 7, 64, 1000):
        x, w = _rows(rng, 8, k), rng.standard_normal((12, k)).astype(np.float32)
        qx, _, zero = quant.quantize_rows_uint8(x)
        qw, _, sums = quant.quantize_weights_int8(w)
        got = quant.int8_sums(qx, zero, qw, sums)
        for r in range(qx.shape[0]):  # (onnxruntime takes one zero point for A: row by row)
            want = sess.run(None, {"a": qx[r:r + 1], "b": np.ascontiguousarray(qw.T), "za": np.array(zero[r])})[0]
            np.testing.assert_array_equal(got[r:r + 1], want)


def test_weights_quantize_symmetrically_per_row():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((6, 50)).astype(np.float32)
    w[1] = 0
    q, scale, sums = quant.quantize_weights_int8(w)
    assert q.dtype == np.int8 and scale.dtype == np.float32 and sums.dtype == np.int32
    np.testing.assert_array_equal(np.abs(q).max(axis=1), [127, 0, 127, 127, 127, 127])  # the row's peak is 127
    assert scale[1] == 1
    np.testing.assert_allclose(q * scale[:, None], w, atol=float(scale.max()) / 2 + 1e-7)
    np.testing.assert_array_equal(sums, q.astype(np.int64).sum(axis=1))
    with pytest.raises(ValueError, match="NaN or infinity"):
        quant.quantize_weights_int8(np.array([[1.0, np.nan]]))


def test_bf16_rounding_equals_pytorchs():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal(10000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 10000),
                        np.array([0.0, -0.0, np.inf, -np.inf, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 3.3895314e38, 1e-40],
                                 np.float32)]).astype(np.float32)
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    got = quant.to_bf16_bits(x)
    np.testing.assert_array_equal(got, want)
    nan = quant.to_bf16_bits(np.array([np.nan], np.float32))
    assert np.isnan(quant.from_bf16_bits(nan))[0]
    np.testing.assert_array_equal(quant.from_bf16_bits(got)[np.isfinite(x)],
                                  torch.from_numpy(x).to(torch.bfloat16).float().numpy()[np.isfinite(x)])


@pytest.mark.parametrize("H", [256, 1024])
def test_quantized_products_stay_near_float32(H):
    """Errors of one product of a PyTorch-initialised weight (U(-1/sqrt(H), 1/sqrt(H)))
    and a unit-normal input, relative to the product's largest value: int8 under 1 %
    (0.60 % at H=256, 0.78 % at 1024 here), bf16 under 0.3 % (0.22 %, 0.21 %)."""
    rng = np.random.default_rng(4)
    w = rng.uniform(-1 / np.sqrt(H), 1 / np.sqrt(H), (4 * H, H)).astype(np.float32)
    x = rng.standard_normal((8, H)).astype(np.float32)
    exact = x.astype(np.float64) @ w.astype(np.float64).T
    qw, scale, sums = quant.quantize_weights_int8(w)
    int8 = quant.int8_linear(x, qw, scale, sums)
    bf16 = quant.bf16_linear(x, quant.to_bf16_bits(w))
    peak = np.abs(exact).max()
    err8, err16 = np.abs(int8 - exact).max() / peak, np.abs(bf16 - exact).max() / peak
    assert err8 < 1e-2, err8
    assert err16 < 3e-3, err16
