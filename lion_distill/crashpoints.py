"""Named points where the fault suite (tests/faults) kills a process as a crash would, SIGKILL
from itself, at the one moment a test cannot reach from outside (a stage finished but not yet
recorded, a checkpoint half deleted, an export copied but not yet marked complete).

    crash_point("stage-done")    # nothing, unless LION_CRASH_AT names it: "stage-done", "stage-done:2"
                                 # (its 2nd pass in this process), or a list, "part-write,cleanup"

The variable is read where the point is, so a point in a Ray worker fires where the job's
runtime environment sets it (its env_vars). With LION_CRASH_ONCE (a file path) a point fires once
across processes (the first to create that file): a task Ray runs again is not killed again.
Nothing else reads them; a run without them pays one dictionary lookup per point. Imports nothing
of the package: any layer may name a point.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV, ONCE_ENV = "LION_CRASH_AT", "LION_CRASH_ONCE"
_passes: Counter[str] = Counter()


def crash_point(name: str) -> None:
    """SIGKILL this process when LION_CRASH_AT names this point, on its n-th pass (default 1)."""
    at = os.environ.get(ENV)
    if not at:
        return
    for point, _, nth in (entry.partition(":") for entry in at.split(",")):
        if point != name:
            continue
        _passes[name] += 1
        if _passes[name] == int(nth or 1) and _first(name):
            os.kill(os.getpid(), signal.SIGKILL)


def _first(name: str) -> bool:
    once = os.environ.get(ONCE_ENV)
    if not once:
        return True
    try:
        os.close(os.open(f"{once}.{name}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True
