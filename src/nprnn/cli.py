"""The ``nprnn`` command."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="nprnn", description="PyTorch's recurrent layers on NumPy.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="run the seed's examples and check their shapes and identities")
    demo.add_argument("--compare-torch", action="store_true",
                      help="also run the same weights in PyTorch and print the largest differences")
    tr = sub.add_parser("train", help="train a character-level LSTM language model",
                        description="Train a character-level LSTM language model on the shipped corpus "
                                    "(the Python Language Reference, PSF License) or on --text FILE.")
    tr.add_argument("--text", help="a UTF-8 text file to train on (default: the shipped corpus)")
    tr.add_argument("--steps", type=int, default=1000, help="total training steps (default 1000)")
    tr.add_argument("--batch-size", type=int, default=32)
    tr.add_argument("--seq-len", type=int, default=64, help="characters per window (truncated BPTT length)")
    tr.add_argument("--hidden-size", type=int, default=256)
    tr.add_argument("--num-layers", type=int, default=1)
    tr.add_argument("--embed-dim", type=int, default=32)
    tr.add_argument("--dropout", type=float, default=0.0)
    tr.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    tr.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping threshold")
    tr.add_argument("--eval-every", type=int, default=100)
    tr.add_argument("--checkpoint", default="charlm.safetensors", help="checkpoint path (default charlm.safetensors)")
    tr.add_argument("--ckpt-every", type=int, default=200)
    tr.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--plot", help="write the loss curve to this PNG (needs matplotlib)")
    tr.add_argument("--sample-len", type=int, default=200)
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    gen = sub.add_parser("generate", help="sample text from a model trained with `nprnn train`")
    gen.add_argument("--checkpoint", default="charlm.safetensors")
    gen.add_argument("--prompt", default="The ")
    gen.add_argument("--length", type=int, default=300)
    gen.add_argument("--temperature", type=float, default=0.8)
    gen.add_argument("--seed", type=int, default=None)
    cv = sub.add_parser("convert", help="convert weights between .pt, .safetensors, .npz and .onnx",
                        description="Convert a recurrent layer's weights: .pt (read without PyTorch), .safetensors, "
                                    ".npz, .onnx. Prints the arrays read and the inferred layer configuration.")
    cv.add_argument("src")
    cv.add_argument("dst")
    cv.add_argument("--prefix", help="key prefix of the recurrent layer inside a larger state dict, e.g. 'lstm.'")
    cv.add_argument("--nonlinearity", choices=["tanh", "relu"], default="tanh", help="RNN only (weights cannot tell)")
    cv.add_argument("--batch-first", action="store_true", help="ONNX output: batch-first input and output")
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if args.command == "demo":
        from .demo import run

        return run(compare_torch=args.compare_torch)
    if args.command == "train":
        return _train(args)
    if args.command == "generate":
        return _generate(args)
    if args.command == "convert":
        from .convert import convert

        try:
            convert(args.src, args.dst, prefix=args.prefix, nonlinearity=args.nonlinearity, batch_first=args.batch_first)
        except (ValueError, FileNotFoundError, ImportError, RuntimeError, TypeError) as exc:
            return _fail(str(exc))
        return 0
    parser.print_help()
    return 2


def _fail(msg: str) -> int:
    print(f"nprnn: error: {msg}", file=sys.stderr)
    return 2


def _train(args) -> int:
    from .charlm import train

    text = None
    if args.text:
        try:
            with open(args.text, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            return _fail(f"cannot read --text {args.text}: {exc}")
    for name in ("steps", "batch_size", "seq_len", "hidden_size", "num_layers", "embed_dim", "eval_every", "ckpt_every"):
        if getattr(args, name) <= 0:
            return _fail(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    try:
        train(text, steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, hidden_size=args.hidden_size,
              num_layers=args.num_layers, embed_dim=args.embed_dim, dropout=args.dropout, lr=args.lr, clip=args.clip,
              eval_every=args.eval_every, checkpoint=args.checkpoint, ckpt_every=args.ckpt_every, resume=args.resume,
              seed=args.seed, plot=args.plot, sample_len=args.sample_len, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as exc:
        return _fail(str(exc))
    return 0


def _generate(args) -> int:
    from .charlm import load_for_generation, sample

    try:
        model, vocab = load_for_generation(args.checkpoint)
        print(sample(model, vocab, args.prompt, args.length, args.temperature, rng=args.seed))
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as exc:
        return _fail(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
