"""Two gloo processes on one CPU against one process on the same global batch: the machinery is
the conformance kit's (ssl_zoo/testing.py, re-exported here); what stays is the helper that
kills a ``--nproc`` launcher with its ranks.

Batch norm is replaced by Identity on both sides (torch's SyncBatchNorm needs CUDA), so what is
compared is exactly the cross-rank logic: gathers, all-reduced sums, queues, DDP averaging.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from ssl_zoo.testing import (  # noqa: F401 - re-exported for the tests that use them
    TinyNet,
    compare_one_vs_two,
    free_port,
    local_views,
    make_inputs,
    run_steps,
    strip_batch_norm,
)


def kill_launcher_and_ranks(proc) -> None:
    """SIGKILL a ``--nproc`` launcher (a Popen started with ``start_new_session``) and the rank
    processes it started. torchrun starts every rank in a session of its own, so killing the
    launcher's process group alone leaves the ranks running (and finishing the run)."""
    ranks = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == proc.pid:  # parent pid
            ranks.append(int(stat.parent.name))
    for pid in ranks:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for pid in ranks:  # gone before the caller looks at the run directory
        while Path(f"/proc/{pid}").exists() and "Z" not in _state(pid):
            time.sleep(0.01)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return "Z"
