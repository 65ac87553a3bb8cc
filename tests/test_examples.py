"""The scripts in examples/ run and learn."""
import importlib.util
import os

import pytest

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_char_lm_example_learns(capsys):
    load("char_lm").main(steps=30, batch_size=8, seq_len=32)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step")]
    first, last = float(lines[0].split()[3]), float(lines[-1].split()[3])
    assert last < first - 0.5


def test_digits_example_held_out_accuracy():
    pytest.importorskip("sklearn")
    assert load("digits_lstm").main(epochs=4) > 0.8


def test_mingru_lm_example_learns_beside_the_lstm():
    # 2 s each, and at least 12 steps however slow the machine (a busy one managed 4 in 2 s)
    results = load("mingru_lm").main(seconds=2.0, min_steps=12)
    for name, history in results.items():
        assert history[-1][1] >= 12, name  # steps taken: min_steps honoured
        assert history[-1][2] < 3.5, name  # below the corpus's unigram baseline (3.23) plus a little: learning
