"""Strategies (pure decisions) and the simulated clock run through the real registry."""



import pytest  # noqa: E402

from tvmsched.models import Held, Pending, Resource, ResourceKind
from tvmsched.resources import detect, device_kind_for_target, parse_resource
from tvmsched.simulate import simulate
from tvmsched.strategies import STRATEGIES, Snapshot, get_strategy

CPU4 = Resource("cpu", ResourceKind.CPU, 4, False)
GPU0 = Resource("gpu0", ResourceKind.GPU, 1, True)
CPU_DEVICE = Resource("cpu-device", ResourceKind.CPU_DEVICE, 1, True)


def pending(rid, job, kind, needs, *, at=0.0, priority=0, device_kind=None, info=None):
    return Pending(rid, job, kind, needs, at, priority, device_kind, info or {})


def snap(resources, requests, leases=()):
    return Snapshot({r.name: r for r in resources}, list(requests), list(leases), now=10.0)


def granted(decision):
    return {p.request_id: want for p, want in decision.grants}


def test_interleaved_never_shares_the_device_nor_oversubscribes_cpu():
    requests = [pending(i, i, "measure", {"device": 1}, at=i) for i in range(1, 4)]
    requests += [pending(10 + i, 10 + i, "search", {"cpu": 1}, at=i) for i in range(6)]
    decision = get_strategy("interleaved").decide(snap([CPU4, GPU0], requests))
    grants = granted(decision)
    assert list(grants).count(1) == 1 and 2 not in grants and 3 not in grants
    assert sum(w.get("cpu", 0) for w in grants.values()) == 4
    assert "waiting for a device (gpu0" in decision.waits[2]


def test_synchronous_grants_everything_at_once():
    requests = [pending(i, i, "measure", {"device": 1}) for i in range(1, 4)]
    requests += [pending(10 + i, 10 + i, "build", {"cpu": 3}) for i in range(3)]
    decision = get_strategy("synchronous").decide(snap([CPU4, GPU0], requests))
    assert len(decision.grants) == 6


def test_sequential_runs_one_job_at_a_time():
    requests = [pending(1, 5, "search", {"cpu": 1}), pending(2, 6, "search", {"cpu": 1})]
    decision = get_strategy("sequential").decide(snap([CPU4, GPU0], requests))
    assert [p.job_id for p, _ in decision.grants] == [5]
    assert decision.waits[6] == "sequential: job 5 runs first"
    assert get_strategy("sequential").max_active_jobs(64) == 1


def test_measuring_on_a_cpu_device_claims_every_cpu_slot():
    measure = pending(1, 1, "measure", {"device": 1}, device_kind="cpu-device")
    decision = get_strategy("interleaved").decide(snap([CPU4, CPU_DEVICE], [measure]))
    assert granted(decision)[1] == {"cpu-device": 1, "cpu": 4}
    busy = Held(7, 2, "search", {"cpu": 1}, 0.0)
    later = pending(2, 3, "search", {"cpu": 1}, at=5.0)
    decision = get_strategy("interleaved").decide(
        snap([CPU4, CPU_DEVICE], [measure, later], [busy])
    )
    # The measure waits for the running search, and reserves the cores: no new cpu stage.
    assert decision.grants == []
    assert "reserved" in decision.waits[3]


def test_gpu_job_waits_for_a_gpu_when_only_a_cpu_device_exists():
    measure = pending(1, 1, "measure", {"device": 1}, device_kind="gpu")
    decision = get_strategy("interleaved").decide(snap([CPU4, CPU_DEVICE], [measure]))
    assert "no gpu device is configured" in decision.waits[1]


def test_priority_goes_first():
    low = pending(1, 1, "measure", {"device": 1}, at=0.0)
    high = pending(2, 2, "measure", {"device": 1}, at=5.0, priority=10)
    decision = get_strategy("interleaved").decide(snap([CPU4, GPU0], [low, high]))
    assert [p.request_id for p, _ in decision.grants] == [2]


def test_predictive_prefers_long_remaining_work():
    short = pending(1, 1, "search", {"cpu": 1}, info={"round": 3, "rounds": 3})
    long = pending(2, 2, "search", {"cpu": 1}, at=1.0, info={"round": 1, "rounds": 9})
    one_cpu = Resource("cpu", ResourceKind.CPU, 1, False)
    decision = get_strategy("predictive").decide(snap([one_cpu, GPU0], [short, long]))
    assert [p.job_id for p, _ in decision.grants] == [2]


def test_unknown_strategy_is_a_clear_error():
    with pytest.raises(ValueError, match="choose one of sequential"):
        get_strategy("fastest")


def test_resource_parsing_and_detection():
    assert parse_resource("gpu=2") == [
        Resource("gpu0", ResourceKind.GPU, 1, True),
        Resource("gpu1", ResourceKind.GPU, 1, True),
    ]
    found = {r.name: r for r in detect(["cpu=3"])}
    assert found["cpu"].capacity == 3
    assert any(r.kind in (ResourceKind.GPU, ResourceKind.CPU_DEVICE) for r in found.values())
    for bad in ("cpu", "cpu=0", "cpu=x", "=3", "9x=1"):
        with pytest.raises(ValueError):
            parse_resource(bad)
    assert device_kind_for_target("llvm") == "cpu-device"
    assert device_kind_for_target('{"kind": "cuda"}') == "gpu"
    assert device_kind_for_target("nvidia/nvidia-a100") == "gpu"  # a TVM tag, no GPU needed


WORKLOAD = [
    f"rounds={1 + i % 3},search={0.5 + i % 4},build={1 + i % 2},measure={0.5 + i % 3},"
    f"update=0.2,finalize=0.3,device=gpu,seed={i}"
    for i in range(12)
]


def test_simulation_interleaved_beats_sequential_and_never_overlaps(tmp_path):
    resources = [Resource("cpu", ResourceKind.CPU, 2, False), GPU0]
    results = {
        name: simulate(
            WORKLOAD, strategy=name, resources=resources, db_path=tmp_path / f"{name}.db"
        )
        for name in STRATEGIES
    }
    for name, result in results.items():
        assert result.makespan >= result.lower_bound - 1e-6, name
        if name != "synchronous":
            assert result.overlaps == 0, name
    assert results["synchronous"].overlaps > 0  # no control: the device is shared
    assert results["interleaved"].makespan < 0.7 * results["sequential"].makespan
    assert results["predictive"].ratio <= results["interleaved"].ratio + 0.05
    assert results["interleaved"].utilisation["gpu0"]["busy"] > 0.5
