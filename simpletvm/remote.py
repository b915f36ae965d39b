"""Measuring on a remote device through TVM's RPC (tracker + servers).

The scheduler, not the tracker's first-come queue, decides which server measures a
batch. A grant names either a server address (``"server": "host:port"``), reached with
``rpc.connect``, or a tracker and a key that only one server registers under
(``"tracker": "host:port", "key": "..."``). Measurement itself is MetaSchedule's
``RPCRunner``; we only choose how its session is created.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class DeviceUnavailable(RuntimeError):
    """The granted remote device did not answer; the stage did not run and can move."""

    def __init__(self, device: str, reason: str) -> None:
        super().__init__(f"remote device {device} is unavailable: {reason}")
        self.device = device
        self.reason = reason


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or "127.0.0.1", int(port)


@dataclass(frozen=True)
class RemoteDevice:
    server: str | None = None
    tracker: str | None = None
    key: str | None = None
    session_timeout: float = 30.0

    @classmethod
    def from_grant(cls, grant: dict[str, Any]) -> RemoteDevice:
        return cls(server=grant.get("server"), tracker=grant.get("tracker"),
                   key=grant.get("key"), session_timeout=float(grant.get("timeout", 30.0)))

    @property
    def label(self) -> str:
        return self.server or f"{self.tracker}/{self.key}"

    def rpc_config(self):
        from tvm.s_tir.meta_schedule.runner import RPCConfig

        host, port = _split(self.server or self.tracker)
        return RPCConfig(tracker_host=host, tracker_port=port,
                         tracker_key=self.key or "direct",
                         session_timeout_sec=int(self.session_timeout))

    def probe(self, timeout: float = 5.0) -> str | None:
        """None if a session can be opened now, else the reason it cannot.

        The attempt runs in a daemon thread: ``rpc.connect`` has no handshake timeout,
        so a server that accepts and never answers must not hang the caller.
        """
        import threading

        from tvm import rpc

        outcome: list[str | None] = []

        def attempt() -> None:
            try:
                if self.server:
                    host, port = _split(self.server)
                    rpc.connect(host, port, session_timeout=timeout)
                else:
                    host, port = _split(self.tracker)
                    request_by_key(host, port, self.key, wait=timeout, session_timeout=timeout)
            except Exception as exc:  # noqa: BLE001 - any failure means "not reachable now"
                text = str(exc).strip()
                outcome.append(text.splitlines()[-1][:200] if text else repr(exc))
                return
            outcome.append(None)

        thread = threading.Thread(target=attempt, daemon=True, name="rpc-probe")
        thread.start()
        thread.join(timeout + 1)
        if not outcome:
            return f"no answer within {timeout + 1:g} s"
        return outcome[0]


def request_by_key(host: str, port: int, key: str, *, wait: float, session_timeout: float):
    """A session on the server registered under ``key``, or an error within ``wait`` s.

    TVM's tracker holds a request for a key no server holds until one appears, and
    ``RPCRunner`` puts no timeout on its workers, so a dead keyed server would hang the
    measure stage for ever: refuse at once when the summary lacks the key, and bound
    the wait for a match otherwise.
    """
    from tvm import rpc

    tracker = rpc.connect_tracker(host, port)
    servers = tracker.summary().get("server_info", [])
    if not any(str(s.get("key", "")) == f"server:{key}" for s in servers):
        raise RuntimeError(f"no server registered under key {key} at {host}:{port}")
    tracker._sock.settimeout(wait)  # noqa: SLF001 - TrackerSession has no timeout option
    return tracker.request(key, priority=1, session_timeout=session_timeout, max_retry=1)


def _create_session(rpc_config):
    """Runs in the runner's worker: a direct connect, or the tracker for one key."""
    from tvm import rpc

    if rpc_config.tracker_key == "direct":
        return rpc.connect(rpc_config.tracker_host, rpc_config.tracker_port,
                           session_timeout=rpc_config.session_timeout_sec)
    return request_by_key(rpc_config.tracker_host, rpc_config.tracker_port,
                          rpc_config.tracker_key, wait=rpc_config.session_timeout_sec,
                          session_timeout=rpc_config.session_timeout_sec)


def make_rpc_runner(device: RemoteDevice, evaluator_config):
    from tvm.s_tir.meta_schedule.runner import RPCRunner

    return RPCRunner(rpc_config=device.rpc_config(), evaluator_config=evaluator_config,
                     f_create_session=_create_session)


def collect_results(futures, remote: RemoteDevice, *, on_wedged) -> list:
    """Results of an RPC batch, bounded in time: TVM's RPCRunnerFuture waits for ever.

    A server that accepts the connection and then never answers (a wedged board) would
    hang the stage; past the session timeout we give up on the rest of the batch and
    call ``on_wedged(remote)``, which discards the runner whose worker is stuck.
    """
    import time

    from tvm.s_tir.meta_schedule.runner import RunnerResult

    out = []
    for index, future in enumerate(futures):
        deadline = time.monotonic() + remote.session_timeout + 5
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not future.done():
            message = (f"RPCRunner: no answer from {remote.label} within "
                       f"{remote.session_timeout + 5:g} s")
            out += [RunnerResult(None, message)] * (len(futures) - index)
            on_wedged(remote)
            break
        out.append(future.result())
    return out


def discard_pool(pool) -> None:
    """Kill a PopenPool whose worker hangs in a socket, without blocking on it.

    TVM's ``PopenPoolExecutor.shutdown`` takes the pool's lock and then closes each
    worker's pipes, which blocks while another thread reads from them; if it blocks or
    raises, the lock stays taken, the next queued item waits on it for ever, and the
    interpreter never exits (it joins every executor thread at exit). So we never take
    that lock: queued items are cancelled first, then the worker processes are killed,
    which gives a reader blocked in ``recv`` its EOF and lets its thread finish.
    """
    threadpool = getattr(pool, "_threadpool", None)
    if threadpool is not None:
        threadpool.shutdown(wait=False, cancel_futures=True)
    for worker in list(getattr(pool, "_worker_map", {}).values()):
        proc = getattr(worker, "_proc", None)
        if proc is not None:
            try:
                proc.kill()
            except OSError:
                pass
