"""The core stays small: its code lines (no blanks, comments or docstrings) stay at or below
a budget: 1699 when the compiled tier landed (80773d4), raised to 1760 for the compiled
tier's small-batch plan (hidden units split across threads, the projection before the
loop: 1739 lines then), to 1780 when row ranges and weight gradients went to the same
team of threads (1768), to 1850 for the wavefront of a stack's layers, forward and
backward (1834), to 1870 for ``backend_info`` and the import error it keeps (1863), and to
1970 for PyTorch's habits in the module base (freezing, ``zero_grad(set_to_none=True)``,
``to``/``double``/``float`` that optimizers follow, ``modules``/``apply``), the memory
checks before the constructors allocate (1963), then to 1980 for the NumPy tier's cache of
prepared weights (1971), and to 1990 for buffers (``register_buffer``: arrays in
``state_dict`` without gradients, which quantized weights are kept in; 1985), then to 2280
for the layer-norm kinds (issue 26: a kind's own parameters and a transform of its input
projection as CellKind hooks, their NumPy kernels in ``functional/lncells.py``, counted
from then on, and LayerNormLSTM/GRU with their cells; 2277), then to 2370 for every state
over time (``return_states=True`` and ``grad_states``, through the stack and both tiers'
loops; 2362), and to 2390 for the layer-norm kinds' compiled loop (their kernel codes, the
norms' parameters as one array, the records' shapes, the gains' gradients; 2388), and to 2410
for ``forget_bias=`` on the LSTMs and their cells (its check and setting live in
``nn/init.py``; 2402), and to 2420 for ``weight_drop=`` (a masked W_hh per training call,
its gradient through the mask, in the layers' base; 2416), and to 2560 for ``recurrent_dropout=``
and ``zoneout=`` (options of the scan that every kind honours on both tiers: the masks'
plumbing through the stack and the compiled loop's arguments, the NumPy loop's zoneout
and the kernels' one recurrent product, the layers' masks and ``last_masks``, masks from
the generator's raw bits; 2555), then to 2710 for the diagonal linear scan of issue 29
(``functional/linscan.py``, counted from then on: 137 lines; its compiled call and the
runners' default: 15; 2707), and to 2830 for MinGRU and MinLSTM (the linear-scan kinds
in the registry, without W_hh: their layer-directions in ``linscan.py``, the layers' base
that declares which of the five parameters a kind has, the two layers; 2821), to 2860 for
their cells (2852), and to 2900 for the linear scan's ``out=``, its uniform batches' chunks of steps and
the min kinds' products on the compiled kernel with pooled buffers (2893), then to 2970
for inference calls that run again the kernel calls made for the same shapes
(``native.reusable`` and the layers' ``_reused``: 33 µs to 11 µs a small call; 2968),
and to 3000 for the cells' steps the same way (their shared checks and run in
``native.exact_states`` and ``native.run_again``; 3000), and to 3005 when one helper
(``native._one_call``) made the bounds of a team's row ranges for both the general path
and the reused calls (3001), to 3015 when the layer-norm kinds' training tape stopped
keeping the gates, which backward (and ``NativeRecord.padded_tape``, for ``explain``) makes
again from the norms' records (3014), and to 3045 for backward's weight gradients made inside
the loop over blocks of steps (``native._grad_block``, the loop's buffers, ``_loop_grads``
that adds up the row ranges' sums; 3044), and to 3065 for ``backward(..., input_grad=False)``,
an input that needs no gradient, through the stack and every loop (3063), and to 3080
for the masks from SplitMix64 words (``stack.splitmix_words``, the definition and the NumPy
tier's path, and ``native.bernoulli``, the compiled one; 3078).
The core is the kernels and the layers; the reference steps (the oracle and teaching
text) are counted apart."""
import ast
import io
import os
import tokenize

import nprnn

BUDGET = 3080
CORE = ["functional/__init__.py", "functional/cells.py", "functional/lncells.py", "functional/linscan.py",
        "functional/scan.py",
        "functional/stack.py", "functional/native.py", "functional/runners.py", "nn/recurrent.py", "nn/layout.py",
        "nn/cells.py", "nn/module.py"]


def code_lines(source: str) -> int:
    """Lines holding code: blanks, comments and docstrings do not count."""
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
                    first.value.value, str):
                docstrings.update(range(first.lineno, first.end_lineno + 1))
    skip = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)
    rows = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            rows.update(r for r in range(tok.start[0], tok.end[0] + 1) if r not in docstrings)
    return len(rows)


def test_code_lines_are_counted_without_comments_and_docstrings():
    source = '"""doc"""\n# comment\n\ndef f():\n    """doc\n    more"""\n    return (1,\n            2)\n'
    assert code_lines(source) == 3  # def, return, and the return's second line


def test_the_core_stays_within_its_line_budget():
    root = os.path.dirname(nprnn.__file__)
    counts = {}
    for name in CORE:
        with open(os.path.join(root, name), encoding="utf-8") as f:
            counts[name] = code_lines(f.read())
    total = sum(counts.values())
    assert total <= BUDGET, f"the core has {total} code lines, over its budget of {BUDGET}: {counts}"
