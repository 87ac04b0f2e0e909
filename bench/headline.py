"""A bench script's last line, `key=value ...`, printed and, with `--json FILE`, appended to FILE
as one JSON row (bench, date, commit, machine, values) for bench/RESULTS.md's table."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def add_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="FILE", default="",
                        help="also append the headline as one JSON row to FILE")


def values(line: str) -> dict[str, object]:
    """`a=1.5 b=x` → {"a": 1.5, "b": "x"} (numbers where they parse)."""
    out: dict[str, object] = {}
    for item in line.split():
        key, _, text = item.partition("=")
        try:
            out[key] = float(text)
        except ValueError:
            out[key] = text
    return out


def machine() -> str:
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{os.cpu_count()} cores{gpu}, {platform.system()} {platform.machine()}"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                              capture_output=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def emit(line: str, json_path: str = "") -> None:
    print(line, flush=True)
    if not json_path:
        return
    row = {"bench": Path(sys.argv[0]).stem, "date": time.strftime("%Y-%m-%d %H:%M"),
           "commit": commit(), "machine": machine(),
           "load_average": round(os.getloadavg()[0], 2), "command": " ".join(sys.argv),
           "values": values(line)}
    with open(json_path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, sort_keys=True) + "\n")
