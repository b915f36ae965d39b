"""MockJob: the spec parser (hypothesis) and the stage plan."""


# `sched` shadows a stdlib module: make sure this repository's package is the one imported.

import pytest  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from simpletvm.stages import StagedJob, StageKind  # noqa: E402
from tvmsched.mockjob import KEYS, MockJob, MockSpec

seconds = st.floats(min_value=0, max_value=100, allow_nan=False, allow_infinity=False)
specs = st.builds(
    MockSpec,
    rounds=st.integers(1, 50),
    prepare=seconds,
    search=seconds,
    build=seconds,
    measure=seconds,
    update=seconds,
    finalize=seconds,
    jitter=st.floats(min_value=0, max_value=0.99),
    cpu=st.sampled_from(["burn", "sleep"]),
    seed=st.integers(0, 2**31),
    workers=st.integers(1, 64),
    device=st.sampled_from(["any", "gpu", "cpu"]),
)


@given(specs)
def test_spec_round_trips_through_its_string(spec):
    assert MockSpec.parse(str(spec)) == spec


@given(st.text(max_size=60))
def test_parser_accepts_or_raises_value_error_only(text):
    try:
        spec = MockSpec.parse(text)
    except ValueError as exc:
        assert str(exc)
    else:
        assert spec.rounds >= 1


@given(st.lists(st.tuples(st.sampled_from(KEYS), st.text(min_size=1, max_size=8)), max_size=6))
def test_parser_on_known_keys_with_random_values(items):
    text = ",".join(f"{k}={v}" for k, v in items)
    try:
        MockSpec.parse(text)
    except ValueError as exc:
        assert "mock spec" in str(exc)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty mock spec"),
        ("rounds", "not key=value"),
        ("rounds=2,flavour=3", "unknown mock spec key 'flavour'"),
        ("rounds=2,rounds=3", "given twice"),
        ("rounds=0", "at least 1"),
        ("rounds=two", "expected an integer"),
        ("search=-1", "must not be negative"),
        ("search=nan", "finite"),
        ("jitter=1.5", "below 1"),
        ("cpu=spin", "expected one of burn, sleep"),
    ],
)
def test_parser_errors_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        MockSpec.parse(text)


def test_stage_plan_and_needs():
    job = MockJob("rounds=2,prepare=0.1,search=0.2,build=0.3,measure=0.4,update=0.5,workers=2")
    assert isinstance(job, StagedJob)
    kinds = [k for k, _ in job.plan]
    assert kinds[0] is StageKind.PREPARE and kinds[-1] is StageKind.FINALIZE
    assert kinds[1:5] == [StageKind.SEARCH, StageKind.BUILD, StageKind.MEASURE, StageKind.UPDATE]
    assert len(kinds) == 1 + 2 * 4 + 1
    needs = []
    while (request := job.next_stage()) is not None:
        needs.append((request.kind, request.needs))
        job._sleep = lambda s: None
        job.run_stage()
    assert (StageKind.BUILD, {"cpu": 2}) in needs
    assert (StageKind.MEASURE, {"device": 1}) in needs
    assert (StageKind.FINALIZE, {"cpu": 1, "device": 1}) in needs
    assert job.result()["trials"] == 32
    assert job.progress()["trials_done"] == job.progress()["trials_total"]


def test_no_prepare_stage_when_zero_and_resume_skips_done_stages():
    job = MockJob("rounds=1,search=0,measure=0")
    assert job.next_stage().kind is StageKind.SEARCH
    resumed = MockJob("rounds=3", completed=5)
    assert resumed.next_stage().kind is StageKind.BUILD
    assert resumed.progress()["trials_done"] == 16
    assert MockJob("rounds=1", completed=99).next_stage() is None


def test_jitter_is_deterministic_per_seed():
    a = MockSpec.parse("rounds=3,search=1,jitter=0.5,seed=7").stages()
    b = MockSpec.parse("rounds=3,search=1,jitter=0.5,seed=7").stages()
    c = MockSpec.parse("rounds=3,search=1,jitter=0.5,seed=8").stages()
    assert a == b != c
    assert all(0.5 <= s <= 1.5 for k, s in a if k is StageKind.SEARCH)


def test_sleep_and_burn_take_their_time():
    for mode in ("sleep", "burn"):
        job = MockJob(f"rounds=1,search=0.05,cpu={mode}")
        outcome = job.run_stage()
        assert outcome.kind is StageKind.SEARCH
        assert 0.045 <= outcome.seconds < 0.5
