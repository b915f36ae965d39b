"""Remote devices (TVM RPC servers assigned by the scheduler) and SLA jobs under the daemon."""

import contextlib
import json
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simpletvm.spec import JobSpec
from tvmsched import api, render
from tvmsched.analysis import exclusive_overlaps, resource_intervals
from tvmsched.cli import main
from tvmsched.daemon import Daemon, DaemonConfig
from tvmsched.devices import backoff, probe
from tvmsched.jobs import parse_duration
from tvmsched.models import Pending, Resource, ResourceKind
from tvmsched.registry import Registry
from tvmsched.resources import detect
from tvmsched.strategies import Snapshot, get_strategy

from .rpc_helpers import free_port, start_server, start_tracker, stop
from .sched_helpers import wait_for
from .tvm_helpers import FAST_SEARCH

FAST = FAST_SEARCH
LOCAL = ["cpu=2", "cpu-device=1"]


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "sched.db"
    yield path
    if api.daemon_pid(path) is not None:
        api.stop_daemon(path, timeout=60)


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# -- registration and the CLI -----------------------------------------------------------
def test_device_add_list_remove(capsys, db):
    code, out, _ = run(capsys, "device", "add", "box-a", "--tracker", "10.0.0.1:9190",
                       "--key", "box-a", "--kind", "arm", "--db", db)  # fmt: skip
    assert code == 0 and "added device box-a" in out
    assert run(capsys, "device", "add", "box-b", "--server", ":9091", "--kind", "arm",
               "--timeout", "5", "--db", db)[0] == 0  # fmt: skip
    code, out, _ = run(capsys, "device", "list", "--json", "--db", db)
    listed = {d["name"]: d for d in json.loads(out)}
    assert listed["box-a"]["rpc"] == {"tracker": "10.0.0.1:9190", "key": "box-a"}
    assert listed["box-b"]["rpc"] == {"server": "127.0.0.1:9091", "timeout": 5.0}
    assert all(d["kind"] == "arm" and d["up"] for d in listed.values())
    assert "box-a" in run(capsys, "device", "list", "--db", db)[1]
    # an exclusive resource of capacity 1, kept when the daemon replaces local resources
    registry = Registry(db)
    registry.replace_resources(detect(LOCAL))
    res = registry.resources()
    assert res["box-a"] == Resource("box-a", ResourceKind.REMOTE, 1, True, group="arm")
    assert {"cpu", "cpu-device", "box-a", "box-b"} == set(res)
    assert run(capsys, "device", "remove", "box-a", "--db", db)[0] == 0
    assert [d["name"] for d in api.devices(db)] == ["box-b"]
    assert "device_add" in {e["kind"] for e in registry.events()}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["device", "add", "x"], "exactly one of --tracker"),
        (["device", "add", "x", "--tracker", ":9190"], "needs --key"),
        (["device", "add", "x", "--server", "nohost"], "is not HOST:PORT"),
        (["device", "add", "x", "--server", ":1", "--key", "k"], "--key goes with --tracker"),
        (["device", "add", "gpu0", "--server", ":1"], "kept for local resources"),
        (["device", "add", "x", "--server", ":1", "--kind", "a b"], "device kind 'a b'"),
        (["device", "remove", "nope"], "no remote device named 'nope'"),
        (["submit", "m.onnx", "--device-kind", "a/b"], "device kind 'a/b'"),
        (["submit", "m.onnx", "--sla-ms", "1", "--deadline", "soon"], "is not like 90s"),
        (["submit", "m.onnx", "--option", "population_size"], "is not NAME=VALUE"),
    ],
)
def test_bad_device_and_sla_input_is_one_error_line(capsys, db, tiny_model, args, message):
    model = tiny_model
    code, _, err = run(capsys, *[str(model) if a == "m.onnx" else a for a in args], "--db", db)
    assert code == 2, err
    assert err.startswith("Error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_device_commands_have_help(capsys):
    for command in ("add", "list", "remove"):
        code, out, _ = run(capsys, "device", command, "--help")
        assert code == 0 and "Usage" in out


def test_a_duplicate_name_is_refused(db):
    api.add_device(db, "box", server=":1")
    with pytest.raises(ValueError, match="already exists"):
        api.add_device(db, "box", server=":2")


@given(
    st.lists(
        st.tuples(st.integers(1, 999), st.sampled_from("hms")), min_size=1, max_size=3,
        unique_by=lambda p: p[1],
    )
)  # fmt: skip
def test_durations_parse(parts):
    text = "".join(f"{n}{u}" for n, u in parts)
    assert parse_duration(text) == sum(n * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


@pytest.mark.parametrize("text", ["", "0", "-5", "5x", "m", "1h-2m", "inf", "nan"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError):
        parse_duration(text)


# -- placement: which stage goes where ----------------------------------------------------
def _snapshot(down=None):
    resources = {r.name: r for r in detect(LOCAL)}
    for name in ("box-a", "box-b"):
        resources[name] = Resource(name, ResourceKind.REMOTE, 1, True, group="arm",
                                   down=(down or {}).get(name))  # fmt: skip
    resources["other"] = Resource("other", ResourceKind.REMOTE, 1, True, group="x86")
    return resources


def _pending(request_id, kind, needs, device_kind="remote:arm", info=None):
    return Pending(request_id, request_id, kind, needs, float(request_id), 0, device_kind,
                   info or {})  # fmt: skip


def test_measure_stages_get_distinct_servers_of_their_kind():
    snap = Snapshot(_snapshot(), [_pending(i, "measure", {"device": 1}) for i in (1, 2, 3)],
                    [], 0.0)  # fmt: skip
    decision = get_strategy("interleaved").decide(snap)
    assert [g[1] for g in decision.grants] == [{"box-a": 1}, {"box-b": 1}]
    # both were granted in this very pass: no lease names a holder yet
    assert decision.waits[3] == "waiting for a device (box-a reserved, box-b reserved)"


def test_a_down_server_is_skipped_and_all_down_says_why():
    snap = Snapshot(_snapshot({"box-a": "connection refused"}),
                    [_pending(1, "measure", {"device": 1})], [], 0.0)  # fmt: skip
    assert get_strategy("interleaved").decide(snap).grants[0][1] == {"box-b": 1}
    both = {"box-a": "connection refused", "box-b": "timed out"}
    snap = Snapshot(_snapshot(both), [_pending(1, "measure", {"device": 1})], [], 0.0)
    decision = get_strategy("interleaved").decide(snap)
    assert decision.grants == []
    assert decision.waits[1] == (
        "no remote:arm device is up (box-a: connection refused; box-b: timed out)"
    )


def test_local_stages_of_a_remote_job_stay_on_the_host():
    # evaluate/finalize run the whole model in-process: the local cpu-device, every cpu slot
    evaluate = _pending(1, "evaluate", {"cpu": 1, "device": 1},
                        info={"device_kind": "cpu-device"})  # fmt: skip
    mock_any = _pending(2, "measure", {"device": 1}, device_kind=None)
    decision = get_strategy("interleaved").decide(Snapshot(_snapshot(), [evaluate], [], 0.0))
    assert decision.grants[0][1] == {"cpu-device": 1, "cpu": 2}
    decision = get_strategy("interleaved").decide(Snapshot(_snapshot(), [mock_any], [], 0.0))
    assert decision.grants[0][1] == {"cpu-device": 1, "cpu": 2}  # never a remote device


# -- failure handling in the registry and the daemon ------------------------------------
def test_device_unavailable_marks_down_and_asks_again(db):
    registry = Registry(db)
    registry.replace_resources(detect(LOCAL))
    api.add_device(db, "box-a", server=":1")
    api.add_device(db, "box-b", server=":2")
    job = registry.submit("tvm", {"model": "m"}, device_kind="remote:rpc")
    attempt = registry.claim_job(job)
    first = registry.request_stage(job, attempt, 3, "measure", {"device": 1}, {"task": "t0"})
    from tvmsched.dispatch import Dispatcher

    Dispatcher(registry).dispatch()
    grant = registry.poll_grant(first)
    assert grant["rpc"] == {"server": "127.0.0.1:1", "name": "box-a"}
    again = registry.device_unavailable(grant["epoch"], "box-a", "refused", backoff=2.0, now=10)
    assert registry.devices()[0]["down_reason"] == "refused"
    assert registry.devices()[0]["retry_at"] == 12.0
    assert registry.job(job)["stages_done"] == 0  # the stage was not recorded as done
    Dispatcher(registry).dispatch()
    regrant = registry.poll_grant(again)
    assert regrant["rpc"]["name"] == "box-b"
    assert [p.request_id for p in registry.pending()] == []
    kinds = [e["kind"] for e in registry.events(job_id=job)]
    assert "device_down" in kinds


def test_daemon_probes_a_down_device_with_backoff_and_marks_it_up(db):
    assert [backoff(n) for n in range(8)] == [2, 4, 8, 16, 32, 64, 120, 120]
    port = free_port()
    api.add_device(db, "box", server=f":{port}")
    registry = Registry(db)
    daemon = Daemon(db, DaemonConfig(resources=detect(LOCAL)))
    daemon.initialize(now=100.0)
    try:
        with registry._write() as conn:  # as a runner's failed stage leaves it
            conn.execute("UPDATE resources SET down_reason = 'refused', down_since = 100,"
                         " failures = 1, retry_at = 102 WHERE name = 'box'")  # fmt: skip
        daemon.loop(now=101.0)
        assert registry.devices()[0]["failures"] == 1  # not due yet
        daemon.loop(now=102.5)
        device = registry.devices()[0]
        assert device["failures"] == 2 and device["retry_at"] == pytest.approx(102.5 + 4)
        assert "127.0.0.1" in device["down_reason"]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(1)
        with contextlib.closing(sock):
            daemon.loop(now=106.6)
        device = registry.devices()[0]
        assert device["up"] and device["failures"] == 2  # reset once a stage succeeds
        assert "device_up" in [e["kind"] for e in registry.events()]
    finally:
        daemon.shutdown()


def test_probe_speaks_to_a_real_tracker():
    tracker, port = start_tracker()
    try:
        # a generous timeout: the tracker's event loop may still be starting
        why = probe({"tracker": f"127.0.0.1:{port}", "key": "k"}, timeout=15)
        assert "no server registered under key k" in why
        assert probe({"tracker": f"127.0.0.1:{free_port()}", "key": "k"}).startswith("tracker")
    finally:
        stop(tracker)


# -- real TVM, real RPC servers, the daemon -------------------------------------------
def _measure_ends(registry):
    return [e for e in registry.events() if e["kind"] == "end" and e["stage"] == "measure"]


@pytest.mark.slow
def test_tuning_across_two_servers_survives_losing_one(db, tiny_model, capsys):
    tracker, tport = start_tracker()
    keyed, _ = start_server(tracker_port=tport, key="box-a")
    direct, dport = start_server()
    servers = {"box-a": keyed, "box-b": direct}
    try:
        api.add_device(db, "box-a", tracker=f"127.0.0.1:{tport}", key="box-a", kind="cpu1",
                       timeout=15)  # fmt: skip
        api.add_device(db, "box-b", server=f"127.0.0.1:{dport}", kind="cpu1", timeout=15)
        api.start_daemon(db, resources=LOCAL)
        jobs = [
            api.submit(
                db,
                model=str(tiny_model),
                trials=8,
                per_round=4,
                device_kind="cpu1",
                options=FAST,
                seed=seed,
            )  # fmt: skip
            for seed in (1, 2)
        ]
        registry = Registry(db)
        # box-a (registered first) takes the first measure; kill it once it has measured:
        # the next measure granted to it finds its key gone from the tracker
        wait_for(lambda: any("box-a" in e["resources"] for e in _measure_ends(registry)), 120, 0.2)
        killed = "box-a"
        stop(servers[killed])
        assert api.wait(db, jobs, timeout=240) == {j: "done" for j in jobs}, [
            api.job(db, j)["error"] for j in jobs
        ]
        for job in jobs:
            assert api.job(db, job)["result"]["trials"] == 8
        # the lost server was marked down with its reason, and the stage moved on
        downs = [e for e in registry.events() if e["kind"] == "device_down"]
        assert downs and all(next(iter(e["resources"])) == killed for e in downs)
        listed = {d["name"]: d for d in api.devices(db)}
        assert not listed[killed]["up"] and listed[killed]["down_reason"]
        status = json.loads(run(capsys, "status", "--json", "--db", db)[1])
        shown = {r["name"]: r for r in status["resources"]}
        # the daemon's backoff probes may refresh the reason between the two reads
        assert "box-a" in shown[killed]["down"] and "box-a" in listed[killed]["down_reason"]
        # no two stages ever held one server at once; measures ran only on the servers
        rows = resource_intervals(registry.stage_intervals(), held=True)
        assert exclusive_overlaps(rows, registry.resources()) == []
        measured = {r["resource"] for r in rows if r["stage"] == "measure"}
        assert measured == {"box-a", "box-b"}
        after = [r for r in rows if r["resource"] == killed and r["start"] > downs[-1]["ts"]]
        assert after == []  # never granted again while down
        # evaluate/finalize stayed on the host's measurement device
        assert {r["resource"] for r in rows if r["stage"] == "finalize"} >= {"cpu-device"}
    finally:
        for proc in (*servers.values(), tracker):
            stop(proc)


@pytest.mark.slow
def test_sla_job_status_shows_target_latency_and_trend(db, tiny_model, capsys):
    api.start_daemon(db, resources=LOCAL)
    options = [x for k, v in FAST.items() for x in ("--option", f"{k}={v}")]
    code, out, err = run(capsys, "submit", tiny_model, "--sla-ms", "1000", "--max-trials", "8",
                         "--deadline", "10m", "--per-round", "4", "--json", "--db", db,
                         *options)  # fmt: skip
    assert code == 0, err
    job = json.loads(out)["id"]
    spec = JobSpec.from_json(api.job(db, job)["spec"]["job"]).options
    assert (spec.sla_ms, spec.trials, spec.deadline_seconds) == (1000.0, 8, 600.0)
    assert api.wait(db, job, timeout=180) == {job: "done"}, api.job(db, job)["error"]
    result = api.job(db, job)["result"]
    assert result["trials"] == 0 and result["sla_met"] and result["stop_reason"] == "sla met"
    status = json.loads(run(capsys, "status", "--json", "--db", db)[1])
    sla = next(j for j in status["jobs"] if j["id"] == job)["sla"]
    assert sla["sla_ms"] == 1000.0 and sla["met"] and sla["best_ms"] == result["best_ms"]
    assert len(sla["trend"]) == 1 and 0 < sla["trend"][0] <= 1000.0  # one evaluation
    text = render.sla_text(sla)
    assert text.startswith("target 1000.000 ms, best ") and "(met), trend " in text
    assert "┃ sla" in run(capsys, "status", "--db", db)[1]  # the jobs table's sla column


# -- a model split at the task level ------------------------------------------------------
def test_split_queues_a_parent_after_its_sub_jobs(db, tiny_model):
    model = tiny_model
    parent = api.submit(db, model=str(model), trials=9, split=3, name="big")
    jobs = {j["id"]: j for j in api.jobs(db)}
    children = [j for j in jobs.values() if j["parent_id"] == parent]
    assert [c["spec"]["task_split"] for c in children] == [[0, 3], [1, 3], [2, 3]]
    assert [JobSpec.from_json(c["spec"]["job"]).options.trials for c in children] == [3, 3, 3]
    assert JobSpec.from_json(jobs[parent]["spec"]["job"]).options.trials == 0
    assert jobs[parent]["wait_reason"] == "waiting for its 3 sub-jobs to finish"
    registry = Registry(db)
    assert [j["id"] for j in registry.queued_jobs(10)] == [c["id"] for c in children]
    for child in children:
        registry.cancel(child["id"])
    assert [j["id"] for j in registry.queued_jobs(10)] == [parent]
    with pytest.raises(ValueError, match="does not combine with --sla-ms"):
        api.submit(db, model=str(model), sla_ms=1.0, split=2)


@pytest.mark.slow
def test_split_sub_jobs_tune_distinct_tasks_then_the_parent_builds(db, cnn_model):
    api.start_daemon(db, resources=LOCAL)
    parent = api.submit(db, model=str(cnn_model), trials=8, per_round=4, split=2,
                        options=FAST)  # fmt: skip
    children = [j["id"] for j in api.jobs(db) if j["parent_id"] == parent]
    states = api.wait(db, [parent, *children], timeout=300)
    assert set(states.values()) == {"done"}, [api.job(db, j)["error"] for j in states]
    for child in children:
        assert api.job(db, child)["result"]["trials"] == 4
    result = api.job(db, parent)["result"]
    assert result["trials"] == 0 and Path(result["artifact"]).is_file()
    # each sub-job tuned a task of its own: the parent found two tasks in the shared db
    assert result["served_from_db"]["tasks"] == 2
    events = Registry(db).events()
    done = max(e["ts"] for e in events if e["kind"] == "job_done" and e["job_id"] in children)
    started = min(e["ts"] for e in events if e["kind"] == "runner_start" and e["job_id"] == parent)
    assert started >= done
