"""Bounds on what users may ask of sched, checked where a value comes in (the CLI, the
api, a --mock spec), so a value that would kill jobs or crash the daemon later is
refused at once with a ValueError that says what to give instead."""

from __future__ import annotations

import math

HEARTBEAT_S = 1.0  # seconds between a runner's heartbeats (the daemon's --heartbeat)
MAX_PRIORITY = 10**9  # |--priority|
MAX_SPLIT = 256  # --split: sub-jobs of one model
MAX_POOL = 65536  # slots of one cpu pool (--resource cpu=N), a MockJob's workers
MAX_DEVICES = 1024  # devices one --resource gpu=N makes
MAX_JOBS = 4096  # --max-jobs: runner processes alive at once
MAX_ROUNDS = 100_000  # a MockJob's rounds (four stages each)
MAX_PROBES = 100_000  # a MockJob's probe=N timings per measure stage
MAX_STAGE_SECONDS = 7 * 86400  # one MockJob stage
MAX_JOB_ID = 2**63 - 1  # SQLite's INTEGER


def check_int(name: str, value: int, low: int, high: int) -> int:
    """``value`` if ``low <= value <= high``, else a ValueError naming ``name``."""
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    return value


def check_seconds(name: str, value: float, *, above: float = 0.0) -> float:
    """``value`` if it is a finite number of seconds above ``above``, else a ValueError."""
    if not (math.isfinite(value) and value > above):
        raise ValueError(f"{name} must be a finite number of seconds above {above:g}, got {value}")
    return value


def check_daemon_limits(max_jobs: int, heartbeat: float, heartbeat_timeout: float) -> None:
    """The daemon's knobs: a heartbeat timeout under two beats would kill healthy runners."""
    check_int("--max-jobs", max_jobs, 1, MAX_JOBS)
    check_seconds("--heartbeat", heartbeat)
    check_seconds("--heartbeat-timeout", heartbeat_timeout, above=2 * heartbeat)
