"""`nprnn explain`: every printed shape and count equals the real module's; every identity it
claims is re-checked here by computation; the JSON layout is stable; the pictures render."""
import itertools
import json

import numpy as np
import pytest

import nprnn
from nprnn.cli import main
from nprnn.explain import SCHEMA_VERSION, collect_states, explain

GRID = [dict(kind=k, num_layers=n, bidirectional=b, batch_first=bf, bias=bias, proj=p, unbatched=u)
        for k, n, b, bf, bias, p, u in itertools.product(["RNN", "LSTM", "GRU"], [1, 3], [False, True], [False, True],
                                                        [True, False], [0, 3], [False, True])
        if not (p and k != "LSTM")]


def build(c):
    kw = dict(num_layers=c["num_layers"], bidirectional=c["bidirectional"], batch_first=c["batch_first"],
              bias=c["bias"], seed=0)
    if c["proj"]:
        kw["proj_size"] = c["proj"]
    return getattr(nprnn, c["kind"])(5, 6, **kw)


@pytest.mark.parametrize("c", GRID[::3], ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_shapes_counts_and_identities_are_real(c):
    m = build(c)
    info = explain(m, batch=4, seq_len=3, unbatched=c["unbatched"])
    assert [p["name"] for p in info["parameters"]] == list(m.state_dict())
    for p in info["parameters"]:
        assert tuple(p["shape"]) == m.state_dict()[p["name"]].shape and p["count"] == m.state_dict()[p["name"]].size
    assert info["total_parameters"] == sum(v.size for v in m.parameters())
    sh = info["shapes"]
    x = np.random.default_rng(1).standard_normal(sh["input"]["shape"]).astype(np.float32)
    out, state = m.eval()(x)
    h_n = state[0] if c["kind"] == "LSTM" else state
    assert tuple(sh["output"]["shape"]) == out.shape and tuple(sh["h_n"]["shape"]) == h_n.shape
    assert tuple(sh["h_0"]["shape"]) == h_n.shape
    if c["kind"] == "LSTM":
        assert tuple(sh["c_n"]["shape"]) == state[1].shape == tuple(sh["c_0"]["shape"])
    for s in sh.values():
        assert len(s["dims"]) == len(s["shape"])
    assert all(claim["observed"] == claim["expected"] for claim in info["identities"])
    # the headline claims, recomputed here
    bf = c["batch_first"] and not c["unbatched"]
    last = out[:, -1] if bf else out[-1]
    first = out[:, 0] if bf else out[0]
    P = h_n.shape[-1]
    claims = {k["claim"]: k for k in info["identities"]}
    if c["bidirectional"]:
        assert np.array_equal(last[..., :P], h_n[-2]) and np.array_equal(first[..., P:], h_n[-1])
        assert not np.allclose(last[..., P:], h_n[-1])
        assert sum(k["expected"] is False for k in claims.values()) >= 1
    else:
        assert np.array_equal(last, h_n[-1])
        assert any(k["expected"] and "== h_n[-1]" in k["claim"] for k in claims.values())


def test_json_schema_is_stable(capsys):
    assert main(["explain", "gru", "--input-size", "3", "--hidden-size", "4", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["schema"] == SCHEMA_VERSION == 1
    assert list(info) == ["schema", "layer", "config", "parameters", "total_parameters", "shapes", "equations",
                          "identities", "execution"]  # execution: added later, as a key at the end
    assert set(info["parameters"][0]) == {"name", "shape", "count", "description"}
    assert set(info["shapes"]) == {"input", "h_0", "output", "h_n"}
    assert set(info["shapes"]["input"]) == {"shape", "dims"}
    assert set(info["identities"][0]) == {"claim", "expected", "observed", "why"}


def test_seed_acceptance_command(capsys):
    assert main(["explain", "lstm", "--input-size", "5", "--hidden-size", "10", "--num-layers", "2", "--batch-first",
                 "--batch", "4", "--seq-len", "3"]) == 0
    text = capsys.readouterr().out
    for line in ("input   (4, 3, 5)      (batch=4, seq_len=3, input_size=5)",
                 "output  (4, 3, 10)     (batch=4, seq_len=3, hidden_size=10)",
                 "h_n     (2, 4, 10)     (num_layers=2, batch=4, hidden_size=10)",
                 "c_n     (2, 4, 10)     (num_layers=2, batch=4, hidden_size=10)",
                 "OK   output[:, -1, :] == h_n[-1]: holds"):
        assert line in text
    assert "FAIL" not in text


def test_bidirectional_and_projection_explain_themselves(capsys):
    assert main(["explain", "lstm", "--input-size", "5", "--hidden-size", "10", "--bidirectional", "--proj-size",
                 "4"]) == 0
    text = capsys.readouterr().out
    assert "weight_ih_l0_reverse (40, 5)" in text and "weight_hr_l0 " in text
    assert "4 = proj_size, 10 = hidden_size" in text
    assert "output[-1, :, 4:] == h_n[-1]: does not hold" in text
    assert "output[0, :, 4:] == h_n[-1]: holds" in text
    assert "h_t = (o_t * tanh(c_t)) @ W_hr.T" in text
    assert main(["explain", "gru", "--input-size", "5", "--hidden-size", "10", "--proj-size", "4"]) == 2


@pytest.mark.parametrize("ext", ["png", "svg"])
@pytest.mark.parametrize("args", [["lstm", "--num-layers", "2"],
                                  ["gru", "--num-layers", "6", "--bidirectional", "--seq-len", "20"],
                                  ["rnn", "--seq-len", "1"]])
def test_diagram_renders(tmp_path, ext, args):
    out = tmp_path / f"d.{ext}"
    assert main(["explain", *args[:1], "--input-size", "3", "--hidden-size", "4", *args[1:], "--plot", str(out)]) == 0
    assert out.stat().st_size > 8000
    if ext == "png":
        import matplotlib.image

        img = matplotlib.image.imread(str(out))
        assert img.shape[0] >= 300 and img.shape[1] >= 600 and img[..., :3].std() > 0.05
    else:
        assert out.read_text().lstrip().startswith("<?xml") and "h_n[0]" in out.read_text()


def test_plot_states(tmp_path):
    out = tmp_path / "s.png"
    assert main(["plot-states", "gru", "--num-layers", "2", "--bidirectional", "--out", str(out)]) == 0
    import matplotlib.image

    assert matplotlib.image.imread(str(out)).shape[0] > 300


def test_collect_states_match_the_layer():
    m = nprnn.LSTM(3, 4, num_layers=2, bidirectional=True, dropout=0.5, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    st = collect_states(m, x)
    out, (h_n, c_n) = m.eval()(x)
    np.testing.assert_allclose(st[(1, 0)]["h"], out[..., :4], rtol=1e-6)
    np.testing.assert_allclose(st[(1, 1)]["h"], out[..., 4:], rtol=1e-6)
    np.testing.assert_allclose(st[(0, 1)]["c"][0], c_n[1], rtol=1e-6)
    np.testing.assert_allclose(st[(0, 0)]["c"][-1], c_n[0], rtol=1e-6)
    o = st[(0, 0)]["o"]
    np.testing.assert_allclose(st[(0, 0)]["h"], o * np.tanh(st[(0, 0)]["c"]), rtol=1e-5, atol=1e-6)
    assert set(st[(0, 0)]) == {"h", "c", "i", "f", "g", "o"}


def test_explain_says_how_each_layer_runs(config):
    """The compiled tier's plan for the batch and length asked about: the hidden units split
    over the threads for one sequence, the batch split for a large batch, one thread, or
    the NumPy tier."""
    from nprnn.functional import native
    from nprnn.teach.explain import execution

    m = nprnn.LSTM(64, 64, num_layers=2)
    config(backend="numpy")
    assert execution(m, 1, 100)[0].startswith("NumPy tier")
    if native._native is None:
        return
    config(backend="native", num_threads=2, max_unit_split_batch=8, min_unit_split_work=0)
    lines = execution(m, 1, 100)[:2]  # (a third line counts calls that found the threads busy, if any did)
    assert all("hidden units split into 2 parts" in line for line in lines)
    assert "input projection before the loop" in lines[0]
    config(min_split_work=0, max_unit_split_batch=0, min_inloop_batch=16)
    assert "batch split into" in execution(m, 32, 100)[0]
    assert "inside the loop" in execution(m, 32, 100)[0]
    config(num_threads=1)
    assert "on one thread" in execution(m, 1, 100)[0]
