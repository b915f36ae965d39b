"""What superb reads from the user, within limits.

A benchmarks file is read only if it is a regular file of at most
``$SUPERB_MAX_CONFIG_BYTES`` (default 1 MiB): a FIFO would block forever and a device
would be read until memory runs out. Model files go through ``simpletvm.model.load_onnx``
(regular files of at most ``$SIMPLETVM_MAX_MODEL_BYTES``). A matrix may hold at most
``$SUPERB_MAX_POINTS`` points (default 10,000), or ``--max-points``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from . import SuperbError

MAX_CONFIG_BYTES_ENV = "SUPERB_MAX_CONFIG_BYTES"
DEFAULT_MAX_CONFIG_BYTES = 1024**2
MAX_POINTS_ENV = "SUPERB_MAX_POINTS"
DEFAULT_MAX_POINTS = 10_000


def env_limit(name: str, default: int) -> int:
    """A positive integer from the environment variable ``name``, or ``default``."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise SuperbError(
            f"{name}='{text}' is not a positive integer; set it to one such as {default}, "
            "or unset it"
        )
    return value


def file_kind(mode: int) -> str | None:
    """What a file that is not a regular file is ('a directory', 'a FIFO', ...)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "not a regular file"


def read_config(path: Path) -> str:
    """The text of a benchmarks file: a regular UTF-8 file within the size limit."""
    limit = env_limit(MAX_CONFIG_BYTES_ENV, DEFAULT_MAX_CONFIG_BYTES)
    try:
        _check_config_stat(path, os.stat(path), limit)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SuperbError(
            f"cannot read {path}: {exc.strerror or exc}; check the path and its permissions"
        ) from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)  # the path may have been swapped since the stat
        _check_config_stat(path, info, limit)
        data = fh.read(limit + 1)
    if len(data) > limit:  # it grew while it was read
        raise _too_big(path, f"more than {limit:,}", limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SuperbError(
            f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save the benchmarks file as UTF-8"
        ) from None


def _check_config_stat(path: Path, info: os.stat_result, limit: int) -> None:
    kind = file_kind(info.st_mode)
    if kind:
        raise SuperbError(
            f"{path} is {kind}, not a benchmarks TOML file; give the path of a regular file"
        )
    if info.st_size > limit:
        raise _too_big(path, f"{info.st_size:,}", limit)


def _too_big(path: Path, size: str, limit: int) -> SuperbError:
    return SuperbError(
        f"{path} is {size} bytes, over the limit of {limit:,} bytes for a "
        f"benchmarks file; check the path, or raise {MAX_CONFIG_BYTES_ENV}"
    )
