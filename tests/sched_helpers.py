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


def registry_with_jobs(db, count: int = 3) -> list:
    """A registry holding ``count`` mock jobs, closed (checkpointed); its job rows."""
    from tvmsched.registry import Registry

    registry = Registry(db)
    for seed in range(count):
        registry.submit("mock", {"mock": f"rounds=1,seed={seed}"}, name=f"job{seed}")
    rows = registry.list_jobs()
    registry.close()
    return rows


def job_rows(db) -> list:
    from tvmsched.registry import Registry

    registry = Registry(db)
    try:
        return registry.list_jobs()
    finally:
        registry.close()


def file_bytes(directory: Path) -> dict[str, bytes]:
    """Every file's bytes: what a failing command must leave as it was."""
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}
