"""A training line every `train.log_every_steps` optimizer steps: step, loss, tokens/s and ETA.

Rank 0 writes the line where it trains (a Ray Train worker, on any node); the driver logs it, so
it reaches the terminal and `run_dir/logs/` like every other line of the job. A worker's own
output reaches the driver only with `--verbose` (Ray's `log_to_driver`), so the lines travel
through a small actor the driver polls instead.

    with relayed(log) as lines:              # the driver, around trainer.fit()
        ... loop_config["progress"] = lines
    lines.post.remote(progress_line(...))    # rank 0, every N steps
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager

POLL_S = 1.0


def progress_line(name: str, step: int, total: int, loss: float, tokens: float, seconds: float, steps: int) -> str:
    """`steps` optimizer steps (this attempt's: a resumed run counts from its checkpoint) took
    `seconds` and trained on `tokens` (prompt and target, every rank's)."""
    rate = tokens / seconds if seconds > 0 else 0.0
    eta = (total - step) * seconds / steps if steps else 0.0
    return f"{name}: step {step}/{total}, loss {loss:.4f}, {rate:,.0f} tokens/s, ETA {_duration(eta)}"


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s"


class Lines:
    """The lines rank 0 posted and the driver has not taken yet."""

    def __init__(self):
        self.lines: list[str] = []

    def post(self, line: str) -> None:
        self.lines.append(line)

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


@contextmanager
def relayed(log: logging.Logger):
    """A `Lines` actor on the driver's node whose lines a driver thread logs as they come."""
    import ray

    from lion_distill.driver_node import on_driver_node

    lines = ray.remote(num_cpus=0)(Lines).options(**on_driver_node()).remote()
    done = threading.Event()

    def drain() -> None:
        try:
            taken = ray.get(lines.take.remote())
        except ray.exceptions.RayError:  # the cluster going down under a failed training
            return
        for line in taken:
            log.info("%s", line)

    def poll() -> None:
        while not done.wait(POLL_S):
            drain()

    thread = threading.Thread(target=poll, name="training-lines", daemon=True)
    thread.start()
    try:
        yield lines
    finally:
        done.set()
        thread.join()
        drain()  # what rank 0 posted last
        ray.kill(lines)
