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
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if args.command == "demo":
        from .demo import run

        return run(compare_torch=args.compare_torch)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
