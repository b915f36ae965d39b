"""Measuring through TVM's real RPC tracker and servers on 127.0.0.1."""

import pytest

from simpletvm.engine import DeviceUnavailable, TuningJob
from simpletvm.stages import StageKind

from .rpc_helpers import start_server, start_tracker, stop

pytestmark = pytest.mark.slow


def _run(job, grant):
    kinds = []
    while (request := job.next_stage()) is not None:
        job.run_stage(grant=grant if request.kind == StageKind.MEASURE else None)
        kinds.append(request.kind)
    return kinds


def test_measure_on_a_direct_server(tiny_model, tmp_path, fast_options):
    server, port = start_server()
    try:
        job = TuningJob.from_model(tiny_model, options=fast_options(), db_path=tmp_path / "r.db",
                                   measure_baselines=False)
        _run(job, {"rpc": {"server": f"127.0.0.1:{port}"}})
        assert job.result()["trials"] == 8
        assert all(t.best is not None and t.best < 1 for t in job.tasks if t.rounds)
    finally:
        stop(server)


def test_measure_through_the_tracker_by_key(tiny_model, tmp_path, fast_options):
    tracker, tport = start_tracker()
    server, _ = start_server(tracker_port=tport, key="box-a")
    try:
        job = TuningJob.from_model(tiny_model, options=fast_options(trials=4),
                                   db_path=tmp_path / "r.db", measure_baselines=False)
        _run(job, {"rpc": {"tracker": f"127.0.0.1:{tport}", "key": "box-a"}})
        assert job.result()["trials"] == 4
        assert job.tasks[0].best < 1
    finally:
        stop(server)
        stop(tracker)


def test_a_dead_server_leaves_the_stage_to_run_elsewhere(tiny_model, tmp_path, fast_options):
    alive, alive_port = start_server()
    dead, dead_port = start_server()
    stop(dead)
    try:
        job = TuningJob.from_model(tiny_model, options=fast_options(trials=4),
                                   db_path=tmp_path / "r.db", measure_baselines=False)
        while job.next_stage().kind != StageKind.MEASURE:
            job.run_stage()
        with pytest.raises(DeviceUnavailable, match=str(dead_port)):
            job.run_stage(grant={"rpc": {"server": f"127.0.0.1:{dead_port}", "timeout": 5}})
        assert job.next_stage().kind == StageKind.MEASURE  # nothing was lost
        job.run_stage(grant={"rpc": {"server": f"127.0.0.1:{alive_port}"}})
        _run(job, None)
        assert job.result()["trials"] == 4
    finally:
        stop(alive)


def test_a_wedged_server_does_not_hang_the_stage(tiny_model, tmp_path, fast_options):
    """A server that accepts connections and never answers: the stage gives up in time,
    and the pool it discards leaves no thread behind (one would block the interpreter's
    exit for ever: the executor's threads are joined at exit)."""
    import socket
    import threading
    import time

    before = set(threading.enumerate())
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        job = TuningJob.from_model(tiny_model, options=fast_options(trials=4),
                                   db_path=tmp_path / "w.db", measure_baselines=False)
        while job.next_stage().kind != StageKind.MEASURE:
            job.run_stage()
        start = time.monotonic()
        with pytest.raises(DeviceUnavailable, match="no answer"):
            job.run_stage(grant={"rpc": {"server": f"127.0.0.1:{port}", "timeout": 2}})
        assert time.monotonic() - start < 60
        assert job.next_stage().kind == StageKind.MEASURE
        job.close()
        deadline = time.monotonic() + 20
        while True:
            left = [t for t in threading.enumerate()
                    if t not in before and not t.daemon and t.is_alive()]
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert not left, f"threads that would block the interpreter's exit: {left}"
    finally:
        listener.close()
