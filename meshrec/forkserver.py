"""The process's forkserver, shared by every pool of worker processes in meshrec (the torch
loader's workers, the packing workers).

Python runs one forkserver per process, and its preload list only counts when it starts: a
`set_forkserver_preload` after that changes nothing. A pool that started it bare (packing the
generated data before a run) left every later loader worker to import torch itself, seconds
each. So every pool takes its context here, with one list: the slow imports are made once, in
the server, and workers fork ready whichever pool comes first. Names, not imports: this leaf
module depends on nothing.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext

# torch and torchvision (through the torch loader) and the packing workers' modules.
PRELOAD = ["meshrec.data.torch_loader", "meshrec.shards.pack"]


def context() -> BaseContext:
    """The forkserver context, with the shared preload list set (for a server not yet started)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def start() -> None:
    """Start the forkserver now (it imports PRELOAD: seconds), e.g. while a model is built."""
    from multiprocessing import forkserver as server

    context()
    server.ensure_running()
