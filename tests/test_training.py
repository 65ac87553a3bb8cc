"""End-to-end training: parity with PyTorch, checkpoints (bit-exact resume, atomic writes,
bad files), and the `nprnn train` / `nprnn generate` commands."""
import os
import re

import numpy as np
import pytest

import nprnn
from nprnn import charlm
from nprnn.charlm import CharData, CharLM
from nprnn.losses import cross_entropy
from nprnn.optim import Adam, clip_grad_norm_
from nprnn.serialization import load_checkpoint, load_into, save, save_checkpoint

pytest.importorskip("safetensors")

TEXT = ("the quick brown fox jumps over the lazy dog. " * 40 + "pack my box with five dozen liquor jugs! " * 40)


@pytest.mark.torch
def test_training_parity_with_torch():
    """Same char-LM, same weights, same batches: 30 Adam steps with clipping, float64,
    the loss at every step agrees to rtol 1e-8."""
    import torch

    data = CharData(TEXT)
    V = len(data.vocab)
    model = CharLM(V, embed_dim=8, hidden_size=16, num_layers=2, dtype=np.float64, seed=0)

    class TorchCharLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(V, 8)
            self.lstm = torch.nn.LSTM(8, 16, 2)
            self.head = torch.nn.Linear(16, V)

        def forward(self, ids, state=None):
            h, state = self.lstm(self.embed(ids), state)
            return self.head(h), state

    tmodel = TorchCharLM().double()
    tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    opt, topt = Adam(model, lr=1e-2), torch.optim.Adam(tmodel.parameters(), lr=1e-2)
    streams = CharData.streams(data.train_ids, 4)
    state = tstate = None
    for step in range(30):
        x, y, new = CharData.window(streams, step, 12)
        if new:
            state = tstate = None
        logits, state = model(x, state)
        loss = cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        opt.zero_grad()
        model.backward(loss.backward().reshape(logits.shape))
        norm = clip_grad_norm_(model, 0.5)
        opt.step()

        tlogits, tstate = tmodel(torch.from_numpy(x), tstate)
        tstate = tuple(s.detach() for s in tstate)
        tloss = torch.nn.functional.cross_entropy(tlogits.reshape(-1, V), torch.from_numpy(y.reshape(-1)))
        topt.zero_grad()
        tloss.backward()
        tnorm = torch.nn.utils.clip_grad_norm_(tmodel.parameters(), 0.5)
        topt.step()
        assert float(loss) == pytest.approx(tloss.item(), rel=1e-8), step
        assert norm == pytest.approx(float(tnorm), rel=1e-8), step
    for k, v in tmodel.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[k], v.numpy(), rtol=1e-7, atol=1e-9)


def _run(tmp_path, steps, resume=False, name="ck.safetensors"):
    return charlm.train(TEXT, steps=steps, batch_size=4, seq_len=10, hidden_size=12, embed_dim=6, dropout=0.0,
                        eval_every=5, checkpoint=str(tmp_path / name), ckpt_every=5, resume=resume, seed=3,
                        sample_len=0, progress=False, log=lambda *a: None)


def test_resume_is_bit_exact(tmp_path):
    straight = _run(tmp_path, 20, name="a.safetensors")
    _run(tmp_path, 10, name="b.safetensors")
    resumed = _run(tmp_path, 20, resume=True, name="b.safetensors")
    assert straight["history"]["loss"] == resumed["history"]["loss"]
    for k, v in straight["model"].state_dict().items():
        np.testing.assert_array_equal(v, resumed["model"].state_dict()[k])


def test_resume_with_dropout_is_bit_exact(tmp_path):
    def run(steps, resume, name):
        return charlm.train(TEXT, steps=steps, batch_size=4, seq_len=10, hidden_size=12, embed_dim=6, num_layers=2,
                            dropout=0.3, eval_every=100, checkpoint=str(tmp_path / name), ckpt_every=4, resume=resume,
                            seed=5, sample_len=0, progress=False, log=lambda *a: None)
    straight = run(12, False, "a.safetensors")
    run(8, False, "b.safetensors")
    resumed = run(12, True, "b.safetensors")
    assert straight["history"]["loss"] == resumed["history"]["loss"]


def _small(seed=0):
    m = CharLM(10, embed_dim=4, hidden_size=6, seed=seed)
    return m, Adam(m, lr=0.1)


def _state(model, opt):
    return [v.copy() for v in model.state_dict().values()], [dict(s) for s in opt.state]


def test_checkpoint_round_trip_and_untouched_on_error(tmp_path):
    m, opt = _small()
    for g in m.grads.values():
        g[...] = 0.5
    opt.step()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, m, opt, step=7, extra={"note": "x"}, arrays={"h": np.ones((1, 2, 6), np.float32)})
    m2, opt2 = _small(seed=1)
    info = load_checkpoint(path, m2, opt2)
    assert info["step"] == 7 and info["extra"] == {"note": "x"} and info["arrays"]["h"].shape == (1, 2, 6)
    for a, b in zip(m.state_dict().values(), m2.state_dict().values()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(opt.state[0]["exp_avg"], opt2.state[0]["exp_avg"])
    # wrong shapes: a model of another size is refused and left as it was
    m3 = CharLM(10, embed_dim=4, hidden_size=7, seed=2)
    before = [v.copy() for v in m3.state_dict().values()]
    with pytest.raises(RuntimeError, match=r"size mismatch for lstm\.weight_ih_l0"):
        load_checkpoint(path, m3)
    for a, b in zip(before, m3.state_dict().values()):
        np.testing.assert_array_equal(a, b)
    # wrong dtype
    m4 = CharLM(10, embed_dim=4, hidden_size=6, dtype=np.float64, seed=2)
    with pytest.raises(RuntimeError,
                       match=r"dtype mismatch for embed\.weight: the file has float32, the model has float64"):
        load_checkpoint(path, m4)
    # an optimizer of another kind: nothing changes, the model included
    m5, _ = _small(seed=4)
    before = [v.copy() for v in m5.state_dict().values()]
    with pytest.raises(ValueError, match="holds Adam state, not SGD"):
        load_checkpoint(path, m5, nprnn.optim.SGD(m5, lr=0.1))
    for a, b in zip(before, m5.state_dict().values()):
        np.testing.assert_array_equal(a, b)


def test_truncated_corrupted_and_foreign_files(tmp_path):
    m, opt = _small()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, m, opt, step=1)
    raw = path.read_bytes()
    m2, opt2 = _small(seed=1)
    before = _state(m2, opt2)[0]
    for name, data in (("truncated", raw[: len(raw) // 2]), ("header", raw[:20]), ("garbage", b"\x00" * 64),
                       ("flipped", raw[:8] + b"{" * 10 + raw[18:])):
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(data)
        with pytest.raises(ValueError, match="not a readable safetensors file"):
            load_checkpoint(bad, m2, opt2)
    weights_only = tmp_path / "w.safetensors"
    save(m, weights_only)
    with pytest.raises(ValueError, match="not an nprnn checkpoint"):
        load_checkpoint(weights_only, m2)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.safetensors", m2)
    for a, b in zip(before, m2.state_dict().values()):
        np.testing.assert_array_equal(a, b)


def test_atomic_write_survives_a_crash(tmp_path, monkeypatch):
    m, opt = _small()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, m, opt, step=1)
    good = path.read_bytes()

    def crash(*a, **k):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with nprnn.writable(m):
        m.embed.weight[...] = 0
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, m, opt, step=2)
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert load_checkpoint(path, _small(seed=1)[0])["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temporary file left behind


@pytest.mark.parametrize("ext", ["safetensors", "npz"])
def test_weights_round_trip(tmp_path, ext):
    m = nprnn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2, dtype=np.float64, seed=0)
    path = tmp_path / f"w.{ext}"
    save(m, path)
    m2 = nprnn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2, dtype=np.float64, seed=1)
    load_into(m2, path)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, m2.state_dict()[k])
    deeper = nprnn.LSTM(3, 5, num_layers=3, bidirectional=True, proj_size=2, dtype=np.float64, seed=2)
    before = deeper.state_dict()
    with pytest.raises(RuntimeError, match=re.escape('Missing key(s) in state_dict: "weight_ih_l2", "weight_hh_l2"')):
        load_into(deeper, path)
    for k, v in before.items():
        np.testing.assert_array_equal(v, deeper.state_dict()[k])


def test_cli_train_and_generate(tmp_path, capsys):
    from nprnn.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    ck = tmp_path / "m.safetensors"
    plot = tmp_path / "loss.png"
    assert main(["train", "--text", str(corpus), "--steps", "6", "--batch-size", "4", "--seq-len", "8",
                 "--hidden-size", "8", "--eval-every", "3", "--checkpoint", str(ck), "--ckpt-every", "3",
                 "--plot", str(plot), "--no-progress", "--sample-len", "20"]) == 0
    out = capsys.readouterr().out
    assert "unigram baseline" in out and "validation loss" in out and "steps/s" in out and "sample:" in out
    assert ck.exists() and plot.stat().st_size > 5000
    assert main(["train", "--text", str(corpus), "--steps", "8", "--batch-size", "4", "--seq-len", "8",
                 "--hidden-size", "8", "--eval-every", "4", "--checkpoint", str(ck), "--resume", "--no-progress",
                 "--sample-len", "0"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert main(["generate", "--checkpoint", str(ck), "--prompt", "the ", "--length", "30", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("the ") and len(text.strip()) >= 30
    assert main(["generate", "--checkpoint", str(tmp_path / "nope.safetensors")]) == 2
    assert main(["generate", "--checkpoint", str(ck), "--prompt", "THE"]) == 2
    err = capsys.readouterr().err
    assert "characters not in the vocabulary" in err
    assert main(["train", "--steps", "0"]) == 2


@pytest.mark.slow
def test_default_training_beats_the_unigram_baseline(tmp_path):
    """The default budget of `nprnn train` (a couple of minutes on 2 cores)."""
    res = charlm.train(checkpoint=str(tmp_path / "d.safetensors"), progress=False, log=lambda *a: None, sample_len=0)
    val = res["history"]["val_loss"]
    assert val[-1] < 0.6 * res["baseline"]
    assert val[-1] < val[0]


@pytest.mark.parametrize("change,msg", [
    (lambda meta: meta.pop("step"), "no valid 'step' (a non-negative int), got None"),
    (lambda meta: meta.update(step="7"), "no valid 'step' (a non-negative int), got '7'"),
    (lambda meta: meta.update(extra=[1]), "'extra' must be a JSON object, got list"),
    (lambda meta: meta["optimizer"].pop("param_groups"), "the checkpoint's optimizer header is malformed"),
    (lambda meta: meta["optimizer"].update(scalars={"x": {}}), "the checkpoint's optimizer state is malformed"),
    (lambda meta: meta["optimizer"]["param_groups"][0].update(betas=[0.9]),
     "param_groups[0]['betas'] must be 2 numbers"),
    (lambda meta: meta["optimizer"].update(param_groups=[{"params": []}] * 2),
     "a different number of parameter groups"),
])
def test_checkpoint_header_checked_before_anything_changes(change, msg, tmp_path):
    """A header that lacks or garbles a field is refused, and model, optimizer and
    generators stay as they were (before, a missing 'step' raised KeyError after applying)."""
    import json

    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    m, opt = _small()
    for g in m.grads.values():
        g[...] = 0.5
    opt.step()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, m, opt, step=7)
    with safe_open(str(path), framework="np") as f:
        meta = json.loads(f.metadata()["nprnn"])
    change(meta)
    from nprnn.serialization import _checksum

    tensors = load_file(str(path))
    meta["sha256"] = _checksum(tensors, meta)  # a writer that wrote this header, checksum and all
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"nprnn": json.dumps(meta)})
    m2, opt2 = _small(seed=1)
    before, before_opt = _state(m2, opt2)
    rng_before = m2.lstm._rng.bit_generator.state
    with pytest.raises(ValueError, match=re.escape(msg)):
        load_checkpoint(bad, m2, opt2)
    for a, b in zip(before, m2.state_dict().values()):
        np.testing.assert_array_equal(a, b)
    assert opt2.state == before_opt and opt2.param_groups[0]["betas"] == (0.9, 0.999)
    assert m2.lstm._rng.bit_generator.state == rng_before


def test_checkpoint_checksum_refuses_a_flipped_bit_and_old_files_warn(tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    m, opt = _small()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, m, opt, step=3)
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0x04  # a bit of the last tensor's data
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(raw))
    m2, opt2 = _small(seed=1)
    before, _ = _state(m2, opt2)
    with pytest.raises(ValueError, match="do not match its checksum"):
        load_checkpoint(bad, m2, opt2)
    for a, b in zip(before, m2.state_dict().values()):
        np.testing.assert_array_equal(a, b)
    with safe_open(str(path), framework="np") as f:
        meta = json.loads(f.metadata()["nprnn"])
    changed = dict(meta, step=4)  # the header is covered too: another step is refused
    save_file(load_file(str(path)), str(tmp_path / "step.safetensors"), metadata={"nprnn": json.dumps(changed)})
    with pytest.raises(ValueError, match="tensors or header do not match its checksum"):
        load_checkpoint(tmp_path / "step.safetensors", m2, opt2)
    del meta["sha256"]
    from nprnn.serialization import _checksum

    tensors_only = dict(meta, checksum=_checksum(load_file(str(path))))  # as written when it covered tensors only
    save_file(load_file(str(path)), str(tmp_path / "v1.safetensors"), metadata={"nprnn": json.dumps(tensors_only)})
    assert load_checkpoint(tmp_path / "v1.safetensors", m2, opt2)["step"] == 3  # verified, no warning
    # and as written before checksums:
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(path)), str(old), metadata={"nprnn": json.dumps(meta)})
    with pytest.warns(UserWarning, match="carries no checksum"):
        assert load_checkpoint(old, m2, opt2)["step"] == 3
