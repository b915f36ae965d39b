"""Start TVM's real RPC tracker and servers on 127.0.0.1 for tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.closing(socket.socket()) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def start_tracker() -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                             "--port", str(port), "--port-end", str(port + 1)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    _wait_port(port)
    return proc, port


def start_server(*, tracker_port: int | None = None, key: str = "") -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port",
           str(port), "--port-end", str(port + 1)]
    if tracker_port is not None:
        cmd += ["--tracker", f"127.0.0.1:{tracker_port}", "--key", key]
    # its own session: TVM's server listens from a child process, which we kill too
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    _wait_port(port)
    if tracker_port is not None:
        _wait_registered(tracker_port, key)
    return proc, port


def _wait_registered(tracker_port: int, key: str, timeout: float = 60.0) -> None:
    from tvm import rpc

    deadline = time.time() + timeout
    while time.time() < deadline:
        summary = rpc.connect_tracker("127.0.0.1", tracker_port).summary()
        if any(key in str(s.get("key", "")) for s in summary.get("server_info", [])):
            return
        time.sleep(0.3)
    raise TimeoutError(f"no server registered under key {key}")


def stop(proc: subprocess.Popen) -> None:
    """Kill the process and everything in its session (the listening child included)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
