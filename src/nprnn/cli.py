"""The ``nprnn`` command."""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Optional, Sequence

if TYPE_CHECKING:
    from .nn.recurrent import RNNBase  # noqa: F401  (annotations)

_FMT = argparse.ArgumentDefaultsHelpFormatter  # every flag's help shows its default
# what one command reads and makes at most (README, "Limits"); the --max-* flags raise the first two
MAX_TEXT_MB = 64  # a --text corpus
MAX_READ_MB = 4096  # a checkpoint or a file to convert
MAX_LENGTH = 10_000_000  # generate --length
MAX_SAMPLE_LEN = 100_000  # train --sample-len (printed on one line)
MAX_LAYERS = 1000  # --num-layers (the library itself has no such limit)
_STATES_TEXT = "The \"while\" statement is used for repeated execution."


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nprnn", description="PyTorch's recurrent layers on NumPy.",
                                     formatter_class=_FMT)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="run the seed's examples and check their shapes and identities",
                          formatter_class=_FMT)
    demo.add_argument("--compare-torch", action="store_true",
                      help="also run the same weights in PyTorch and print the largest differences")
    tr = sub.add_parser("train", help="train a character-level LSTM language model", formatter_class=_FMT,
                        description="Train a character-level LSTM language model on the shipped corpus "
                                    "(the Python Language Reference, PSF License) or on --text FILE.")
    tr.add_argument("--text", help="a UTF-8 text file to train on; without it, the shipped corpus")
    tr.add_argument("--max-text-mb", type=float, default=MAX_TEXT_MB,
                    help="refuse a --text larger than this many MiB (read no further)")
    tr.add_argument("--steps", type=int, default=1000, help="total training steps")
    tr.add_argument("--batch-size", type=int, default=32, help="windows trained on at once")
    tr.add_argument("--seq-len", type=int, default=64, help="characters per window (truncated BPTT length)")
    tr.add_argument("--hidden-size", type=int, default=256, help="LSTM hidden size")
    tr.add_argument("--num-layers", type=int, default=1, help="LSTM layers")
    tr.add_argument("--embed-dim", type=int, default=32, help="character embedding size")
    tr.add_argument("--dropout", type=float, default=0.0, help="dropout between LSTM layers, in [0, 1)")
    tr.add_argument("--weight-drop", type=float, default=0.0,
                    help="DropConnect on each layer's W_hh in training (AWD-LSTM's weight drop), in [0, 1)")
    tr.add_argument("--recurrent-dropout", type=float, default=0.0,
                    help="dropout on h_{t-1} before W_hh, one mask per sequence (Keras's recurrent_dropout), in [0, 1)")
    tr.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    tr.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping threshold")
    tr.add_argument("--eval-every", type=int, default=100, help="steps between validation losses")
    tr.add_argument("--checkpoint", default="charlm.safetensors",
                    help="checkpoint path (needs safetensors); '' for none")
    tr.add_argument("--ckpt-every", type=int, default=200, help="steps between checkpoints")
    tr.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    tr.add_argument("--seed", type=int, default=0, help="seed of the initialisation, batches and dropout")
    tr.add_argument("--plot", help="write the loss curve to this PNG (needs matplotlib)")
    tr.add_argument("--sample-len", type=int, default=200,
                    help=f"characters sampled after training (0 to {MAX_SAMPLE_LEN:,})")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    _max_read(tr)
    gen = sub.add_parser("generate", help="sample text from a model trained with `nprnn train`", formatter_class=_FMT)
    gen.add_argument("--checkpoint", default="charlm.safetensors",
                     help="a checkpoint written by `nprnn train`")
    gen.add_argument("--prompt", default="The ", help="text the sample continues")
    gen.add_argument("--length", type=int, default=300,
                     help=f"characters to generate (0 to {MAX_LENGTH:,}), written as they are drawn")
    gen.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (> 0)")
    gen.add_argument("--seed", type=int, default=None, help="seed of the sampling; without it, fresh randomness")
    _max_read(gen)
    cv = sub.add_parser("convert", help="convert weights between .pt, .safetensors, .npz and .onnx",
                        formatter_class=_FMT,
                        description="Convert a state dict: .pt (read without PyTorch), .safetensors, .npz, .onnx. "
                                    "Prints the arrays read and the inferred layer configuration. Between tensor "
                                    "formats every array is written; to .onnx the whole model is exported (recurrent "
                                    "layers, Linear heads, an embedding) or the keys that cannot be placed are named.")
    cv.add_argument("src", help="file to read (.pt, .pth, .safetensors, .npz or .onnx)")
    cv.add_argument("dst", help="file to write (.safetensors, .npz or .onnx)")
    cv.add_argument("--prefix", help="key prefix of the recurrent layer inside a larger state dict, e.g. 'lstm.'")
    cv.add_argument("--nonlinearity", choices=["tanh", "relu"], default="tanh", help="RNN only (weights cannot tell)")
    _max_read(cv)
    cv.add_argument("--batch-first", action="store_true", help="ONNX output: batch-first input and output")
    cv.add_argument("--last-step", action="store_true",
                    help="ONNX output: the Linear head after the recurrent layer reads its last step (output[:, -1]), "
                         "not every step")
    ex = sub.add_parser("explain", help="parameters, shapes, equations and checked identities of a layer",
                        formatter_class=_FMT,
                        description="Explain a recurrent layer: every parameter, every shape with its dimensions "
                                    "named, the equations, and the identities between output and h_n, each "
                                    "checked by running the layer on random input.")
    _layer_options(ex)
    ex.add_argument("--batch", type=int, default=4, help="batch size of the example input")
    ex.add_argument("--seq-len", type=int, default=3, help="sequence length of the example input")
    ex.add_argument("--unbatched", action="store_true", help="explain an unbatched (L, H_in) input")
    ex.add_argument("--json", action="store_true", help="machine-readable output")
    ex.add_argument("--plot", help="draw the unrolled network to this .png or .svg")
    ps = sub.add_parser("plot-states", help="heatmaps of hidden and cell states and gate activations over time",
                        formatter_class=_FMT)
    ps.add_argument("--checkpoint",
                    help="a model trained with `nprnn train` (else a random layer from the options)")
    ps.add_argument("--text", help=f"with --checkpoint: the text to run (default: {_STATES_TEXT!r})")
    _layer_options(ps, required=False)
    ps.add_argument("--seq-len", type=int, default=40, help="without --checkpoint: random input length")
    ps.add_argument("--out", default="states.png", help="output PNG (needs matplotlib)")
    ps.add_argument("--seed", type=int, default=0, help="seed of the random layer and input")
    _max_read(ps)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run a command; errors are one line on stderr and a non-zero exit, never a traceback."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(parser, args)
    except KeyboardInterrupt:
        print("nprnn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`nprnn demo | head`): end quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error when Python flushes at exit
        return 0
    except MemoryError as exc:  # (sizes are checked first; this is what the checks could not foresee)
        return _fail(f"out of memory: {exc}" if str(exc) else "out of memory")
    except (ValueError, TypeError, RuntimeError, ImportError, OSError, IndexError) as exc:
        return _fail(str(exc) or type(exc).__name__)


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if hasattr(args, "max_read_mb"):  # (every command that reads model files)
        _finite_positive(args, "max_read_mb")
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if args.command == "demo":
        from .teach.demo import run

        return run(compare_torch=args.compare_torch)
    if args.command == "train":
        return _train(args)
    if args.command == "generate":
        return _generate(args)
    if args.command == "explain":
        return _explain(args)
    if args.command == "plot-states":
        return _plot_states(args)
    if args.command == "convert":
        from .interop.convert import convert

        _model_file(args, args.src, "src")
        convert(args.src, args.dst, prefix=args.prefix, nonlinearity=args.nonlinearity, batch_first=args.batch_first,
                last_step=args.last_step)
        return 0
    parser.print_help()
    return 2


def _need(module: str, why: str, extra: str) -> None:
    """Check an optional dependency before any long work starts."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{why} needs {module}: pip install 'nprnn[{extra}]'")


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if "num_layers" in names and args.num_layers > MAX_LAYERS:
        raise ValueError(f"--num-layers must be at most {MAX_LAYERS} here, got {args.num_layers}")


def _finite_positive(args: argparse.Namespace, *names: str) -> None:
    import math

    for name in names:
        v = getattr(args, name)
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number > 0, got {v}")


def _paths(args: argparse.Namespace, *names: str) -> None:
    """An empty path names no file: refused, not taken as 'none' or as a file called '.png'."""
    for name in names:
        v = getattr(args, name, None)
        if v is not None and not v.strip():
            raise ValueError(f"--{name.replace('_', '-')} is empty: give a file name")


def _max_read(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-read-mb", type=float, default=MAX_READ_MB,
                   help="refuse a model file larger than this many MiB, before reading it")


def _model_file(args: argparse.Namespace, path: str, flag: str) -> None:
    """A model file the command will read: a regular file (a FIFO would block, a device never
    ends) within --max-read-mb, checked before anything is read."""
    import os
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        return  # (the reader says so, with its own advice)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{flag} {path!r} is not a regular file")
    if st.st_size > args.max_read_mb * 2 ** 20:
        raise ValueError(f"{flag} {path!r} is {st.st_size / 2 ** 20:,.1f} MiB, more than --max-read-mb "
                         f"{args.max_read_mb:g}; raise --max-read-mb to read it")


def _read_text(path: str, limit_mb: float) -> str:
    """The UTF-8 text of ``path``, read no further than ``limit_mb`` MiB (pipes and devices
    included: an endless input ends at the limit)."""
    limit, chunks, got = limit_mb * 2 ** 20, [], 0
    with open(path, "rb") as f:
        while got <= limit:
            chunk = f.read(1 << 24)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    data = b"".join(chunks)
    if len(data) > limit:
        raise ValueError(f"--text {path!r} is larger than --max-text-mb {limit_mb:g} MiB (or endless); raise "
                         "--max-text-mb to train on more")
    return data.decode("utf-8")


def _fits(what: str, values: int) -> None:
    """Refuse, before allocating, ``values`` float32 numbers this machine cannot hold."""
    from ._checks import check_memory

    check_memory(what, values, "float32")


def _layer_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("kind", choices=["rnn", "lstm", "gru", "ln-lstm", "ln-gru", "mingru", "minlstm"],
                   nargs=None if required else "?", default="lstm",
                   help="the layer (ln-: LayerNormLSTM, LayerNormGRU; min: MinGRU, MinLSTM)")
    p.add_argument("--input-size", type=int, default=None if required else 8, required=required,
                   help="features of each input step")
    p.add_argument("--hidden-size", type=int, default=None if required else 16, required=required,
                   help="hidden state size")
    p.add_argument("--num-layers", type=int, default=1, help="stacked layers")
    p.add_argument("--bidirectional", action="store_true", help="a reverse direction beside the forward one")
    p.add_argument("--batch-first", action="store_true", help="input and output as (batch, seq, feature)")
    p.add_argument("--proj-size", type=int, default=0, help="LSTM only: projection size (0: none)")
    p.add_argument("--bias", action=argparse.BooleanOptionalAction, default=None,
                   help="bias vectors (default: on; the ln- layers have none: their norms' shifts stand in)")
    p.add_argument("--nonlinearity", choices=["tanh", "relu"], default="tanh", help="RNN only")


def _run_values(args: argparse.Namespace, batch: int) -> int:
    """About how many numbers a run of the layer the options describe holds: its input,
    and per layer, direction and step its gates, states and output (twice, for records)."""
    D = 2 if args.bidirectional else 1
    return int(batch * args.seq_len * (args.input_size + args.num_layers * D * args.hidden_size * 16))


def _build_layer(args: argparse.Namespace) -> "RNNBase":
    from . import GRU, LSTM, RNN, LayerNormGRU, LayerNormLSTM, MinGRU, MinLSTM

    kw = dict(num_layers=args.num_layers, batch_first=args.batch_first, bidirectional=args.bidirectional,
              seed=getattr(args, "seed", 0))
    if args.kind in ("mingru", "minlstm"):
        if args.proj_size:
            raise ValueError(f"proj_size argument is not supported for {args.kind}")
        cls = MinGRU if args.kind == "mingru" else MinLSTM
        return cls(args.input_size, args.hidden_size, bias=args.bias is not False, **kw)
    if args.kind.startswith("ln-"):
        if args.bias is not None:
            raise ValueError(f"{args.kind} has no bias vectors (its layer norms' shifts stand in for them): drop "
                             f"--{'no-' if not args.bias else ''}bias")
        if args.kind == "ln-lstm":
            return LayerNormLSTM(args.input_size, args.hidden_size, proj_size=args.proj_size, **kw)
        if args.proj_size:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        return LayerNormGRU(args.input_size, args.hidden_size, **kw)
    kw["bias"] = args.bias is not False
    if args.kind == "lstm":
        return LSTM(args.input_size, args.hidden_size, proj_size=args.proj_size, **kw)
    if args.proj_size:
        raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
    if args.kind == "rnn":
        return RNN(args.input_size, args.hidden_size, nonlinearity=args.nonlinearity, **kw)
    return GRU(args.input_size, args.hidden_size, **kw)


def _explain(args: argparse.Namespace) -> int:
    import json

    from .teach.explain import explain, format_text

    _positive(args, "batch", "seq_len", "input_size", "hidden_size", "num_layers")
    _paths(args, "plot")
    _fits("explain's example run", _run_values(args, args.batch))
    if args.plot:
        _need("matplotlib", "--plot", "plot")
    layer = _build_layer(args)
    info = explain(layer, batch=args.batch, seq_len=args.seq_len, unbatched=args.unbatched)
    if args.plot:
        from .teach.diagram import unrolled

        unrolled(layer, args.seq_len, args.plot)
    print(json.dumps(info, indent=2) if args.json else format_text(info))
    if args.plot and not args.json:
        print(f"\ndiagram written to {args.plot}")
    return 0 if all(c["observed"] == c["expected"] for c in info["identities"]) else 1


def _plot_states(args: argparse.Namespace) -> int:
    import numpy as np

    from .teach.diagram import state_heatmaps
    from .teach.explain import collect_states

    _paths(args, "checkpoint", "out")
    _need("matplotlib", "plot-states", "plot")
    if args.checkpoint:
        from .teach.charlm import load_for_generation

        text = _STATES_TEXT if args.text is None else args.text
        if not text:
            raise ValueError("--text is empty: give the text to run through the model")
        _model_file(args, args.checkpoint, "--checkpoint")
        model, vocab = load_for_generation(args.checkpoint)
        ids = vocab.encode(text)[:, None]  # (L, 1)
        layer: RNNBase = model.lstm
        x = model.embed.eval()(ids)
        title = f"{args.checkpoint}: {text[:60]!r}"
    else:
        if args.text is not None:
            raise ValueError("--text needs --checkpoint (a trained model to run it through); without one the "
                             "states are a random layer's on random input")
        _positive(args, "seq_len", "input_size", "hidden_size", "num_layers")
        _fits("plot-states' run", _run_values(args, 1))
        layer = _build_layer(args)
        shape = (1, args.seq_len, args.input_size) if args.batch_first else (args.seq_len, 1, args.input_size)
        x = np.random.default_rng(args.seed).standard_normal(shape).astype(np.float32)
        title = f"{layer!r} on random input"
    state_heatmaps(collect_states(layer, x), args.out, title)
    print(f"state heatmaps written to {args.out}")
    return 0


def _fail(msg: str) -> int:
    print(f"nprnn: error: {msg}", file=sys.stderr)
    return 2


def _train(args: argparse.Namespace) -> int:
    from .teach.charlm import train

    _positive(args, "steps", "batch_size", "seq_len", "hidden_size", "num_layers", "embed_dim", "eval_every",
              "ckpt_every")
    for name in ("dropout", "weight_drop", "recurrent_dropout"):
        if not 0 <= getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(args, name)}")
    _finite_positive(args, "lr", "clip")
    _paths(args, "text", "plot")  # an empty --checkpoint keeps its meaning: no checkpoint
    if args.checkpoint:
        _need("safetensors", "--checkpoint", "train")
    if args.plot:
        _need("matplotlib", "--plot", "plot")
    if not 0 <= args.sample_len <= MAX_SAMPLE_LEN:
        raise ValueError(f"--sample-len must be in [0, {MAX_SAMPLE_LEN:,}], got {args.sample_len}")
    _finite_positive(args, "max_text_mb")
    if args.resume and args.checkpoint:
        _model_file(args, args.checkpoint, "--checkpoint")
    embed = args.embed_dim + 4 * args.hidden_size  # (the vocabulary is at most a few hundred characters)
    _fits("the model", args.num_layers * 8 * args.hidden_size * (args.hidden_size + args.embed_dim) + 256 * embed)
    _fits("a training step", args.batch_size * args.seq_len * (args.embed_dim + 256 + args.num_layers * 16
                                                                 * args.hidden_size))
    text = None
    if args.text:
        try:
            text = _read_text(args.text, args.max_text_mb)
        except (OSError, UnicodeDecodeError) as exc:
            return _fail(f"cannot read --text {args.text}: {exc}")
        if not text:
            return _fail(f"--text {args.text} is empty")
    train(text, steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, hidden_size=args.hidden_size,
          num_layers=args.num_layers, embed_dim=args.embed_dim, dropout=args.dropout, weight_drop=args.weight_drop,
          recurrent_dropout=args.recurrent_dropout, lr=args.lr, clip=args.clip,
          eval_every=args.eval_every, checkpoint=args.checkpoint, ckpt_every=args.ckpt_every, resume=args.resume,
          seed=args.seed, plot=args.plot, sample_len=args.sample_len, progress=not args.no_progress)
    return 0


def _generate(args: argparse.Namespace) -> int:
    from .teach.charlm import generate, load_for_generation

    if not 0 <= args.length <= MAX_LENGTH:
        raise ValueError(f"--length must be in [0, {MAX_LENGTH:,}], got {args.length}")
    _finite_positive(args, "temperature")
    _paths(args, "checkpoint")
    import os

    if not os.path.exists(args.checkpoint):
        raise ValueError(f"no such file: {args.checkpoint!r} (train a model first: "
                         f"`nprnn train --checkpoint {args.checkpoint}`)")
    _model_file(args, args.checkpoint, "--checkpoint")
    model, vocab = load_for_generation(args.checkpoint)
    out = sys.stdout
    out.write(args.prompt)
    for k, ch in enumerate(generate(model, vocab, args.prompt, args.length, args.temperature, rng=args.seed)):
        out.write(ch)
        if ch == "\n" or k % 64 == 63:
            out.flush()  # written as drawn: a long sample shows at once, and can be cut short
    out.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
