"""The two tiers: the compiled kernels against the NumPy ones (and PyTorch), their
instruction sets, the batch split, the prepared-weight cache, NaN and inf, and the
kernel's own refusal of buffers that do not fit.

Without the compiled kernels these tests skip, except where ``NPRNN_BACKEND=native`` is
set (CI): there the import of nprnn itself fails, so the native tier cannot go missing
silently.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from reference import CELLS, make_inputs, random_config, random_packed_config, run_layer, run_nprnn, tolerances

import nprnn
from nprnn import threads
from nprnn.functional import native
from nprnn.optim import SGD

needs_native = pytest.mark.skipif(native._native is None, reason="the compiled kernels are not built")


def _available_isas():
    if native._native is None:
        return []
    found = []
    for name in ("avx512", "avx2", "baseline"):
        try:
            native._native.set_isa(name)
            found.append(name)
        except ValueError:
            pass
    native._native.set_isa("best")
    return found


@pytest.fixture
def tier():
    """Restore the tier (and the instruction set) a test changes."""
    before = nprnn.backend()
    yield
    nprnn.set_backend(before)
    if native._native is not None:
        native._native.set_isa("best")


def _run_on(backend, cfg, case):
    nprnn.set_backend(backend)
    return run_nprnn(cfg, case)


def _assert_same(cfg, got, want):
    """At the tolerances of the PyTorch parity tests (tight in float64)."""
    for key, w in want.items():
        np.testing.assert_allclose(got[key], w, err_msg=key, **tolerances(cfg["dtype"]))


CONFIGS = [random_config(np.random.default_rng(7000 + i)) for i in range(60)]
CONFIGS += [random_packed_config(np.random.default_rng(8000 + i)) for i in range(60)]


@needs_native
@pytest.mark.parametrize("cfg", CONFIGS, ids=[f"{i}-{c['kind']}-{c.get('mode', 'padded')}" for i,
                                              c in enumerate(CONFIGS)])
def test_tiers_agree(cfg, tier):
    """Forward, backward and every parameter gradient: native == NumPy to rounding."""
    case = make_inputs(cfg)
    got = _run_on("native", cfg, case)
    want = _run_on("numpy", cfg, case)
    _assert_same(cfg, got, want)


ISA_CONFIGS = [c for c in CONFIGS if c["kind"] not in CELLS][:24]


@needs_native
@pytest.mark.parametrize("isa", _available_isas())
def test_every_instruction_set_matches_numpy(isa, tier):
    """Each compiled variant the CPU can run (the tests force the lesser ones)."""
    native._native.set_isa(isa)
    assert native.isa() == isa
    for cfg in ISA_CONFIGS:
        case = make_inputs(cfg)
        got = _run_on("native", cfg, case)
        want = _run_on("numpy", cfg, case)
        _assert_same(cfg, got, want)


@needs_native
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU", "LSTMP"])
def test_batch_split_is_bit_for_bit(config, kind, bidirectional, tier, monkeypatch):
    """Rows split across threads, and directions side by side, compute exactly what one
    call computes (a row's sums do not depend on its neighbours), forward and backward; the
    weight gradients, sums over every row that each row range makes of its own rows inside
    the loop, then added up, differ by their rounding only."""
    config(backend="native")
    rng = np.random.default_rng(3)
    kw = {"proj_size": 3} if kind == "LSTMP" else {}
    cls = getattr(nprnn, "LSTM" if kind == "LSTMP" else kind)
    m = cls(5, 7, num_layers=2, bidirectional=bidirectional, dtype=np.float64, seed=1, **kw)
    x = rng.standard_normal((9, 6, 5))
    lengths = [9, 7, 7, 4, 2, 1]
    D = 2 if bidirectional else 1
    g = rng.standard_normal((9, 6, D * (3 if kind == "LSTMP" else 7)))
    results = []
    before = dict(threads.activity)
    split_jobs = 0
    for n_threads, min_work in ((1, nprnn.config.settings.min_split_work), (2, 0), (4, 0)):
        # the split runs the projection inside the loop, so the one-thread run does too
        config(min_split_work=min_work, num_threads=n_threads, min_inloop_batch=0, max_unit_split_batch=0)
        team = threads.team(n_threads)
        jobs = 0 if team is None else team.stats()["runs"] + team.stats()["alone"]
        m.zero_grad()
        out, hn = m(x, lengths=lengths)
        gx, ghx = m.backward(g)
        if team is not None:
            split_jobs += team.stats()["runs"] + team.stats()["alone"] - jobs
        results.append(([out, gx, *(hn if isinstance(hn, tuple) else (hn,)),
                         *(ghx if isinstance(ghx, tuple) else (ghx,))], [v.copy() for v in m.grads.values()]))
    grew = {k: threads.activity[k] - before.get(k, 0) for k in ("splits", "side by side")}
    assert split_jobs >= 1  # the split did happen, on the team (with 4 threads, two for each direction)
    assert bool(grew["side by side"]) == bidirectional  # and the directions went side by side
    for exact, sums in results[1:]:
        for a, b in zip(results[0][0], exact):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(results[0][1], sums):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)


@needs_native
@pytest.mark.parametrize("where", [{"grad_block_rows": 1}, {"grad_block_rows": 7}, {"max_inloop_grad_bytes": 0}],
                         ids=["blocks of one step", "blocks of 7 rows", "after the loop"])
@pytest.mark.parametrize("threads_", [1, 2])
def test_weight_gradients_inside_or_after_the_loop(config, where, threads_, tier):
    """Backward's weight gradients, made inside the loop over blocks of steps (of one step;
    of a few, a block ending wherever its rows reach 7, in each row range of a split batch)
    or after it over every row: the NumPy tier's, for every kind, with biases and without,
    variable lengths, both directions, a projection, recurrent dropout and zoneout."""
    config(num_threads=threads_, min_split_work=0, **where)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((9, 6, 5))
    lengths = [9, 7, 7, 4, 2, 1]
    for kind, kw in [("RNN", {}), ("RNN", {"bias": False, "nonlinearity": "relu"}), ("LSTM", {}),
                     ("LSTM", {"proj_size": 3, "bias": False}), ("GRU", {}), ("GRU", {"bias": False}),
                     ("LayerNormLSTM", {}), ("LayerNormLSTM", {"proj_size": 3}), ("LayerNormGRU", {}),
                     ("LSTM", {"recurrent_dropout": 0.3, "zoneout": 0.2}), ("GRU", {"recurrent_dropout": 0.3})]:
        made = [getattr(nprnn, kind)(5, 7, num_layers=2, bidirectional=True, dtype=np.float64, seed=2, **kw)
                for _ in range(2)]
        g = rng.standard_normal((9, 6, 2 * made[0]._h_out))
        runs = []
        for backend, m in zip(("native", "numpy"), made):
            nprnn.set_backend(backend)
            runs.append(run_layer(m, x, lengths, g, True))
        for a, b in zip(*runs):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11, err_msg=f"{kind} {kw}")


@needs_native
def test_row_ranges_run_as_separate_calls_keep_their_own_sums(config, monkeypatch, tier):
    """A runner that splits the batch but has no team runs each row range as a call of its
    own: each adds its weight gradients into its own row of the sums (``rix``), and the
    result is the team's."""
    from nprnn.nn import recurrent

    class NoTeam(threads.ThreadedRunner):
        def team(self, parts):
            return None

    config(num_threads=2, min_split_work=0, backend="native")
    x = np.random.default_rng(0).standard_normal((6, 10, 5))
    for kind in ("LSTM", "GRU", "LayerNormLSTM"):
        grads = []
        for runner in (recurrent.THREADED, NoTeam()):
            monkeypatch.setattr(recurrent, "THREADED", runner)
            m = getattr(nprnn, kind)(5, 7, num_layers=2, dtype=np.float64, seed=1).train()
            out, _ = m(x)
            m.backward(np.ones_like(out))
            grads.append({k: v.copy() for k, v in m.grads.items()})
            monkeypatch.undo()
        for name in grads[0]:
            np.testing.assert_allclose(grads[1][name], grads[0][name], rtol=1e-13, atol=1e-13, err_msg=f"{kind} {name}")


# ----------------------------------------------------------------------------- the cache
def _fresh_like(m):
    """A module built anew with ``m``'s weights: nothing cached."""
    other = type(m)(m.input_size, m.hidden_size, num_layers=m.num_layers, dtype=m.dtype)
    other.load_state_dict(m.state_dict())
    return other.eval()


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_cache_follows_load_state_dict_optimizer_and_writable(kind):
    rng = np.random.default_rng(0)
    m = getattr(nprnn, kind)(4, 6, num_layers=2, dtype=np.float64, seed=0).eval()
    x = rng.standard_normal((5, 3, 4))
    before = m(x)[0]
    np.testing.assert_array_equal(m(x)[0], before)  # served from the cache
    # 1. load_state_dict
    sd = {k: v * 1.5 for k, v in m.state_dict().items()}
    m.load_state_dict(sd)
    after_load = m(x)[0]
    assert not np.allclose(after_load, before)
    np.testing.assert_array_equal(after_load, _fresh_like(m)(x)[0])
    # 2. an optimizer step
    m.train()
    out, _ = m(x)
    m.backward(np.ones_like(out))
    SGD(m, lr=0.1).step()
    m.eval()
    after_step = m(x)[0]
    assert not np.allclose(after_step, after_load)
    np.testing.assert_array_equal(after_step, _fresh_like(m)(x)[0])
    # 3. an in-place write, which must go through writable()
    with pytest.raises(ValueError, match=r"read-only.*load_state_dict\(\).*nprnn\.writable"):
        m.weight_hh_l1[0, 0] = 3.0
    with pytest.raises(ValueError, match="read-only"):
        m.weight_hh_l1 += 1
    with pytest.raises(ValueError, match="read-only"):
        np.add(m.weight_hh_l1, 1, out=m.weight_hh_l1)
    np.testing.assert_array_equal(m(x)[0], after_step)  # nothing changed
    with nprnn.writable(m):
        m.weight_hh_l1[0, 0] = 3.0
    after_write = m(x)[0]
    assert not np.allclose(after_write, after_step)
    np.testing.assert_array_equal(after_write, _fresh_like(m)(x)[0])
    assert not m.weight_hh_l1.flags.writeable
    # 4. assigning the attribute
    m.weight_ih_l0 = np.zeros_like(m.weight_ih_l0)
    np.testing.assert_array_equal(m(x)[0], _fresh_like(m)(x)[0])


def test_cells_cache_follows_changes():
    rng = np.random.default_rng(1)
    cell = nprnn.LSTMCell(3, 4, dtype=np.float64, seed=0).eval()
    x = rng.standard_normal((2, 3))
    h, c = cell(x)
    with nprnn.writable(cell):
        cell.bias_ih[:] = 1.0
    h2, _ = cell(x)
    other = nprnn.LSTMCell(3, 4, dtype=np.float64).eval()
    other.load_state_dict(cell.state_dict())
    np.testing.assert_array_equal(h2, other(x)[0])
    assert not np.allclose(h, h2)


def test_copies_and_pickles_are_read_only_and_prepare_again():
    import copy
    import pickle

    m = nprnn.GRU(3, 4, seed=0).eval()
    x = np.ones((2, 1, 3), np.float32)
    out = m(x)[0]
    assert m._prepared or nprnn.backend() == "numpy"
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert clone._prepared == {}
        assert not clone.weight_hh_l0.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            clone.weight_hh_l0[0] = 0
        np.testing.assert_array_equal(clone(x)[0], out)
    assert type(m.state_dict()["weight_hh_l0"]) is np.ndarray  # plain, writable copies
    assert m.state_dict()["weight_hh_l0"].flags.writeable


def test_writable_refuses_other_things():
    with pytest.raises(TypeError, match="writable\\(\\) takes modules and arrays, got str"):
        with nprnn.writable("lstm"):
            pass


# ------------------------------------------------------------------------------ NaN, inf
NAN_CASES = [(kind, where, val) for kind in ("RNN", "LSTM", "GRU") for where in ("x", "h0", "w_hh", "w_ih", "b")
             for val in (np.nan, np.inf, -np.inf)]


@pytest.mark.torch
@pytest.mark.parametrize("backend", ["native", "numpy"])
@pytest.mark.parametrize("kind,where,val", NAN_CASES, ids=[f"{k}-{w}-{v}" for k, w, v in NAN_CASES])
def test_nan_and_inf_propagate_as_in_torch(kind, where, val, backend, tier):
    """Outputs, states and every gradient: NaN exactly where PyTorch has NaN, the rest equal."""
    if backend == "native" and native._native is None:
        pytest.skip("the compiled kernels are not built")
    import torch

    nprnn.set_backend(backend)
    rng = np.random.default_rng(abs(hash((kind, where))) % 1000)
    for N in (1, 3):
        m = getattr(nprnn, kind)(3, 4, num_layers=2, dtype=np.float64, seed=1)
        t = getattr(torch.nn, kind)(3, 4, num_layers=2).double()
        x = rng.standard_normal((5, N, 3))
        h0 = rng.standard_normal((2, N, 4))
        sd = m.state_dict()
        if where == "x":
            x[2, 0, 1] = val
        elif where == "h0":
            h0[0, 0, 1] = val
        elif where == "w_hh":
            sd["weight_hh_l0"][1, 2] = val
        elif where == "w_ih":
            sd["weight_ih_l1"][0, 0] = val
        else:
            sd["bias_hh_l0"][0] = val
        m.load_state_dict(sd)
        t.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
        hx = (h0, np.zeros_like(h0)) if kind == "LSTM" else h0
        xt = torch.from_numpy(x).requires_grad_(True)
        thx = tuple(torch.from_numpy(a.copy()) for a in hx) if kind == "LSTM" else torch.from_numpy(hx.copy())
        out, hn = m(x, hx)
        tout, thn = t(xt, thx)
        g = rng.standard_normal(out.shape)
        gx, _ = m.backward(g)
        (tout * torch.from_numpy(g)).sum().backward()
        pairs = [(out, tout.detach().numpy()), (gx, xt.grad.numpy())]
        pairs += [(m.grads[k], p.grad.numpy()) for k, p in t.named_parameters()]
        for ours, theirs in pairs:
            assert np.array_equal(np.isnan(ours), np.isnan(theirs))
            np.testing.assert_allclose(np.nan_to_num(ours, posinf=1e300, neginf=-1e300),
                                       np.nan_to_num(theirs, posinf=1e300, neginf=-1e300), rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ the backend switches
def _python(code, **env):
    full = dict(os.environ, **env)
    full.pop("NPRNN_BACKEND", None)
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=120)


def test_backend_environment_variable():
    r = _python("import nprnn; print(nprnn.backend())", NPRNN_BACKEND="numpy")
    assert r.returncode == 0 and r.stdout.strip() == "numpy", r.stderr
    r = _python("import nprnn; print(nprnn.backend())")
    assert r.stdout.strip() == ("numpy" if native._native is None else "native"), r.stderr
    r = _python("import nprnn", NPRNN_BACKEND="fortran")
    assert r.returncode != 0 and "NPRNN_BACKEND must be 'numpy' or 'native', got 'fortran'" in r.stderr


def test_set_backend_validates(tier):
    with pytest.raises(ValueError, match="set_backend: expected 'native' or 'numpy', got 'gpu'"):
        nprnn.set_backend("gpu")
    nprnn.set_backend("numpy")
    assert nprnn.backend() == "numpy"


@needs_native
def test_kernel_refuses_buffers_that_do_not_fit():
    """A bug upstream gets a ValueError from the kernel, never a write out of bounds."""
    m = nprnn.LSTM(3, 4, seed=0)
    prep = native.prepare(m.kind, tuple(m._parameters[n] if n else None for n in m._layer_names[0]))
    sizes, offsets = native._layout([2, 2, 1])
    x = np.zeros((5, 3), np.float32)
    h, c = np.zeros((2, 4), np.float32), np.zeros((2, 4), np.float32)
    work = {"gates": np.zeros((2, 16), np.float32), "tc": np.zeros((2, 4), np.float32)}
    native._call(0, prep, 0, 0, (0, 2), sizes, offsets, x, np.zeros((5, 4), np.float32), h, c, work)
    with pytest.raises(ValueError, match="_native: out must have rows of 4 elements"):
        native._call(0, prep, 0, 0, (0, 2), sizes, offsets, x, np.zeros((4, 4), np.float32), h, c, work)
    with pytest.raises(ValueError, match="_native: x holds 12 elements, the loop needs 15"):
        native._call(0, prep, 0, 0, (0, 2), sizes, offsets, x[:4], np.zeros((5, 4), np.float32), h, c, work)
    with pytest.raises(ValueError, match="row range past the batch"):
        native._call(0, prep, 0, 0, (0, 3), sizes, offsets, x, np.zeros((5, 4), np.float32), h, c, work)
    with pytest.raises(ValueError, match="items of 8 bytes, expected 4"):
        native._call(0, prep, 0, 0, (0, 2), sizes, offsets, x.astype(np.float64), np.zeros((5, 4), np.float32), h,
                     c, work)
    bad_sizes, bad_offsets = native._layout([1, 2])
    with pytest.raises(ValueError, match="non-increasing"):
        native._call(0, prep, 0, 0, (0, 1), bad_sizes, bad_offsets, x[:3], np.zeros((3, 4), np.float32), h, c, work)


@pytest.mark.parametrize("backend", ["native", "numpy"])
@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_padding_past_lengths_is_never_read(kind, backend, tier):
    """With lengths=, what lies past each sequence's end may be anything, NaN included."""
    if backend == "native" and native._native is None:
        pytest.skip("the compiled kernels are not built")
    nprnn.set_backend(backend)
    rng = np.random.default_rng(5)
    m = getattr(nprnn, kind)(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    x = rng.standard_normal((6, 3, 3))
    lengths = [6, 2, 4]
    dirty = x.copy()
    for b, n in enumerate(lengths):
        dirty[n:, b] = np.nan
    out, hn = m(x, lengths=lengths)
    gx, _ = m.backward(np.ones_like(out))
    grads = {k: v.copy() for k, v in m.grads.items()}
    m.zero_grad()
    out2, hn2 = m(dirty, lengths=lengths)
    gx2, _ = m.backward(np.ones_like(out2))
    np.testing.assert_array_equal(out2, out)
    np.testing.assert_array_equal(gx2, gx)
    for a, b in zip(_flat(hn2), _flat(hn)):
        np.testing.assert_array_equal(a, b)
    for k, v in m.grads.items():
        np.testing.assert_array_equal(v, grads[k])


def _flat(state):
    return state if isinstance(state, tuple) else (state,)


def test_backend_info_says_why_the_fast_path_is_not_taken(monkeypatch):
    """``nprnn.backend_info()``: the backend, the variant, the compiler, and the reason
    whenever the compiled tier (or its best variant) is not used."""
    info = nprnn.backend_info()
    assert info["backend"] == nprnn.backend()
    if native._native is not None:
        assert info["isa"] == native.isa() and info["isa"] in info["variants"]
        assert info["compiler"].split()[0] in ("gcc", "clang", "msvc", "unknown")
        monkeypatch.setattr(native, "_enabled", False)
        monkeypatch.setattr(native, "_FORCED", "numpy")
        assert nprnn.backend_info()["reason"] == "NPRNN_BACKEND=numpy in the environment"
        monkeypatch.setattr(native, "_FORCED", "")
        assert nprnn.backend_info()["reason"] == "set_backend('numpy') was called"
        monkeypatch.setattr(native, "_enabled", True)
        if len(info["variants"]) > 1:
            native._native.set_isa("baseline")
            try:
                assert "set_isa" in nprnn.backend_info()["reason"]
            finally:
                native._native.set_isa("best")
    monkeypatch.setattr(native, "_native", None)
    monkeypatch.setattr(native, "_IMPORT_ERROR", None)  # (not built: nothing to load)
    assert "not built" in nprnn.backend_info()["reason"]
    monkeypatch.setattr(native, "_IMPORT_ERROR", "_native.so: undefined symbol: _ZGVeN16v_tanhf")
    assert nprnn.backend_info()["reason"] == "the compiled kernels do not load: _native.so: undefined symbol: " \
                                             "_ZGVeN16v_tanhf"


def _source_copy(tmp_path):
    """The package's source tree and build files, copied to ``tmp_path`` without any
    compiled extension."""
    import shutil

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy(os.path.join(root, name), tmp_path / name)
    shutil.copytree(os.path.join(root, "src"), tmp_path / "src",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "*.egg-info"))
    return tmp_path


def test_a_package_without_the_extension_says_not_built_and_does_not_warn(tmp_path):
    """Not built (no compiler at install time) is no load failure: no warning at import,
    and backend_info() says "not built" (it used to warn that the kernels "do not load")."""
    src = _source_copy(tmp_path) / "src"
    code = "import nprnn; print(nprnn.backend_info()['backend'], '|', nprnn.backend_info()['reason'])"
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(src), NPRNN_BACKEND=""), cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("numpy | the compiled kernels are not built"), done.stdout


@pytest.mark.slow
def test_a_build_without_a_compiler_leaves_no_stale_extension(tmp_path):
    """A clone built before, built again with CC=false: the old binary is not shipped (it
    used to be reused from build/ and reported as the compiled tier)."""
    import glob

    root = _source_copy(tmp_path)
    build = [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(root / "out")]
    first = subprocess.run(build, capture_output=True, text=True, cwd=root, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    if not glob.glob(str(root / "out" / "nprnn" / "functional" / "_native*")):
        pytest.skip("no C compiler here to build the first time")
    again = subprocess.run(build, capture_output=True, text=True, cwd=root, timeout=600,
                           env=dict(os.environ, CC="false"))
    assert again.returncode == 0, again.stderr[-2000:]  # (the extension is optional)
    assert not glob.glob(str(root / "out" / "nprnn" / "functional" / "_native*")), "a stale extension was kept"
