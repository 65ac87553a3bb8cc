"""Weights files: PyTorch .pt state dicts read without PyTorch (and malicious pickles refused),
safetensors exchanged with PyTorch both ways, round trips through every format."""
import io
import os
import pickle
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import nprnn
from nprnn.serialization import load_into, read_tensors, save
from nprnn.torchfile import load_torch_state_dict

TORCH_DIR = os.path.join(os.path.dirname(__file__), "fixtures", "torch")


@pytest.mark.parametrize("name", ["lstm_bidirectional_proj", "gru_float64", "views", "half"])
def test_reads_torch_files(name):
    path = os.path.join(TORCH_DIR, f"{name}.pt")
    if name == "half":
        with pytest.warns(UserWarning, match="2 half-precision tensor"):
            got = load_torch_state_dict(path)
    else:
        got = load_torch_state_dict(path)
    with np.load(os.path.join(TORCH_DIR, f"{name}.expected.npz")) as want:
        assert sorted(got) == sorted(want.files)
        for k in want.files:
            assert got[k].dtype == want[k].dtype, k
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_torch_file_loads_into_module_and_runs_like_the_fixture():
    m = nprnn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2)
    load_into(m, os.path.join(TORCH_DIR, "lstm_bidirectional_proj.pt"))
    with np.load(os.path.join(TORCH_DIR, "lstm_bidirectional_proj.expected.npz")) as want:
        for k in want.files:
            np.testing.assert_array_equal(m.state_dict()[k], want[k])
    m64 = nprnn.GRU(5, 3, batch_first=True, dtype=np.float64)
    load_into(m64, os.path.join(TORCH_DIR, "gru_float64.pt"))
    with pytest.raises(RuntimeError,
                       match="dtype mismatch for weight_ih_l0: the file has float64, the model has float32"):
        load_into(nprnn.GRU(5, 3), os.path.join(TORCH_DIR, "gru_float64.pt"))


def test_reading_needs_no_torch():
    code = ("import sys, nprnn; from nprnn.serialization import load_into; "
            "m = nprnn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2); "
            f"load_into(m, {os.path.join(TORCH_DIR, 'lstm_bidirectional_proj.pt')!r}); "
            "assert 'torch' not in sys.modules, 'torch was imported'; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_whole_model_refused():
    with pytest.raises(ValueError,
                       match=r"holds a pickled torch\.nn\.modules\.rnn\.LSTM \(a whole model\), not a state "
                                         r"dict.*save model\.state_dict\(\) instead"):
        load_torch_state_dict(os.path.join(TORCH_DIR, "whole_model.pt"))


def _zip_with_pickle(tmp_path, payload: bytes, name="evil"):
    path = tmp_path / f"{name}.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/data.pkl", payload)
        z.writestr(f"{name}/byteorder", "little")
        z.writestr(f"{name}/version", "3")
    return path


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickles_are_refused_and_not_run(tmp_path):
    sentinel = tmp_path / "pwned"
    cases = {
        "system": pickle.dumps({"w": _Evil(sentinel)}, protocol=2),
        "eval": pickle.dumps({"w": _Reduce(eval, ("__import__('os').system('touch " + str(sentinel) + "')",))},
                             protocol=2),
        "import": pickle.dumps(_Reduce(__import__, ("os",)), protocol=2),
    }
    for name, payload in cases.items():
        path = _zip_with_pickle(tmp_path, payload, name)
        with pytest.raises(ValueError,
                           match=r"refusing to load (posix|os|nt|builtins|__builtin__)\.\w+.*nothing was executed"):
            load_torch_state_dict(path)
    assert not sentinel.exists()


class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def test_bad_archives(tmp_path):
    with open(os.path.join(TORCH_DIR, "gru_float64.pt"), "rb") as f:
        good = f.read()
    cases = {
        "truncated.pt": (good[: len(good) // 2], "not a PyTorch zip archive"),
        "legacy.pt": (pickle.dumps({"a": 1}), "not a PyTorch zip archive"),
        "empty.pt": (b"", "not a PyTorch zip archive"),
    }
    for name, (data, msg) in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(ValueError, match=msg):
            load_torch_state_dict(p)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x/other.txt", "hi")
    (tmp_path / "nopkl.pt").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="no <name>/data.pkl"):
        load_torch_state_dict(tmp_path / "nopkl.pt")
    p = _zip_with_pickle(tmp_path, pickle.dumps([1, 2, 3], protocol=2), "alist")
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        load_torch_state_dict(p)
    m = nprnn.GRU(5, 3, dtype=np.float64)
    before = m.state_dict()
    with pytest.raises(ValueError):
        load_into(m, tmp_path / "truncated.pt")
    for k, v in before.items():
        np.testing.assert_array_equal(v, m.state_dict()[k])


@pytest.mark.parametrize("ext", ["safetensors", "npz"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_keeps_dtype_and_names(tmp_path, ext, dtype):
    m = nprnn.GRU(3, 4, num_layers=2, bidirectional=True, dtype=dtype, seed=0)
    path = tmp_path / f"m.{ext}"
    save(m, path)
    t = read_tensors(path)
    assert sorted(t) == sorted(m.state_dict())
    assert all(v.dtype == dtype for v in t.values())
    m2 = nprnn.GRU(3, 4, num_layers=2, bidirectional=True, dtype=dtype, seed=1)
    load_into(m2, path)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, m2.state_dict()[k])
    with pytest.raises(ValueError, match="writing PyTorch .pt files needs PyTorch"):
        save(m, tmp_path / "m.pt")


@pytest.mark.torch
def test_safetensors_exchange_with_torch(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    m = nprnn.LSTM(3, 5, num_layers=2, proj_size=2, seed=0)
    save(m, tmp_path / "ours.safetensors")
    t = torch.nn.LSTM(3, 5, num_layers=2, proj_size=2)
    t.load_state_dict(load_file(str(tmp_path / "ours.safetensors")))
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(m.eval()(x)[0], t(torch.from_numpy(x))[0].detach().numpy(), rtol=1.3e-6, atol=1e-5)
    t2 = torch.nn.GRU(4, 6, bidirectional=True)
    save_file(t2.state_dict(), str(tmp_path / "theirs.safetensors"))
    m2 = nprnn.GRU(4, 6, bidirectional=True)
    load_into(m2, tmp_path / "theirs.safetensors")
    for k, v in t2.state_dict().items():
        np.testing.assert_array_equal(m2.state_dict()[k], v.numpy())


def test_convert_round_trips(tmp_path, capsys):
    pytest.importorskip("onnx")
    from nprnn.cli import main
    from nprnn.convert import infer_config

    src = os.path.join(TORCH_DIR, "gru_float64.pt")
    assert main(["convert", src, str(tmp_path / "a.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "weight_ih_l0                     (9, 5)" in out
    assert ("inferred: GRU(input_size=5, hidden_size=3, num_layers=1, bidirectional=False, bias=True, "
            "dtype=float64)") in out
    assert main(["convert", str(tmp_path / "a.safetensors"), str(tmp_path / "b.npz")]) == 0
    assert main(["convert", str(tmp_path / "b.npz"), str(tmp_path / "c.onnx")]) == 0
    assert main(["convert", str(tmp_path / "c.onnx"), str(tmp_path / "d.safetensors")]) == 0
    want = load_torch_state_dict(src)
    got = read_tensors(tmp_path / "d.safetensors")
    for k, v in want.items():
        np.testing.assert_array_equal(got[k], v)
    # a larger model: the recurrent layer is found by --prefix
    rnn = nprnn.RNN(2, 3, num_layers=2).state_dict()
    composite = {"embed.weight": np.zeros((5, 2), np.float32), **{f"rnn.{k}": v for k, v in rnn.items()},
                 "head.weight": np.zeros((4, 3), np.float32)}
    assert infer_config(composite)["prefix"] == "rnn."
    assert infer_config(composite)["num_layers"] == 2
    np.savez(tmp_path / "comp.npz", **composite)
    assert main(["convert", str(tmp_path / "comp.npz"), str(tmp_path / "rnn.onnx"), "--nonlinearity", "relu"]) == 0
    assert "model: embed: Embedding -> rnn: RNN -> head: Linear" in capsys.readouterr().out
    # the whole model went to ONNX, and comes back whole
    assert main(["convert", str(tmp_path / "rnn.onnx"), str(tmp_path / "back.npz")]) == 0
    with np.load(tmp_path / "back.npz") as back:
        assert sorted(f for f in back.files if f != "__metadata__") == sorted(composite)
        for k, v in composite.items():
            np.testing.assert_array_equal(back[k], v, err_msg=k)
    # --prefix takes one layer and says what it leaves
    assert main(["convert", str(tmp_path / "comp.npz"), str(tmp_path / "only.onnx"), "--prefix", "rnn."]) == 0
    assert "left out (not under --prefix 'rnn.'): embed.weight, head.weight" in capsys.readouterr().out
    # a nested layer's keys start with the prefix too: they are left out, and said so
    nested = {**composite, **{f"rnn.inner.{k}": v for k, v in rnn.items()}}
    np.savez(tmp_path / "nested.npz", **nested)
    assert main(["convert", str(tmp_path / "nested.npz"), str(tmp_path / "n.onnx"), "--prefix", "rnn."]) == 0
    assert "rnn.inner.weight_ih_l0, rnn.inner.weight_hh_l0" in capsys.readouterr().out
    assert main(["convert", os.path.join(TORCH_DIR, "lstm_bidirectional_proj.pt"), str(tmp_path / "p.onnx")]) == 0
    capsys.readouterr()
    assert main(["convert", os.path.join(TORCH_DIR, "views.pt"),
                 str(tmp_path / "v.npz")]) == 0  # no layer: arrays copied
    assert "the arrays are copied as they are" in capsys.readouterr().out
    assert main(["convert", os.path.join(TORCH_DIR, "views.pt"), str(tmp_path / "v.onnx")]) == 2
    assert main(["convert", src, str(tmp_path / "x.pt")]) == 2


def test_convert_refuses_what_it_cannot_place(tmp_path, capsys):
    pytest.importorskip("onnx")
    from nprnn.cli import main

    rnn = {f"rnn.{k}": v for k, v in nprnn.GRU(2, 3).state_dict().items()}
    cases = [
        ({**rnn, "norm.weight": np.ones(3, np.float32), "norm.bias": np.zeros(3, np.float32)},
         "cannot place norm.weight, norm.bias in a model"),
        ({**rnn, "fc1.weight": np.ones((4, 3), np.float32), "fc2.weight": np.ones((2, 4), np.float32)},
         "fc2.weight follow another Linear's weights; the activation"),
        ({**rnn, "head.0.weight": np.ones((4, 3), np.float32)}, "cannot place head.0.weight as one module"),
        ({**rnn, "head.weight": np.ones((4, 5), np.float32)},
         "head.weight take inputs of width 5, but what comes before them gives 3"),
        ({"proj.weight": np.ones((2, 2), np.float32), **rnn}, "proj.weight come before the recurrent layer"),
    ]
    for i, (tensors, msg) in enumerate(cases):
        np.savez(tmp_path / f"m{i}.npz", **tensors)
        assert main(["convert", str(tmp_path / f"m{i}.npz"), str(tmp_path / f"m{i}.onnx")]) == 2
        assert msg in capsys.readouterr().err
        assert not (tmp_path / f"m{i}.onnx").exists()
        assert main(["convert", str(tmp_path / f"m{i}.npz"), str(tmp_path / f"m{i}.safetensors")]) == 0  # every array


@pytest.mark.torch
def test_convert_whole_torch_model_to_onnx(tmp_path):
    """The issue's user: a 2-layer batch_first LSTM with a Linear head on the last step,
    saved by torch, converted to ONNX without torch, run by onnxruntime and by nprnn."""
    ort = pytest.importorskip("onnxruntime")
    import torch

    from nprnn.cli import main
    from nprnn.onnx import import_onnx

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(4, 6, num_layers=2, batch_first=True)
            self.head = torch.nn.Linear(6, 3)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    torch.manual_seed(0)
    model = Model().eval()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    assert main(["convert", str(tmp_path / "model.pt"), str(tmp_path / "model.onnx"), "--batch-first",
                 "--last-step"]) == 0
    x = np.random.default_rng(0).standard_normal((5, 7, 4)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], want, rtol=0, atol=1e-5)
    back = import_onnx(str(tmp_path / "model.onnx"))
    np.testing.assert_allclose(back(x), want, rtol=0, atol=1e-5)
    assert set(back.state_dict()) == set(model.state_dict())


def test_atomic_write_keeps_permissions_symlinks_and_cleans_stale_temporaries(tmp_path):
    """An existing file keeps its mode, a symlink stays a link to the rewritten target, a
    new file gets 0666 less the umask, and a temporary file a killed writer left is gone."""
    import os
    import stat
    import subprocess
    import sys

    from nprnn.serialization import atomic_write

    target = tmp_path / "w.safetensors"
    target.write_bytes(b"old")
    os.chmod(target, 0o644)
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new" and stat.S_IMODE(os.stat(target).st_mode) == 0o644
    os.chmod(target, 0o640)
    atomic_write(target, b"newer")
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    link = tmp_path / "link.safetensors"
    link.symlink_to(target)
    atomic_write(link, b"through the link")
    assert link.is_symlink() and target.read_bytes() == b"through the link"
    fresh = tmp_path / "fresh.bin"
    mask = os.umask(0o022)
    try:
        atomic_write(fresh, b"x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o644
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".tmp-{int(dead.stdout)}-abcd1234-w.safetensors"  # its writer has exited
    live = tmp_path / f".tmp-{os.getpid()}-abcd1234-w.safetensors"  # this process's: not stale
    stale.write_bytes(b"partial")
    live.write_bytes(b"partial")
    atomic_write(target, b"again")
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["w.safetensors", "link.safetensors", "fresh.bin", live.name])


# ------------------------------------------------------------- damaged and crafted .pt files
def _pt(path, entries, storages, compress=False):
    """A file laid out as torch.save writes one, its pickle written opcode by opcode (no
    torch needed): ``entries`` name -> (storage key, offset, size, stride), ``storages`` key
    -> float32 array."""
    import struct as st

    def uni(s):
        b = s.encode()
        return b"X" + st.pack("<I", len(b)) + b

    def ints(values):
        return b"(" + b"".join(b"J" + st.pack("<i", v) for v in values) + b"t"

    p = b"\x80\x02ccollections\nOrderedDict\n)R"
    for name, (key, offset, size, stride) in entries.items():
        pid = b"(" + uni("storage") + b"ctorch\nFloatStorage\n" + uni(key) + uni("cpu") + \
            b"J" + st.pack("<i", storages[key].size) + b"tQ"
        p += uni(name) + b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"J" + st.pack("<i", offset) + \
            ints(size) + ints(stride) + b"\x89ccollections\nOrderedDict\n)Rt" + b"Rs"
    p += b"."
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as z:
        z.writestr("archive/data.pkl", p)
        z.writestr("archive/byteorder", "little")
        for key, arr in storages.items():
            z.writestr(f"archive/data/{key}", np.asarray(arr, "<f4").tobytes())


def test_crafted_file_reads_as_written(tmp_path):
    """The helper's files are what the reader expects (so the refusals below are about
    what each one changes)."""
    path = tmp_path / "ok.pt"
    _pt(path, {"a": ("0", 1, (2, 2), (2, 1)), "s": ("0", 3, (), ())}, {"0": np.arange(6, dtype=np.float32)})
    got = load_torch_state_dict(path)
    np.testing.assert_array_equal(got["a"], [[1, 2], [3, 4]])
    assert got["s"].shape == () and got["s"] == 3


@pytest.mark.parametrize("entry,msg", [
    (("0", 9, (), ()), "a tensor reaches outside its storage (offset 9, last element 9, storage of 4)"),
    (("0", 0, (4,), (2,)), "a tensor reaches outside its storage"),
    (("0", 0, (5000, 5000), (0, 0)), "a tensor of 25000000 elements views a storage of 4: more than 16 times"),
    (("0", 0, (2,), (1, 1)), "a tensor has size (2,) and stride (1, 1)"),
])
def test_crafted_tensors_outside_their_storage_are_refused(entry, msg, tmp_path):
    path = tmp_path / "bad.pt"
    _pt(path, {"w": entry}, {"0": np.arange(4, dtype=np.float32)})
    with pytest.raises(ValueError, match=re.escape(msg)) as info:
        load_torch_state_dict(path)
    assert str(path) in str(info.value)


def test_zip_bomb_refused_before_unpacking(tmp_path):
    path = tmp_path / "bomb.pt"
    n = 5_000_000  # 20 MB of zeros compress to some 20 KB
    _pt(path, {"w": ("0", 0, (n,), (1,))}, {"0": np.zeros(n, np.float32)}, compress=True)
    assert os.path.getsize(path) < 200_000
    with pytest.raises(ValueError, match="would unpack to 20000000 bytes from .*more than 100 times, refused"):
        load_torch_state_dict(path)


def test_flipped_bytes_give_one_clear_error(tmp_path):
    """Every single-byte corruption of a real torch.save file either still reads (a byte of
    weight data the archive's checksum does not cover) or raises ValueError naming the file."""
    with open(os.path.join(TORCH_DIR, "views.pt"), "rb") as f:
        raw = f.read()
    rng = np.random.default_rng(0)
    bad = tmp_path / "flipped.pt"
    outcomes = {"read": 0, "refused": 0}
    for pos in rng.choice(len(raw), size=300, replace=False):
        data = bytearray(raw)
        data[pos] ^= 1 << int(rng.integers(8))
        bad.write_bytes(bytes(data))
        try:
            load_torch_state_dict(bad)
            outcomes["read"] += 1
        except ValueError as exc:
            assert str(bad) in str(exc)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0
