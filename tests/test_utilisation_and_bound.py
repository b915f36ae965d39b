"""One utilisation and one makespan lower bound (tvmsched.analysis), used by sched's
simulation, superb's direct and sched paths and superb's evaluation alike."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from superb import evaluation
from superb import timeline as superb_timeline
from superb.outcome import Event
from tvmsched import analysis
from tvmsched.analysis import StageWork, makespan_lower_bound
from tvmsched.mockjob import MockJob, MockSpec
from tvmsched.models import Resource, ResourceKind
from tvmsched.simulate import lower_bound, simulate

CPU2 = Resource("cpu", ResourceKind.CPU, 2, False)
CPU_DEVICE = Resource("cpu-device", ResourceKind.CPU_DEVICE, 1, True)
GPUS = [Resource(f"gpu{i}", ResourceKind.GPU, 1, True) for i in range(2)]


def row(resource, amount, start, end, job=0):
    return {"job_id": job, "stage": "s", "resource": resource, "amount": amount,
            "start": start, "end": end}  # fmt: skip


def test_utilisation_is_unit_seconds_over_capacity_and_makespan():
    rows = [row("cpu", 1, 0, 10), row("cpu", 2, 5, 10), row("gpu0", 1, 0, 5)]
    use = analysis.utilisation(rows, {"cpu": 4, "gpu0": 1})
    assert use["cpu"]["busy"] == pytest.approx((10 + 10) / 40)  # 1 slot all along, 2 for 5 s
    assert use["gpu0"]["busy"] == pytest.approx(0.5) and use["gpu0"]["idle"] == 0.5


def test_superb_direct_points_use_the_same_utilisation():
    events = [Event(0, "search", "cpu", 0, 6, amount=2), Event(0, "prepare", "cpu", 6, 8),
              Event(0, "measure", "device", 8, 10)]  # fmt: skip
    mine = superb_timeline.utilisation(events, {"cpu": 2, "device": 1})
    assert mine["cpu"]["busy"] == pytest.approx((12 + 2) / 20)  # not the 80 % union
    assert mine["device"]["busy"] == pytest.approx(0.2)
    sched = analysis.utilisation(superb_timeline.rows(events), {"cpu": 2, "device": 1})
    assert {k: v["busy"] for k, v in mine.items()} == {k: v["busy"] for k, v in sched.items()}
    assert superb_timeline.makespan(events) == analysis.makespan(superb_timeline.rows(events))


def test_the_bound_on_a_cpu_device_adds_measurements_to_the_cpu_work():
    # two jobs: 4 s search (1 slot) then 1 s measure on the cpu-device (all slots)
    stages = [StageWork(j, 4, 1) for j in (0, 1)] + [StageWork(j, 1, 0, "cpu-device")
                                                     for j in (0, 1)]  # fmt: skip
    assert makespan_lower_bound(stages, [CPU2, CPU_DEVICE]) == pytest.approx(2 + 8 / 2)


def test_the_bound_with_gpus_divides_device_work_and_counts_build_workers():
    stages = [StageWork(0, 3, 2), StageWork(0, 8, 0, "gpu"), StageWork(1, 8, 0, "gpu")]
    assert makespan_lower_bound(stages, [CPU2, *GPUS]) == pytest.approx(11)  # longest job
    stages = [StageWork(j, 10, 2) for j in range(3)] + [StageWork(3, 1, 0, "gpu")]
    assert makespan_lower_bound(stages, [CPU2, *GPUS]) == pytest.approx(30)  # 60 slot-s / 2
    devices = [StageWork(j, 5, 0, "any") for j in range(4)]
    assert makespan_lower_bound(devices, [CPU2, *GPUS]) == pytest.approx(10)  # 20 s / 2


def _events_of(specs: list[MockSpec], slots: int) -> list[dict]:
    """The stages of MockJobs as superb records them (one after another: the bound reads
    durations and holdings only), each resource a stage held one event."""
    events, clock = [], 0.0
    for job, spec in enumerate(specs):
        mock = MockJob(spec, sleeper=lambda s: None)
        while (request := mock.next_stage()) is not None:
            seconds, held = mock.planned_seconds(), {}
            if request.needs.get("device"):
                device = "cpu-device" if spec.device == "cpu" else "gpu0"
                held[device] = 1
                if device == "cpu-device":  # sched grants such a stage every cpu slot
                    held["cpu"] = slots
            if request.needs.get("cpu") and "cpu" not in held:
                held["cpu"] = request.needs["cpu"]
            for name, amount in held.items():
                events.append({"job_index": job, "kind": request.kind.value, "resource": name,
                               "start": clock, "end": clock + seconds, "amount": amount})
            clock += seconds
            mock.index += 1
    return events


@given(st.lists(st.builds(MockSpec, rounds=st.integers(1, 3), prepare=st.floats(0, 3),
                          search=st.floats(0, 3), build=st.floats(0, 3),
                          measure=st.floats(0, 3), finalize=st.floats(0, 3),
                          workers=st.integers(1, 2), device=st.sampled_from(["cpu", "gpu"])),
                min_size=1, max_size=5))  # fmt: skip
def test_simulation_and_evaluation_compute_the_same_bound(specs):
    device = "cpu" if specs[0].device == "cpu" else "gpu"
    specs = [MockSpec(**{**spec.__dict__, "device": device}) for spec in specs]
    resources = [CPU2, CPU_DEVICE] if device == "cpu" else [CPU2, GPUS[0]]
    from_specs = lower_bound(specs, resources)
    from_events = evaluation.lower_bound(_events_of(specs, slots=2), slots=2)
    assert from_events == pytest.approx(from_specs, abs=1e-9)


def test_no_simulated_schedule_beats_the_bound(tmp_path):
    specs = [f"rounds=2,prepare=1,search={1 + i},build=1,measure={2 - i % 2},update=0.2,"
             f"finalize=0.5,device=cpu,seed={i}" for i in range(4)]  # fmt: skip
    for strategy in ("sequential", "interleaved"):
        result = simulate(specs, strategy=strategy, resources=[CPU2, CPU_DEVICE],
                          db_path=tmp_path / f"{strategy}.db")  # fmt: skip
        assert result.makespan >= result.lower_bound - 1e-6
        assert result.ratio < 3
