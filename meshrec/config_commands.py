"""`meshrec config`: print the resolved config and its hash."""

from __future__ import annotations

import argparse


def _config(args: argparse.Namespace) -> int:
    from meshrec import config

    cfg = config.load_config(args.config, args.overrides)
    if args.hash:
        print(config.config_hash(cfg))
    else:
        print(config.render(cfg, comments=args.commented), end="")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="print the resolved config and its hash",
                       description="Load a config file (with its defaults chain) and KEY=VALUE "
                                   "overrides, check it, and print it as YAML with its hash.")
    p.add_argument("--config", metavar="FILE", help="YAML config file (default: built-in defaults)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. train.epochs=3 data.train_subjects=[S1,S5]")
    p.add_argument("--hash", action="store_true", help="print only the config hash")
    p.add_argument("--commented", action="store_true",
                   help="annotate every key with its meaning and limits")
    p.set_defaults(func=_config)
