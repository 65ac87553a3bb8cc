import subprocess
import sys

import pytest

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
        (["train", "--text", str(empty)], "is empty"),
        (["train", "--text", str(tmp_path / "none.txt")], "cannot read --text"),
        (["generate", "--length", "-5"], "--length must be >= 0, got -5"),
        (["generate", "--temperature", "0"], "--temperature must be positive, got 0.0"),
        (["generate", "--checkpoint", missing], "no such file"),
        (["generate", "--checkpoint", str(corrupt)], "is not a readable safetensors file"),
        (["convert", missing, str(tmp_path / "o.npz")], "no such file"),
        (["convert", str(corrupt), str(tmp_path / "o.npz")], "is not a readable safetensors file"),
        (["convert", str(truncated_onnx), str(tmp_path / "o.npz")], "is not a readable ONNX model"),
        (["convert", str(corrupt), str(tmp_path / "out.xyz")], "unknown extension '.xyz'; known: .pt, .pth"),
        (["explain", "lstm", "--input-size", "0", "--hidden-size", "4"], "input_size must be greater than zero"),
        (["explain", "gru", "--input-size", "3", "--hidden-size", "4", "--seq-len", "0"],
         "--seq-len must be a positive integer, got 0"),
        (["plot-states", "--seq-len", "0"], "--seq-len must be a positive integer, got 0"),
        (["plot-states", "--checkpoint", str(corrupt)], "is not a readable safetensors file"),
    ]


def test_bad_input_gives_one_line_and_non_zero_exit(tmp_path, capsys):
    """Every command refuses bad input with one line on stderr, never a traceback."""
    pytest.importorskip("matplotlib")
    pytest.importorskip("safetensors")
    for argv, msg in _bad_inputs(tmp_path):
        code = main(argv)
        err = capsys.readouterr().err
        assert code != 0, argv
        assert msg in err, (argv, err)
        assert err.startswith("nprnn: error: ") and err.count("\n") == 1, (argv, err)
        assert "Traceback" not in err


def test_plot_states_refuses_empty_text_with_a_checkpoint(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    pytest.importorskip("safetensors")
    from nprnn.charlm import train

    ck = tmp_path / "c.safetensors"
    train("abcabcabc " * 50, steps=2, batch_size=2, seq_len=8, hidden_size=8, embed_dim=4, eval_every=1,
          checkpoint=str(ck), ckpt_every=2, sample_len=5, progress=False, log=lambda *a: None)
    assert main(["plot-states", "--checkpoint", str(ck), "--text", ""]) == 2
    assert "--text is empty" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(ck), "--prompt", "xyz"]) == 2
    assert "characters not in the vocabulary" in capsys.readouterr().err


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
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and err.startswith("nprnn: error: ") and err.count("\n") == 1, (argv, err)
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
