"""Named points where the fault suite (tests/faults) kills a process as a crash would, SIGKILL
from itself, at the one moment a test cannot reach from outside (a stage finished but not yet
recorded, a checkpoint half deleted, an export copied but not yet marked complete).

    crash_point("stage-done")    # nothing, unless LION_CRASH_AT=stage-done (or stage-done:2, its 2nd pass)

The variable is read where the point is, so a point in a Ray worker fires where the job's
runtime environment sets it (`ray job submit --runtime-env-json`). Nothing else reads it; a run
without it pays one dictionary lookup per point. Imports nothing of the package: any layer may
name a point.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "LION_CRASH_AT"
_passes: Counter[str] = Counter()


def crash_point(name: str) -> None:
    """SIGKILL this process when LION_CRASH_AT names this point, on its n-th pass (default 1)."""
    at = os.environ.get(ENV)
    if not at:
        return
    point, _, nth = at.partition(":")
    if point != name:
        return
    _passes[name] += 1
    if _passes[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
