import re
import subprocess
import sys

import pytest

import nprnn
from nprnn.cli import main


def test_demo_prints_seed_shapes_and_only_ok(capsys):
    assert main(["demo"]) == 0
    text = capsys.readouterr().out
    for expected in ("output  (2, 3, 6)", "h_n     (4, 2, 6)", "h0      (4, 2, 6)",  # seed example 1
                     "output  (4, 3, 10)", "h_n     (2, 4, 10)", "c_n     (2, 4, 10)",  # seed example 2
                     "output  (4, 3, 16)", "output  (4, 3, 4)"):
        assert expected in text
    assert "MISMATCH" not in text
    assert text.count("OK ") >= 10
    import nprnn

    info = nprnn.backend_info()
    line = next(x for x in text.splitlines() if x.startswith("backend: "))
    assert line.startswith(f"backend: {info['backend']}")  # which kernels ran, and why not the fastest
    assert (info["reason"] or "") in line and (info["isa"] if info["backend"] == "native" else "numpy") in line


def test_module_entry_point():
    res = subprocess.run([sys.executable, "-m", "nprnn", "demo"], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert "checks OK" in res.stdout


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


@pytest.mark.torch
def test_demo_compare_torch(capsys):
    assert main(["demo", "--compare-torch"]) == 0
    text = capsys.readouterr().out
    assert text.count("max |nprnn - torch|") == 10
    assert "largest absolute difference from PyTorch" in text


def _bad_inputs(tmp_path):
    """(argv, part of the message) for each command fed bad input."""
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 40)
    truncated_onnx = tmp_path / "t.onnx"
    truncated_onnx.write_bytes(b"\x08\x07\x12\x05nprnn\x3a\xff\xff")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    missing = str(tmp_path / "missing.safetensors")
    return [
        (["train", "--steps", "0"], "--steps must be a positive integer, got 0"),
        (["train", "--hidden-size", "-3"], "--hidden-size must be a positive integer, got -3"),
        (["train", "--dropout", "1.5"], "--dropout must be in [0, 1), got 1.5"),
        (["train", "--weight-drop", "1"], "--weight-drop must be in [0, 1), got 1.0"),
        (["train", "--text", str(empty)], "is empty"),
        (["train", "--text", str(tmp_path / "none.txt")], "cannot read --text"),
        (["generate", "--length", "-5"], "--length must be in [0, 10,000,000], got -5"),
        (["generate", "--temperature", "0"], "--temperature must be a finite number > 0, got 0.0"),
        (["generate", "--checkpoint", missing], "no such file"),
        (["generate", "--checkpoint", str(corrupt)], "is not a readable safetensors file"),
        (["convert", missing, str(tmp_path / "o.npz")], "no such file"),
        (["convert", str(corrupt), str(tmp_path / "o.npz")], "is not a readable safetensors file"),
        (["convert", str(truncated_onnx), str(tmp_path / "o.npz")], "is not a readable ONNX model"),
        (["convert", str(corrupt), str(tmp_path / "out.xyz")], "unknown extension '.xyz'; known: .pt, .pth"),
        (["explain", "lstm", "--input-size", "0", "--hidden-size", "4"],
         "--input-size must be a positive integer, got 0"),
        (["explain", "gru", "--input-size", "3", "--hidden-size", "4", "--seq-len", "0"],
         "--seq-len must be a positive integer, got 0"),
        (["plot-states", "--seq-len", "0"], "--seq-len must be a positive integer, got 0"),
        (["plot-states", "--checkpoint", str(corrupt)], "is not a readable safetensors file"),
    ]


def _refused(capsys, argv, msg, code=2):
    """Run ``nprnn argv``: it must exit with ``code`` (None: any non-zero) and one line on
    stderr, "nprnn: error: ...", that holds ``msg``.  Returns that line."""
    got = main(argv)
    err = capsys.readouterr().err
    assert got != 0 if code is None else got == code, (argv, got)
    assert msg in err and err.startswith("nprnn: error: ") and err.count("\n") == 1, (argv, err)
    return err


def test_bad_input_gives_one_line_and_non_zero_exit(tmp_path, capsys):
    """Every command refuses bad input with one line on stderr, never a traceback."""
    pytest.importorskip("matplotlib")
    pytest.importorskip("safetensors")
    for argv, msg in _bad_inputs(tmp_path):
        assert "Traceback" not in _refused(capsys, argv, msg, code=None)


def test_plot_states_refuses_empty_text_with_a_checkpoint(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    pytest.importorskip("safetensors")
    ck = _tiny_checkpoint(tmp_path)
    _refused(capsys, ["plot-states", "--checkpoint", str(ck), "--text", ""], "--text is empty")
    _refused(capsys, ["generate", "--checkpoint", str(ck), "--prompt", "xyz"], "characters not in the vocabulary")


def test_every_flag_has_help_and_shows_its_default():
    from nprnn.cli import _parser

    parser = _parser()
    subparsers = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        text = sub.format_help()
        assert "(default:" in text or name == "demo", name


def test_flags_that_mean_nothing_are_refused_in_one_line(tmp_path, capsys):
    """NaN, infinite, negative or empty values of the numeric and path flags (issue 24's CLI
    items): one line on stderr naming the flag, exit 2; and a missing checkpoint for
    generate points to `nprnn train`."""
    cases = [
        (["train", "--lr", "nan"], "--lr must be a finite number > 0, got nan"),
        (["train", "--clip", "-1"], "--clip must be a finite number > 0, got -1.0"),
        (["train", "--clip", "inf"], "--clip must be a finite number > 0, got inf"),
        (["train", "--dropout", "nan"], "--dropout must be in [0, 1), got nan"),
        (["train", "--text", ""], "--text is empty"),
        (["train", "--plot", " "], "--plot is empty"),
        (["generate", "--temperature", "inf"], "--temperature must be a finite number > 0, got inf"),
        (["generate", "--checkpoint", str(tmp_path / "none.safetensors")], "nprnn train --checkpoint"),
        (["plot-states", "--out", ""], "--out is empty"),
        (["plot-states", "--checkpoint", ""], "--checkpoint is empty"),
        (["plot-states", "--text", "hello"], "--text needs --checkpoint"),
        (["explain", "lstm", "--input-size", "2", "--hidden-size", "3", "--plot", ""], "--plot is empty"),
    ]
    for argv, msg in cases:
        _refused(capsys, argv, msg)
    assert not any(p.name.endswith(".png") for p in tmp_path.iterdir())


def test_a_closed_pipe_ends_quietly():
    """`nprnn demo | head -1`: the reader goes away; no 'Broken pipe' error, exit 0."""
    with subprocess.Popen([sys.executable, "-m", "nprnn", "demo"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 0, err
    assert "Broken pipe" not in err and "Traceback" not in err, err


def _tiny_checkpoint(tmp_path):
    from nprnn.charlm import train

    ck = tmp_path / "c.safetensors"
    train("abcabcabc " * 50, steps=2, batch_size=2, seq_len=8, hidden_size=8, embed_dim=4, eval_every=1,
          checkpoint=str(ck), ckpt_every=2, sample_len=5, progress=False, log=lambda *a: None)
    return ck


def test_sizes_are_checked_before_anything_is_allocated(tmp_path, capsys):
    """Each in well under a second, one line naming the size and the memory it would need
    (before the change: NumPy MemoryError tracebacks, or 30 s of work before one)."""
    import time

    cases = [
        (["explain", "lstm", "--input-size", "100000", "--hidden-size", "100000"],
         "LSTM(100000, 100000, num_layers=1)'s parameters would need 298.0 GiB (80,000,800,000 float32 values)"),
        (["explain", "gru", "--input-size", "8", "--hidden-size", "16", "--batch", "1000000000"],
         "explain's example run would need"),
        (["explain", "lstm", "--input-size", "8", "--hidden-size", "16", "--num-layers", "1000000"],
         "--num-layers must be at most 1000 here, got 1000000"),
        (["plot-states", "--hidden-size", "1000000"], "LSTM(8, 1000000, num_layers=1)'s parameters would need"),
        (["plot-states", "--seq-len", "100000000000"], "plot-states' run would need"),
        (["train", "--hidden-size", "100000"], "the model would need"),
        (["train", "--batch-size", "1000000000"], "a training step would need"),
        (["generate", "--length", "1000000000"], "--length must be in [0, 10,000,000], got 1000000000"),
        (["train", "--sample-len", "1000000000"], "--sample-len must be in [0, 100,000], got 1000000000"),
        (["train", "--max-text-mb", "nan"], "--max-text-mb must be a finite number > 0, got nan"),
        (["plot-states", "--max-read-mb", "nan"], "--max-read-mb must be a finite number > 0, got nan"),
        (["convert", "a.npz", "b.npz", "--max-read-mb", "-1"], "--max-read-mb must be a finite number > 0, got -1"),
    ]
    for argv, msg in cases:
        start = time.perf_counter()
        err = _refused(capsys, argv, msg)
        assert "GiB of memory" in err or "must be" in err
        assert time.perf_counter() - start < 5, argv


def test_a_constructor_names_the_memory_it_would_need():
    for make, name in ((lambda: nprnn.LSTM(10, 10 ** 6, num_layers=2), "LSTM(10, 1000000, num_layers=2)"),
                       (lambda: nprnn.GRUCell(10 ** 5, 10 ** 5), "GRUCell(100000, 100000)"),
                       (lambda: nprnn.Linear(10 ** 6, 10 ** 6), "Linear(1000000, 1000000)"),
                       (lambda: nprnn.Embedding(10 ** 7, 10 ** 6), "Embedding(10000000, 1000000)")):
        with pytest.raises(RuntimeError, match=re.escape(name) + r".* would need [0-9,.]+ GiB .* this machine has"):
            make()


def _bounded(argv, timeout=60):
    """``nprnn argv`` in a child with a 1 GiB address-space limit and a time limit, so a
    regression that reads without end fails the test instead of filling the machine."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    return subprocess.run([sys.executable, "-m", "nprnn", *argv], capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit)


def endless_fifo(path):
    """A FIFO at ``path`` that a thread feeds without end (a /dev/zero twin in the test's
    directory) until the returned event is set (test_fuzz uses it too)."""
    import os
    import threading

    os.mkfifo(path)
    stop = threading.Event()

    def feed():
        try:
            with open(path, "wb") as f:
                while not stop.is_set():
                    f.write(b"abc " * 16384)
        except BrokenPipeError:
            pass

    threading.Thread(target=feed, daemon=True).start()
    return stop


def test_an_endless_text_ends_at_the_limit_in_seconds(tmp_path):
    """A FIFO fed without end (a /dev/zero twin made in tmp_path) and a file over the limit."""
    import time

    fifo = tmp_path / "endless.txt"
    stop = endless_fifo(fifo)
    start = time.perf_counter()
    try:
        done = _bounded(["train", "--text", str(fifo), "--max-text-mb", "8", "--checkpoint", ""])
    finally:
        stop.set()
    assert done.returncode == 2, done.stderr
    assert "is larger than --max-text-mb 8 MiB (or endless)" in done.stderr, done.stderr
    assert time.perf_counter() - start < 30
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * (2 << 20))
    done = _bounded(["train", "--text", str(big), "--max-text-mb", "1", "--checkpoint", ""])
    assert done.returncode == 2 and "is larger than --max-text-mb 1 MiB" in done.stderr, done.stderr


def test_model_files_are_regular_and_within_max_read_mb(tmp_path, capsys):
    pytest.importorskip("safetensors")
    import os

    ck = _tiny_checkpoint(tmp_path)
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    for argv in (["generate", "--checkpoint", str(fifo)], ["convert", str(fifo), str(tmp_path / "o.npz")],
                 ["plot-states", "--checkpoint", str(fifo)]):
        done = _bounded(argv, timeout=60)  # (a FIFO without a writer blocks its reader for ever)
        assert done.returncode == 2 and "is not a regular file" in done.stderr, (argv, done.stderr)
    for argv in (["generate", "--checkpoint", str(ck), "--max-read-mb", "0.001"],
                 ["convert", str(ck), str(tmp_path / "o.npz"), "--max-read-mb", "0.001"],
                 ["train", "--resume", "--checkpoint", str(ck), "--max-read-mb", "0.001"]):
        _refused(capsys, argv, "more than --max-read-mb 0.001; raise --max-read-mb to read it")
    assert not (tmp_path / "o.npz").exists()


def test_generate_writes_each_character_as_it_is_drawn(tmp_path):
    """The first characters of a long sample arrive while it is still being drawn."""
    pytest.importorskip("safetensors")
    import os
    import select
    import time

    ck = _tiny_checkpoint(tmp_path)
    with subprocess.Popen([sys.executable, "-m", "nprnn", "generate", "--checkpoint", str(ck), "--prompt", "ab",
                           "--length", "10000000", "--seed", "0"], stdout=subprocess.PIPE) as proc:
        try:
            head, start = b"", time.perf_counter()
            while len(head) < 200 and time.perf_counter() - start < 60:
                if select.select([proc.stdout], [], [], 1.0)[0]:
                    head += os.read(proc.stdout.fileno(), 200 - len(head))
            assert len(head) == 200 and head.startswith(b"ab"), head
            assert proc.poll() is None  # still drawing
        finally:
            proc.kill()
    from nprnn.charlm import load_for_generation, sample

    model, vocab = load_for_generation(str(ck))
    assert head.decode() == sample(model, vocab, "ab", 198, rng=0)  # the same draws as the whole-string form


def test_a_plot_path_without_an_extension_is_the_file_written(tmp_path, capsys):
    """`--plot adir` used to say "written to adir" and write adir.png (matplotlib adds the
    extension); the file written is the one named (PNG data), and the message says so."""
    pytest.importorskip("matplotlib")
    target = tmp_path / "adir"
    assert main(["explain", "lstm", "--input-size", "2", "--hidden-size", "3", "--plot", str(target)]) == 0
    assert f"diagram written to {target}" in capsys.readouterr().out
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "adir.png").exists()
