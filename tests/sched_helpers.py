"""Helpers for tests that start a real sched daemon with forked runners."""

from __future__ import annotations

import time
from pathlib import Path

import psutil

from tvmsched import api


def wait_for(predicate, timeout: float = 10.0, step: float = 0.01):
    """The first truthy value of ``predicate()``; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not reached in time")


def end_daemon_and_runners(path: Path, *, timeout: float = 30) -> None:
    """Stop the daemon of ``path``, then kill runners a killed daemon left behind (ours:
    checked by pid and start time)."""
    if api.daemon_pid(path) is not None:
        api.stop_daemon(path, timeout=timeout)
    for job in api.jobs(path):
        if job["runner_pid"]:
            try:
                proc = psutil.Process(job["runner_pid"])
                if abs(proc.create_time() - job["runner_started"]) < 0.01:
                    proc.kill()
            except psutil.NoSuchProcess:
                pass
