"""Re-hash and re-count a shard directory against its manifest.json.

    python shards/verify.py DIR

Exit codes: 0 intact (prints a summary), 1 a problem (one line per problem), 2 bad input.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from meshrec.errors import report_errors  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="verify.py", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", metavar="DIR", help="shard directory written by shards/pack.py")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        from meshrec.shards.verify import verify

        problems, summary = verify(args.dir)
        if problems:
            for line in problems:
                print(line)
            print(f"{len(problems)} problem(s) in {args.dir}", file=sys.stderr)
            return 1
        print(summary)
        return 0

    return report_errors("verify", run)

if __name__ == "__main__":
    sys.exit(main())
