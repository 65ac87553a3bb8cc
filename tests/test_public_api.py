"""The import paths users have: whatever the package's inner layout becomes, these keep
working (the README, the seed's examples and the docs use them)."""
import importlib

import pytest

PUBLIC = {
    "nprnn": ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "RNNBase", "Module", "Sequential", "LastStep",
              "Linear", "Embedding", "Dropout", "LayerNorm", "ReLU", "Tanh", "Sigmoid", "Softmax", "LogSoftmax",
              "PackedSequence", "pack_padded_sequence", "pad_packed_sequence", "pad_sequence", "unpad_sequence",
              "pack_sequence", "unpack_sequence", "set_num_threads", "get_num_threads", "backend", "set_backend",
              "writable", "optim", "losses", "config", "utils", "__version__"],
    "nprnn.config": ["settings", "override", "Settings"],
    "nprnn.utils.rnn": ["PackedSequence", "pack_padded_sequence", "pad_packed_sequence", "pad_sequence",
                        "pack_sequence", "unpack_sequence", "unpad_sequence"],
    "nprnn.layers": ["Linear", "Embedding", "Dropout", "LayerNorm"],
    "nprnn.optim": ["SGD", "Adam", "AdamW", "clip_grad_norm_"],
    "nprnn.losses": ["cross_entropy", "mse_loss"],
    "nprnn.serialization": ["save", "load_into", "save_checkpoint", "load_checkpoint", "checkpoint_metadata",
                            "read_tensors", "write_tensors", "atomic_write"],
    "nprnn.torchfile": ["load_torch_state_dict"],
    "nprnn.convert": ["convert", "infer_config", "model_from_state_dict"],
    "nprnn.onnx": ["export", "to_onnx", "import_onnx", "ONNXGraph", "ONNXRecurrent", "module_from_node", "run_node"],
    "nprnn.scale": ["init_worker", "map_batches", "run", "dask_worker_setup", "data_parallel_step", "shard_gradients"],
    "nprnn.stream": ["Stream", "SequentialStream"],
    "nprnn.explain": ["explain"],
    "nprnn.charlm": ["CharLM"],
    "nprnn.cli": ["main"],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_import(module):
    mod = importlib.import_module(module)
    missing = [name for name in PUBLIC[module] if not hasattr(mod, name)]
    assert not missing, f"{module} lost {missing}"


def test_top_level_all_is_importable():
    import nprnn

    assert set(PUBLIC["nprnn"]) <= set(nprnn.__all__)
    for name in nprnn.__all__:
        assert hasattr(nprnn, name), name


def test_the_kernels_import_no_concurrency_interop_cli_or_teaching_module():
    """functional/ is pure computation: it takes a runner (functional/runners.py) instead
    of importing threads, and knows nothing of the layers, ONNX, the CLI or the teaching
    tools."""
    import ast
    import os

    import nprnn.functional

    folder = os.path.dirname(nprnn.functional.__file__)
    banned = {"threads", "onnx", "cli", "explain", "diagram", "demo", "charlm", "scale", "stream", "convert",
              "parallel", "interop", "teach", "nn"}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:  # from .. import x / from ..x import y
                targets = [node.module] if node.module else [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nprnn"):
                targets = [node.module.split(".")[1] if "." in node.module else a.name for a in node.names]
            else:
                continue
            hit = {t.split(".")[0] for t in targets if t} & banned
            assert not hit, f"functional/{name} imports {sorted(hit)}"


def test_the_core_names_no_onnx_variant():
    """ONNX's extra cell kinds live in nprnn/interop/onnx/variants.py and register themselves; the
    kernels and the layers name none of them."""
    import os

    import nprnn

    root = os.path.dirname(nprnn.__file__)
    core = [os.path.join(root, "functional", n) for n in os.listdir(os.path.join(root, "functional"))
            if n.endswith(".py")]
    core += [os.path.join(root, "nn", n) for n in ("recurrent.py", "layout.py", "cells.py", "module.py")]
    for path in core:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for word in ("gru_lbr0", "lstm_ext", "peephole", "input_forget", "linear_before_reset"):
            assert word not in text, f"{os.path.relpath(path, root)} names {word}"


def test_old_paths_are_the_moved_modules_themselves():
    """nprnn.serialization, nprnn.onnx.graph, ...: one module object under both names (one
    copy of each class, so isinstance and patches agree), and a pickle naming an old path
    (written before the move) loads."""
    import pickle

    import nprnn
    from nprnn._moved import MOVED

    for old, new in MOVED.items():
        assert importlib.import_module(f"nprnn.{old}") is importlib.import_module(f"nprnn.{new}"), old
    import nprnn.interop.onnx.graph
    import nprnn.onnx.graph

    assert nprnn.onnx.graph is nprnn.interop.onnx.graph
    assert nprnn.onnx.graph.__spec__.name == "nprnn.interop.onnx.graph"
    old_pickle = pickle.dumps(nprnn.GRU(2, 3), protocol=0).replace(b"nprnn.nn.recurrent", b"nprnn.recurrent")
    assert b"nprnn.recurrent" in old_pickle
    assert type(pickle.loads(old_pickle)) is nprnn.GRU


def test_every_function_of_the_package_is_annotated():
    """The package ships py.typed, and mypy checks all of it strictly: every function and
    method has its arguments and its result annotated (interop/, parallel/, teach/ and the
    CLI were not, 216 of 279 public functions)."""
    import ast
    import pathlib

    import nprnn

    root = pathlib.Path(nprnn.__file__).parent
    missing = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            args += [a for a in (node.args.vararg, node.args.kwarg) if a is not None]
            unannotated = [a.arg for a in args if a.annotation is None and a.arg not in ("self", "cls")]
            if unannotated or (node.returns is None and node.name != "__init__"):
                missing.append(f"{path.relative_to(root)}:{node.lineno} {node.name}")
    assert not missing, f"{len(missing)} functions without annotations: {missing[:10]}"
