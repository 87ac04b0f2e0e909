"""`meshrec` command line: each package area registers its own subcommands."""

from __future__ import annotations

import argparse
import sys

from meshrec.errors import report_errors


def build_parser() -> argparse.ArgumentParser:
    from meshrec import config_commands
    from meshrec.body import commands as body_commands
    from meshrec.features import commands as feature_commands
    from meshrec.train import commands as train_commands

    parser = argparse.ArgumentParser(
        prog="meshrec",
        description="Single-image 3D human mesh recovery (SMPL): body models, data, training.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    body_commands.register(sub)
    config_commands.register(sub)
    train_commands.register(sub)
    feature_commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return report_errors("meshrec", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
