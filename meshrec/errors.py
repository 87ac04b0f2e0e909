"""The one exception type that user-facing commands turn into a one-line message."""

from __future__ import annotations

import os
import sys
from typing import Callable


class MeshrecError(Exception):
    """Bad input from the user (file, config, option): reported as one line, exit code 2."""


def report_errors(prog: str, run: Callable[[], int | None], *, on_interrupt: str = "interrupted") -> int:
    """Run a command body; a MeshrecError becomes one stderr line (exit 2), Ctrl-C exit 130, a
    closed output pipe exit 0."""
    try:
        return int(run() or 0)
    except MeshrecError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: {on_interrupt}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
