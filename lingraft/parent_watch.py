"""Worker processes that end with their parent.

A `multiprocessing` child whose parent is killed (SIGKILL, the OOM killer, a cancelled job) is
not told: it finishes its task, takes queued ones and holds its memory. `exit_with_parent` starts
a watchdog thread that ends the child as soon as the parent is gone.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from multiprocessing.connection import wait

_POLL_S = 1.0


def exit_with_parent() -> None:
    """Call in a multiprocessing child (a pool initializer): the child exits when its parent dies.

    The parent's sentinel becomes ready the moment it dies; the parent-pid check covers a parent
    that forked a process which inherited, and so keeps open, the sentinel's other end."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        while not wait([parent.sentinel], timeout=_POLL_S) and os.getppid() == parent.pid:
            pass
        print(f"worker {os.getpid()}: parent process {parent.pid} is gone; exiting", file=sys.stderr, flush=True)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
