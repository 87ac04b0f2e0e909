"""Where the training loop's time goes: per log window, the seconds blocked waiting for the next
batch (the loader's `next()`) against the rest (compute: launching and, at the window's host
read, finishing the device work), and the process's age at its first optimizer step."""

from __future__ import annotations

import os
import time
from typing import Any, Iterator, Optional

_IMPORTED = time.time()


def process_age_s() -> float:
    """Seconds since this process started (Linux: /proc; elsewhere since meshrec.train.timing
    was imported, which is early in `meshrec train`)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            # Field 22, after the parenthesised command name: start time in clock ticks since boot.
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time() - _IMPORTED


class Window:
    """One log window's clock: `next_batch` times the wait for data, `close` splits the window."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start = time.perf_counter()
        self.data_s = 0.0
        self.steps = 0

    def next_batch(self, batches: Iterator[Any]) -> Optional[Any]:
        t = time.perf_counter()
        batch = next(batches, None)
        self.data_s += time.perf_counter() - t
        return batch

    def close(self) -> dict[str, float]:
        """{time_data_s, time_compute_s, data_wait_frac, elapsed_s} of the window; starts the
        next one."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        data = min(self.data_s, elapsed)
        row = {"time_data_s": data, "time_compute_s": elapsed - data,
               "data_wait_frac": data / elapsed, "elapsed_s": elapsed}
        self.reset()
        return row
