"""Live parity with PyTorch on seeded random configurations (skipped without PyTorch)."""
import numpy as np
import pytest
from reference import compare, make_inputs, random_config, random_packed_config, run_nprnn, run_torch

pytestmark = pytest.mark.torch

N_CONFIGS = 320
CONFIGS = [random_config(np.random.default_rng(1000 + i)) for i in range(N_CONFIGS)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=[f"{i}-{c['kind']}" for i, c in enumerate(CONFIGS)])
def test_random_config_matches_torch(cfg):
    case = make_inputs(cfg)
    compare(cfg, run_nprnn(cfg, case), run_torch(cfg, case))


def test_configs_cover_every_option():
    kinds = {c["kind"] for c in CONFIGS}
    assert kinds == {"RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"}
    layers = [c for c in CONFIGS if "num_layers" in c]
    assert {c["num_layers"] for c in layers} == {1, 2, 3}
    for key in ("batch_first", "bidirectional", "bias", "give_hx"):
        assert {c[key] for c in layers} == {True, False}, key
    assert any(c.get("proj_size") for c in CONFIGS)
    assert any(c["batch"] is None for c in CONFIGS)
    assert {c["dtype"] for c in CONFIGS} == {"float32", "float64"}
    assert {c.get("nonlinearity") for c in CONFIGS} >= {"tanh", "relu"}


PACKED = [random_packed_config(np.random.default_rng(5000 + i)) for i in range(240)]


@pytest.mark.parametrize("cfg", PACKED, ids=[f"{i}-{c['kind']}-{c['mode']}" for i, c in enumerate(PACKED)])
def test_random_packed_config_matches_torch(cfg):
    case = make_inputs(cfg)
    compare(cfg, run_nprnn(cfg, case), run_torch(cfg, case))


def test_packed_configs_cover_every_option():
    assert {c["kind"] for c in PACKED} == {"RNN", "LSTM", "GRU"}
    for key in ("batch_first", "bidirectional", "enforce_sorted", "give_hx"):
        assert {c[key] for c in PACKED} == {True, False}, key
    assert {c["mode"] for c in PACKED} == {"packed", "lengths"}
    assert any(c["batch"] == 1 for c in PACKED)
    assert any(len(set(c["lengths"])) == 1 and c["batch"] > 1 for c in PACKED)
    assert any(1 in c["lengths"] and c["seq_len"] > 1 for c in PACKED)
