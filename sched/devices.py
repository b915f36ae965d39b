"""Remote devices: TVM RPC servers the scheduler assigns to measure stages, one at a time.

A remote device is an exclusive resource (capacity 1) with an RPC address: a server
reached directly (``host:port``) or through a tracker and a key that only that server
registers under.  Devices share a *kind* (``--kind``); a job asks for a kind and each
of its measure stages is granted one specific server of it, instead of the tracker's
first-come queue.

Why only measure stages go remote: the engine measures candidates through MetaSchedule's
``RPCRunner`` (which honours the grant's server); its evaluate and finalize stages build
and time the whole model in-process, on the scheduler's host, so those stages are placed
on the local measurement device of the target (for ``llvm``, ``cpu-device``).  Builds
stay on the scheduler's host as cpu slots (docs/multihost.md says why).

A device that stops answering is marked down by the runner that found it; the daemon
probes it again with exponential backoff (a TCP connect to a direct server, the
tracker's summary for a keyed one: neither blocks on a busy server) and marks it up
when it answers.
"""

from __future__ import annotations

import contextlib
import re
import socket
from typing import Any

from .models import REMOTE_PREFIX, ResourceKind, remote_kind

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
_KIND = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
DEFAULT_KIND = "rpc"
DEFAULT_TIMEOUT = 30.0
PROBE_TIMEOUT = 1.0  # seconds a probe may block the daemon's loop
BACKOFF_FIRST = 2.0  # seconds until a down device is first probed again
BACKOFF_MAX = 120.0
REMOTE_STAGES = frozenset({"measure"})  # the stages the engine runs through the grant's RPC


def backoff(failures: int, *, first: float = BACKOFF_FIRST, limit: float = BACKOFF_MAX) -> float:
    """Seconds until the next probe after ``failures`` failed ones: 2, 4, 8 ... 120."""
    return min(limit, first * 2 ** max(0, failures))


def parse_address(text: str, what: str) -> str:
    """``HOST:PORT`` (host defaults to 127.0.0.1 when only ``:PORT`` is given)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} {text!r} is not HOST:PORT (e.g. 10.0.0.5:9190)")
    return f"{host or '127.0.0.1'}:{int(port)}"


def device_rpc(
    *,
    tracker: str | None = None,
    key: str | None = None,
    server: str | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """The grant's ``rpc`` dict for one server, validated (ValueError says what to fix)."""
    if (tracker is None) == (server is None):
        raise ValueError("give exactly one of --tracker HOST:PORT --key KEY or --server HOST:PORT")
    if timeout is not None and timeout <= 0:
        raise ValueError(f"--timeout must be positive, got {timeout}")
    rpc: dict[str, Any] = {}
    if server is not None:
        if key is not None:
            raise ValueError("--key goes with --tracker; a direct --server needs no key")
        rpc["server"] = parse_address(server, "--server")
    else:
        if not key or not key.strip():
            raise ValueError(
                "--tracker needs --key KEY: the key that only this one server registers under"
            )
        rpc["tracker"] = parse_address(tracker or "", "--tracker")
        rpc["key"] = key.strip()
    if timeout is not None:
        rpc["timeout"] = float(timeout)
    return rpc


def check_name(name: str) -> str:
    from .resources import kind_for_name

    if not _NAME.match(name):
        raise ValueError(
            f"device name {name!r} must start with a letter and use letters, digits, . _ -"
        )
    if kind_for_name(name) is not ResourceKind.DEVICE:  # cpu, cpu-device, gpuN are local
        raise ValueError(f"device name {name!r} is kept for local resources; choose another")
    return name


def check_kind(kind: str) -> str:
    if kind.startswith(REMOTE_PREFIX):
        kind = kind[len(REMOTE_PREFIX) :]
    if not _KIND.match(kind):
        raise ValueError(
            f"device kind {kind!r} must start with a letter and use letters, digits, . _ -"
        )
    return kind


def job_device_kind(kind: str) -> str:
    """The device kind stored on a job that measures on remote devices of ``kind``."""
    return remote_kind(check_kind(kind))


def is_remote(device_kind: str | None) -> bool:
    return bool(device_kind) and device_kind.startswith(REMOTE_PREFIX)


def probe(rpc: dict[str, Any], *, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None if the server answers now, else why not.

    Cheap and non-blocking on purpose (the daemon runs it in its loop): a TCP connect
    to a direct server (TVM's server drops a connection that sends no magic and goes
    on listening), or the tracker's summary for a keyed server.  It does not open an
    RPC session, which would wait behind a session already running on that server.
    """
    if "server" in rpc:
        return _tcp(rpc["server"], timeout)
    why = _tcp(rpc["tracker"], timeout)
    if why is not None:
        return f"tracker {why}"
    try:
        summary = _tracker_summary(rpc["tracker"], timeout)
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable now"
        return f"tracker {rpc['tracker']} did not answer: {exc}"[:200]
    wanted = f"server:{rpc['key']}"
    if any(str(s.get("key", "")) == wanted for s in summary.get("server_info", [])):
        return None
    return f"no server registered under key {rpc['key']} at {rpc['tracker']}"


def _tcp(address: str, timeout: float) -> str | None:
    host, _, port = address.rpartition(":")
    try:
        with contextlib.closing(socket.create_connection((host, int(port)), timeout=timeout)):
            return None
    except OSError as exc:
        return f"{address}: {exc.strerror or exc}"


def _tracker_summary(address: str, timeout: float) -> dict[str, Any]:
    """The tracker's summary, spoken directly (TVM's client has no timeout)."""
    import json
    import struct

    magic = 0x2F271  # RPC_TRACKER_MAGIC
    summary_code = 6  # TrackerCode.SUMMARY
    host, _, port = address.rpartition(":")
    with contextlib.closing(socket.create_connection((host, int(port)), timeout=timeout)) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack("<i", magic))
        if struct.unpack("<i", _recv(sock, 4))[0] != magic:
            raise RuntimeError("not a TVM RPC tracker")
        body = json.dumps([summary_code]).encode()
        sock.sendall(struct.pack("<i", len(body)) + body)
        size = struct.unpack("<i", _recv(sock, 4))[0]
        reply = json.loads(_recv(sock, size))
    if reply[0] != 0:  # TrackerCode.SUCCESS
        raise RuntimeError(f"unexpected reply {reply!r}")
    return reply[1]


def _recv(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data
