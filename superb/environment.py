"""The environment a run was measured in, recorded so results can be compared honestly."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
from importlib import metadata
from pathlib import Path

PROJECT_DISTRIBUTION = "simpletvm-toolkit"
_REPO_ROOT = Path(__file__).resolve().parent.parent


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _run(command: list[str], cwd: Path | None = None) -> str | None:
    try:
        done = subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def gpus() -> list[str]:
    """GPU names and drivers from nvidia-smi; empty where there is none."""
    if shutil.which("nvidia-smi") is None:
        return []
    out = _run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    )
    return [line.strip() for line in out.splitlines() if line.strip()] if out else []


def git_revision(root: Path = _REPO_ROOT) -> str | None:
    """The commit, with '-dirty' when the tree has changes; None outside a checkout."""
    revision = _run(["git", "rev-parse", "HEAD"], cwd=root)
    if revision is None:
        return None
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root)
    return revision + ("-dirty" if status else "")


def capture() -> dict:
    return {
        "project_version": _version(PROJECT_DISTRIBUTION),
        "tvm_version": _version("apache-tvm"),
        "tvm_ffi_version": _version("apache-tvm-ffi"),
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "gpus": gpus(),
        "git_revision": git_revision(),
    }
