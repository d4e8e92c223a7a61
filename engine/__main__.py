"""Command line: ``python -m engine <command>`` (also the ``engine`` console script).

Each command lives with the module that owns it; this file only parses and dispatches.
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="engine", description="A small, fast Transformer inference runtime.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("bench", help="self-check and time engine's ops against PyTorch on this device")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--quick", action="store_true", help="smallest sizes only")
    p.set_defaults(run=_bench)
    return parser


def _bench(args: argparse.Namespace) -> int:
    from engine.bench import main as bench_main

    return bench_main(device=args.device, quick=args.quick)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
