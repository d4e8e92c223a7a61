"""Command line: ``python -m engine <command>`` (also the ``engine`` console script).

Each command lives with the module that owns it; this file only parses and dispatches.
"""
from __future__ import annotations

import argparse
import sys


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr and exit code 2, like every command's own errors."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="engine", description="A small, fast Transformer inference runtime.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("bench", help="self-check and time engine's ops against PyTorch on this device")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--quick", action="store_true", help="smallest sizes only")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for the whole comparison (default: torch's current setting)")
    p.set_defaults(run=_bench)

    p = sub.add_parser("convert", help="write a Hugging Face model folder in engine's format")
    p.add_argument("hf_dir", metavar="HF_DIR", help="Hugging Face model folder (config.json + weights)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (must be empty unless --force)")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty OUT_DIR")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="store weights in this dtype (default: the checkpoint's)")
    p.set_defaults(run=_convert)

    from engine.cli import register  # generate, embed, fill-mask, classify

    register(sub)
    for p in sub.choices.values():  # so that main can report stray arguments against the command given
        p.set_defaults(parser=p)
    return parser


def _bench(args: argparse.Namespace) -> int:
    from engine.bench import main as bench_main

    return bench_main(device=args.device, quick=args.quick, threads=args.threads)


def _convert(args: argparse.Namespace) -> int:
    from engine.convert import convert_main

    return convert_main(args.hf_dir, args.out_dir, force=args.force, dtype=args.dtype)


def main(argv: list[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    if extra:
        args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
