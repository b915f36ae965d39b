"""Hosts on one machine: the daemon and three agents (``sched agent``, cpu=1 each) on a
PostgreSQL registry, running MockJobs; what each host runs, and what survives a killed
or stopped agent. The failure table in docs/multihost.md names these tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tvmsched import api
from tvmsched.invariants import check_events
from tvmsched.models import Pending, Resource, ResourceKind
from tvmsched.registry import Registry
from tvmsched.strategies import Interleaved, Snapshot

from .pg_helpers import Partition

T = 2.0  # the host timeout the daemon runs with here
pytestmark = pytest.mark.slow


class Cluster:
    """A daemon that runs no jobs itself and agents named a, b, c."""

    def __init__(self, url: str, tmp_path, names=("a", "b", "c"), via=None) -> None:
        self.url, self.tmp_path = url, tmp_path
        self.via = via or {}  # an agent's own URL of the registry (through a Partition)
        api.start_daemon(url, resources={"cpu": 2},
                         extra=["--no-local-jobs", "--host-timeout", str(T)])  # fmt: skip
        self.agents: dict[str, subprocess.Popen] = {}
        for name in names:
            self.start_agent(name)
        self.registry = Registry(url)
        deadline = time.monotonic() + 30
        while len(self.up()) < len(names) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.up()) == len(names), self.registry.hosts()
        self.resources = self.registry.resources()  # while every host is up

    def start_agent(self, name: str) -> None:
        log = open(self.tmp_path / f"agent-{name}.log", "a")
        self.agents[name] = subprocess.Popen(
            [sys.executable, "-m", "tvmsched.agent", "--name", name,
             "--resource", "cpu=1", "--resource", "cpu-device=1"],
            env=dict(os.environ, SCHED_DB=self.via.get(name, self.url)), stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def up(self) -> list[str]:
        return [h["name"] for h in self.registry.hosts() if h["state"] == "up"]

    def log(self, name: str) -> str:
        return (self.tmp_path / f"agent-{name}.log").read_text()

    def close(self) -> None:
        for proc in self.agents.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
        for proc in self.agents.values():
            proc.wait(30)
        api.stop_daemon(self.url)


@pytest.fixture
def cluster(pg_server, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    found = Cluster(pg_server.database(), tmp_path)
    try:
        yield found
    finally:
        found.close()


def _until(check, timeout: float, step: float = 0.05) -> bool:
    """Wait up to ``timeout`` seconds for ``check()``; its last answer."""
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(step)
    return check()


def _alive(pids) -> list[int]:
    return [pid for pid in pids if psutil.pid_exists(pid)
            and psutil.Process(pid).status() not in ("zombie",)]  # fmt: skip


def _finished_cleanly(cluster, ids) -> None:
    """Every job done, no exclusive device with two holders, no host's pool over-granted."""
    api.wait(cluster.url, ids, timeout=90, poll=0.1)
    assert {j["state"] for j in api.jobs(cluster.url)} == {"done"}
    assert check_events(cluster.registry.events(), cluster.resources, strategy="interleaved") == []


def _grants(registry, job_ids) -> list[dict]:
    return [e for e in registry.events() if e["kind"] == "grant" and e["job_id"] in job_ids]


def _host_of(resources: dict) -> str:
    return next(name.split("@")[1] for name in resources if "@" in name)


def test_the_agents_share_the_jobs_and_no_host_is_oversubscribed(cluster):
    # searches of different lengths, so hosts do not move in lockstep
    ids = [api.submit(cluster.url, mock=f"rounds=3,search={0.1 * (i + 1):.1f},build=0.1,"
                      "measure=0.1,device=cpu") for i in range(6)]  # fmt: skip
    api.wait(cluster.url, ids, timeout=60, poll=0.1)
    jobs = {j["id"]: j for j in api.jobs(cluster.url)}
    assert {jobs[i]["state"] for i in ids} == {"done"}
    assert {jobs[i]["host"] for i in ids} == {"a", "b", "c"}
    shown = subprocess.run(
        [sys.executable, "-m", "tvmsched.cli", "status", "--db", cluster.url],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, COLUMNS="200"),
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "agents' hosts" in shown.stdout and "host" in shown.stdout
    elsewhere = subprocess.run(  # from another host: no local pid file, the lock is seen
        [sys.executable, "-m", "tvmsched.cli", "status", "--json"],
        capture_output=True, text=True, timeout=60,
        env=dict(os.environ, SCHED_DB=cluster.url, XDG_STATE_HOME=str(cluster.tmp_path / "b")),
    )  # fmt: skip
    daemon = json.loads(elsewhere.stdout)["daemon"]
    assert daemon["running"] and daemon["elsewhere"], daemon
    events = cluster.registry.events()
    assert check_events(events, cluster.resources, strategy="interleaved") == []
    for grant in _grants(cluster.registry, set(ids)):  # a job's stages stay on its host
        assert _host_of(grant["resources"]) == jobs[grant["job_id"]]["host"], grant
    # a measurement on one host leaves the other hosts' cpu stages running
    intervals = cluster.registry.stage_intervals()
    measured = [i for i in intervals if i["stage"] == "measure"]
    assert any(
        m["granted"] < other["released"] and other["granted"] < m["released"]
        and _host_of(other["resources"]) != _host_of(m["resources"])
        for m in measured for other in intervals if other["stage"] in ("search", "build")
    ), "no measurement overlapped another host's search"  # fmt: skip


def _runner_pids(registry, host) -> dict[int, int]:
    return {j["id"]: j["runner_pid"] for j in registry.running_jobs(host=host) if j["runner_pid"]}


def _wait_running_on(cluster, host, timeout=30.0) -> dict[int, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _runner_pids(cluster.registry, host)
        if found and any(lease.job_id in found for lease in cluster.registry.active_leases()):
            return found
        time.sleep(0.02)
    raise AssertionError(f"no job of host {host} got a stage")


def test_a_killed_agents_jobs_resume_on_another_host_within_T_plus_2_s(cluster):
    ids = [api.submit(cluster.url, mock="rounds=6,search=0.3,build=0.1,measure=0.1,device=cpu")
           for _ in range(3)]  # fmt: skip
    victims = _wait_running_on(cluster, "a")
    killed = time.time()
    cluster.agents["a"].kill()
    cluster.agents["a"].wait()
    # at once: fencing (>= T - T/4 after the agent's last beat) would kill them later
    deadline = time.monotonic() + 1.0
    while any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
              for pid in victims.values()) and time.monotonic() < deadline:  # fmt: skip
        time.sleep(0.02)
    alive = [pid for pid in victims.values() if psutil.pid_exists(pid)
             and psutil.Process(pid).status() != "zombie"]  # fmt: skip
    assert not alive, "runners outlived their agent"
    api.wait(cluster.url, ids, timeout=90, poll=0.1)
    jobs = {j["id"]: j for j in api.jobs(cluster.url)}
    for job_id in victims:
        assert jobs[job_id]["state"] == "done" and jobs[job_id]["host"] in {"b", "c"}
        moved = [g["ts"] for g in _grants(cluster.registry, {job_id})
                 if g["ts"] > killed and _host_of(g["resources"]) != "a"]  # fmt: skip
        assert moved, f"job {job_id} never resumed elsewhere"
        assert moved[0] - killed <= T + 2, f"job {job_id} resumed {moved[0] - killed:.1f} s later"
    hosts = {h["name"]: h for h in cluster.registry.hosts()}
    assert hosts["a"]["state"] == "fenced"
    assert not [r for r in cluster.registry.resources() if r.endswith("@a")]


def test_a_stopped_agent_is_fenced_its_runners_stop_and_it_rejoins(cluster):
    # searches long enough that only a taken-back lease can stop them in time
    ids = [api.submit(cluster.url, mock="rounds=1,search=6,build=0.1,measure=0.1,device=cpu")
           for _ in range(3)]  # fmt: skip
    victims = _wait_running_on(cluster, "a")
    os.kill(cluster.agents["a"].pid, signal.SIGSTOP)
    assert _until(lambda: "a" not in cluster.up(), T + 5), "a stopped agent was never fenced"
    time.sleep(1.5)  # a runner whose lease was taken back stops at its next heartbeat
    assert not _alive(victims.values()), "a fenced host's runner kept running"
    os.kill(cluster.agents["a"].pid, signal.SIGCONT)
    assert _until(lambda: "a" in cluster.up(), 10), "the continued agent did not register again"
    assert "fenced this host" in cluster.log("a")
    _finished_cleanly(cluster, ids)


def test_a_partitioned_agent_kills_its_runners_before_the_daemon_may_grant_again(
    pg_server, tmp_path, monkeypatch
):
    """Agent a and its runners reach the server through a port that stops moving bytes
    (no error comes back: their calls just wait). a kills its runners by T/2 on its own
    clock, before the daemon fences it at T on the database's; after the partition
    heals, a registers again and its jobs have finished elsewhere, with no device ever
    held twice."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    url = pg_server.database()
    partition = Partition(pg_server)
    cluster = Cluster(url, tmp_path, via={"a": partition.url(url)})
    try:
        # a's runners, cut off, wait in their next registry call: only a kill stops them
        ids = [api.submit(cluster.url, mock="rounds=1,search=2,build=0.1,measure=0.1,device=cpu")
               for _ in range(3)]  # fmt: skip
        victims = _wait_running_on(cluster, "a")
        partition.cut()
        gone = _until(lambda: not _alive(victims.values()), T, step=0.02)
        assert gone, f"a partitioned host's runners ran {T} s on"
        fenced = _until(lambda: "a" not in cluster.up(), T + 10)
        assert fenced, "the daemon never fenced the partitioned host"
        partition.heal()
        back = _until(lambda: "a" in cluster.up(), 20)
        assert back, "the host did not register again once the partition healed"
        assert "no heartbeat renewed" in cluster.log("a")
        _finished_cleanly(cluster, ids)
    finally:
        cluster.close()
        partition.close()


def test_a_stage_uses_only_its_own_hosts_pool_and_devices():
    resources = {
        r.name: r
        for r in [
            Resource("cpu", ResourceKind.CPU, 2, False),
            Resource("cpu-device", ResourceKind.CPU_DEVICE, 1, True),
            Resource("cpu@b", ResourceKind.CPU, 1, False, host="b"),
            Resource("cpu-device@b", ResourceKind.CPU_DEVICE, 1, True, host="b"),
        ]
    }
    search = Pending(1, 1, "search", {"cpu": 1}, 0.0, host="b")
    measure = Pending(2, 2, "measure", {"device": 1}, 0.0, device_kind="cpu-device", host="b")
    local = Pending(3, 3, "measure", {"device": 1}, 0.0, device_kind="cpu-device")
    snap = Snapshot(resources=resources, pending=[search, measure, local], leases=[], now=0.0)
    decision = Interleaved().decide(snap)
    granted = {p.request_id: want for p, want in decision.grants}
    assert granted[1] == {"cpu@b": 1}
    assert 2 not in granted  # b's measurement needs all of b's pool, which b's search holds
    assert granted[3] == {"cpu-device": 1, "cpu": 2}  # the daemon's host is unaffected


def test_an_agent_with_a_bad_name_is_one_line_and_status_2(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "tvmsched.cli", "agent", "--name", "bad name",
         "--db", str(tmp_path / "r.db")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("Error: agent name") and len(done.stderr.splitlines()) == 1


def test_a_killed_daemons_standby_takes_over(cluster):
    active = api.daemon_pid(cluster.url)
    standby = api.start_daemon(
        cluster.url, resources={"cpu": 2},
        extra=["--no-local-jobs", "--host-timeout", str(T)], standby=True,
    )  # fmt: skip
    assert standby != active and cluster.registry.get_setting("daemon_pid") == str(active)
    ids = [api.submit(cluster.url, mock="rounds=4,search=0.3,build=0.1,measure=0.1,device=cpu")
           for _ in range(3)]  # fmt: skip
    _wait_running_on(cluster, "a")
    os.kill(active, signal.SIGKILL)
    killed = time.time()
    api.wait(cluster.url, ids, timeout=60, poll=0.1)
    assert {j["state"] for j in api.jobs(cluster.url)} == {"done"}
    assert cluster.registry.get_setting("daemon_pid") == str(standby)
    later = [e for e in cluster.registry.events() if e["kind"] == "grant" and e["ts"] > killed]
    assert later, "nothing was granted after the serving daemon died"
    assert check_events(cluster.registry.events(), cluster.resources, strategy="interleaved") == []


def test_a_stopped_daemons_standby_ends_its_session_after_T_and_takes_over(
    cluster, tmp_path, monkeypatch
):
    """A SIGSTOPped daemon keeps its session, and so its lock; the standby (on "another
    host": a state folder of its own) ends that session once it has been silent for T,
    and serves. The stopped daemon, once continued, finds the lock gone and stops."""
    active, home = api.daemon_pid(cluster.url), os.environ["XDG_STATE_HOME"]
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "standby-host"))
    standby = api.start_daemon(
        cluster.url, resources={"cpu": 2},
        extra=["--no-local-jobs", "--host-timeout", str(T)], standby=True,
    )  # fmt: skip
    ids = [api.submit(cluster.url, mock="rounds=4,search=0.3,build=0.1,measure=0.1,device=cpu")
           for _ in range(3)]  # fmt: skip
    _wait_running_on(cluster, "a")
    os.kill(active, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        took_over = _until(lambda: cluster.registry.get_setting("daemon_pid") == str(standby),
                           T + 10)  # fmt: skip
        took = time.monotonic() - stopped
        assert took_over, "no takeover"
        assert took >= T, f"the standby took over a daemon silent for only {took:.1f} s"
        api.wait(cluster.url, ids, timeout=60, poll=0.1)
        assert {j["state"] for j in api.jobs(cluster.url)} == {"done"}
    finally:
        os.kill(active, signal.SIGCONT)
        if cluster.registry.get_setting("daemon_pid") != str(standby):  # the fixture's
            os.kill(standby, signal.SIGKILL)  # daemon serves still: it stops that one
            monkeypatch.setenv("XDG_STATE_HOME", home)
    gone = _until(lambda: not _alive([active]), 10)
    assert gone, "the continued daemon went on serving beside the standby"
    assert check_events(cluster.registry.events(), cluster.resources, strategy="interleaved") == []


def test_a_second_daemon_without_standby_is_refused(cluster, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "tvmsched.daemon", "--no-local-jobs"],
        env=dict(os.environ, SCHED_DB=cluster.url, XDG_STATE_HOME=str(tmp_path / "other")),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "a daemon already serves" in done.stderr and "--standby" in done.stderr


def test_a_tuning_job_killed_with_its_agent_finishes_on_another_from_the_shared_database(
    pg_server, tmp_path, monkeypatch
):
    """A real TVM job (the tiny sample) whose tuning database is a PostgreSQL database:
    it tunes on agent a, a is killed, and it finishes on b, counting the records it made
    on a (its budget is not spent again) and reading them back for the build."""
    from simpletvm.database import connect
    from simpletvm.samples import write_sample

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    cluster = Cluster(pg_server.database(), tmp_path, names=("a",))  # the job starts on a
    tuning_db = pg_server.database()
    try:
        model = write_sample("tiny", tmp_path / "tiny.onnx")
        job_id = api.submit(cluster.url, model=str(model), trials=16, per_round=8,
                            baselines=False, tuning_db=tuning_db)  # fmt: skip
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # until a has measured some candidates
            job = cluster.registry.job(job_id)
            if job["host"] == "a" and (job["progress"] or {}).get("trials_done", 0) >= 8:
                break
            time.sleep(0.2)
        assert job["host"] == "a" and job["progress"]["trials_done"] >= 8, job["progress"]
        cluster.start_agent("b")
        deadline = time.monotonic() + 30
        while "b" not in cluster.up() and time.monotonic() < deadline:
            time.sleep(0.05)
        cluster.agents["a"].kill()
        done_on_a = connect(tuning_db).execute("SELECT COUNT(*) FROM records").fetchone()[0]
        api.wait(cluster.url, [job_id], timeout=300, poll=0.2)
        job = cluster.registry.job(job_id)
        assert job["state"].value == "done", job["error"]
        assert job["host"] == "b"
        records = connect(tuning_db).execute("SELECT COUNT(*) FROM records").fetchone()[0]
        assert done_on_a >= 8 and records <= 16 + 8, (done_on_a, records)  # not started over
        assert job["result"]["tuned_ms"] is not None
    finally:
        cluster.close()


def test_a_measurement_on_one_host_suspends_only_that_hosts_stages(
    pg_server, tmp_path, monkeypatch
):
    """A CPU measurement placed on a suspends a's search (the agent stops its runner and
    confirms in the registry before the grant), never b's; all of it is continued."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    cluster = Cluster(pg_server.database(), tmp_path, names=("a", "b"))
    try:
        _measure_on_a(cluster)
    finally:
        cluster.close()


def _measure_on_a(cluster):
    long = "rounds=3,search=1.5,build=0.3,measure=0.05,device=cpu"
    on_a = api.submit(cluster.url, mock=long)
    time.sleep(0.5)
    on_b = api.submit(cluster.url, mock=long)
    time.sleep(0.5)
    measuring = api.submit(cluster.url, mock="rounds=2,search=0.05,build=0.05,measure=0.3,"
                                             "device=cpu")  # fmt: skip
    api.wait(cluster.url, [on_a, on_b, measuring], timeout=90, poll=0.1)
    jobs = {j["id"]: j for j in api.jobs(cluster.url)}
    assert [jobs[i]["host"] for i in (on_a, on_b, measuring)] == ["a", "b", "a"]
    assert {jobs[i]["state"] for i in jobs} == {"done"}
    events = cluster.registry.events()
    suspended = [e for e in events if e["kind"] == "suspend"]
    assert suspended, "the measurement on a suspended nothing"
    # a's jobs suspend each other's search and build for their measurements; b's never
    assert {e["job_id"] for e in suspended} <= {on_a, measuring}
    assert all(_host_of(e["resources"]) == "a" for e in suspended)
    resumed = {e["epoch"] for e in events if e["kind"] == "resume"}
    left = {e["epoch"] for e in suspended} - resumed
    for e in events:  # shown if the assertion fails
        if e["epoch"] in left or (left and e["kind"] in ("suspend", "resume", "grant")):
            print(e["id"], round(e["ts"], 3), e["kind"], e["job_id"], e["stage"], e["epoch"],
                  e["resources"], e["detail"])  # fmt: skip
    assert not left
    assert check_events(events, cluster.resources, strategy="interleaved") == []


def test_an_agent_reads_the_registry_only_for_what_woke_it(pg_server, tmp_path, monkeypatch):
    """A grant to another host's runners, or a suspension asked of another host, costs
    an agent no query; a placement or a suspension for its own host is looked at."""
    from tvmsched.agent import Agent, AgentConfig, host_resources
    from tvmsched.registry.stages import GRANT_CHANNEL, PLACE_CHANNEL, SUSPEND_CHANNEL

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    url = pg_server.database()
    agent = Agent(url, AgentConfig(name="box-a", resources=host_resources("box-a", ["cpu=1"])))
    agent.initialize()
    reads: list[str] = []

    def counted(name, real):
        return lambda *args, **kwargs: reads.append(name) or real(*args, **kwargs)

    for name in ("assigned_jobs", "suspend_on_host", "suspensions_on_host"):
        monkeypatch.setattr(agent.registry, name, counted(name, getattr(agent.registry, name)))
    other = Registry(url)

    def woken_by(channel, payload) -> list[str]:
        with other._write() as conn:
            other.store.notify(conn, channel, payload)
        reads.clear()
        agent._wait(5.0)
        agent._last_housekeeping = time.time() + 3600  # this pass is not housekeeping
        agent.loop()
        return sorted(reads)

    try:
        agent.loop()  # the first pass looks at everything
        assert woken_by(GRANT_CHANNEL, "991,992") == []  # another host's runners
        assert woken_by(SUSPEND_CHANNEL, "box-b") == []
        assert woken_by(PLACE_CHANNEL, "box-b,box-c") == []
        assert woken_by(PLACE_CHANNEL, "box-b,box-a") == ["assigned_jobs"]
        assert woken_by(SUSPEND_CHANNEL, "box-a") == ["suspend_on_host"]
    finally:
        agent.shutdown()
        other.close()
