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

    assert f"backend: {nprnn.backend()} (" in text  # which kernels ran, and why


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
