"""time_callable stops when the median is stable or the time cap is reached.

The callables are fakes that advance a simulated clock, so nothing here sleeps.
"""

import json
import math
import random

import pytest

from simpletvm import bench
from simpletvm.bench import MAX_SAMPLES, STABLE, TIME_CAP, LatencyStats, time_callable


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_model(clock: FakeClock, seconds, noise: float = 0.0, seed: int = 0):
    """A callable that "takes" ``seconds`` (times 1 +- ``noise``, uniform) per call."""
    rng = random.Random(seed)
    calls = []

    def run():
        if clock.now > 100:  # fail instead of hanging if time_callable ignores the cap
            raise RuntimeError("time_callable ran past 100 simulated seconds")
        calls.append(clock.now)
        clock.now += seconds * (1 + rng.uniform(-noise, noise))

    run.calls = calls
    return run


def test_stable_callable_stops_early():
    clock = FakeClock()
    fn = fake_model(clock, 0.002)
    stats = time_callable(fn, clock=clock, max_seconds=10.0)
    assert stats.stopped == STABLE
    assert stats.samples == 6  # the fewest with a 95 % interval for the median
    assert clock.now < 1.0
    assert stats.median_ms == pytest.approx(2.0)


def test_noisy_callable_runs_to_the_cap():
    clock = FakeClock()
    fn = fake_model(clock, 0.05, noise=0.5)
    stats = time_callable(fn, clock=clock, max_seconds=10.0)
    assert stats.stopped == TIME_CAP
    assert clock.now <= 10.0  # it does not start a sample that would end past the cap
    assert clock.now > 9.0
    assert stats.samples > 100
    assert 40 < stats.median_ms < 60


def test_cap_is_configurable():
    clock = FakeClock()
    stats = time_callable(fake_model(clock, 0.01, noise=0.5), clock=clock, max_seconds=2.0)
    assert stats.stopped == TIME_CAP
    assert 1.8 < clock.now <= 2.0


def test_slow_callable_still_gets_the_minimum_samples():
    clock = FakeClock()
    fn = fake_model(clock, 3.0, noise=0.2)
    stats = time_callable(fn, clock=clock, max_seconds=10.0, min_samples=3)
    assert stats.samples == 3
    assert stats.stopped == TIME_CAP
    assert len(fn.calls) == 1 + 3  # one warm-up call, not five
    assert 2.4 < stats.median_ms / 1e3 < 3.6


def test_warmup_respects_the_cap():
    clock = FakeClock()
    fn = fake_model(clock, 0.8)
    time_callable(fn, clock=clock, max_seconds=10.0, repeat=1)
    # warm-up may use a quarter of the 10 s: three calls of 0.8 s, then one sample
    assert len(fn.calls) == 3 + 1


def test_fast_callable_warms_up_fully_and_batches_calls():
    clock = FakeClock()
    fn = fake_model(clock, 0.0001)
    stats = time_callable(fn, clock=clock, warmup=5, min_sample_ms=5.0)
    assert len(fn.calls) == 5 + 50 * stats.samples
    assert stats.median_ms == pytest.approx(0.1)


def test_repeat_caps_the_samples():
    clock = FakeClock()
    stats = time_callable(fake_model(clock, 0.01, noise=0.5), clock=clock, repeat=4)
    assert stats.samples == 4
    assert stats.stopped == MAX_SAMPLES


def test_stats_round_trip_through_json():
    """_bench_in_fresh_process rebuilds the stats from the child's JSON line."""
    clock = FakeClock()
    stats = time_callable(fake_model(clock, 0.002), clock=clock)
    assert LatencyStats(**json.loads(json.dumps(stats.as_dict()))) == stats
    # a child from before the field was added still parses
    old = {k: v for k, v in stats.as_dict().items() if k != "stopped"}
    assert LatencyStats(**old).samples == stats.samples


def test_median_interval():
    assert bench.median_rel_halfwidth([1.0] * 5) == math.inf  # too few for 95 %
    assert bench.median_rel_halfwidth([1.0] * 6) == 0.0
    # 10 samples: the 95 % interval is [x_(2), x_(9)]
    ordered = [0.0, 9.0, 9.5, 10.0, 10.0, 10.0, 10.0, 10.5, 11.0, 99.0]
    assert bench.median_rel_halfwidth(ordered) == pytest.approx((11.0 - 9.0) / 2 / 10.0)
    # the normal approximation for many samples agrees with the exact rank near the switch
    exact = bench._order_statistic_rank(200, 0.025)
    approx = bench._order_statistic_rank(201, 0.025)
    assert exact - 1 <= approx <= exact


def drifting_model(clock: FakeClock, seconds: float, *, slow_after: float, factor: float):
    """A callable that "takes" ``seconds``, ``factor`` times longer once the clock has
    passed ``slow_after``: the machine slowed down (a neighbour on the shared host)."""
    def run():
        if clock.now > 100:
            raise RuntimeError("ran past 100 simulated seconds")
        clock.now += seconds * (factor if clock.now >= slow_after else 1.0)

    return run


def test_interleaved_rounds_keep_a_drift_out_of_the_ratio():
    # the true ratio is 2; the machine gets 1.6 times slower after 6 s
    clock = FakeClock()
    a = drifting_model(clock, 0.002, slow_after=6.0, factor=1.6)
    b = drifting_model(clock, 0.001, slow_after=6.0, factor=1.6)
    # noise-free fakes would stop at once: a precision nothing reaches makes each turn
    # last its time; one after the other, the drift lands on b alone
    seq_a = time_callable(a, clock=clock, max_seconds=6.0, rel_precision=-1.0)
    seq_b = time_callable(b, clock=clock, max_seconds=6.0, rel_precision=-1.0)
    assert seq_a.median_ms / seq_b.median_ms == pytest.approx(2 / 1.6, rel=0.01)

    clock.now = 0.0
    timed = bench.time_interleaved({"a": (a, None), "b": (b, None)}, rounds=4,
                                   max_seconds=6.0, rel_precision=-1.0, clock=clock)
    ratio = timed["a"].median_ms / timed["b"].median_ms
    assert ratio == pytest.approx(2.0, rel=0.01)
    assert timed["a"].rounds == 4 and timed["a"].stopped == TIME_CAP
    assert clock.now <= 12.0  # each callable spent at most its max_seconds in all


def test_interleaved_rounds_alternate_and_stop_when_stable():
    clock = FakeClock()
    order = []

    def model(name, seconds):
        def run():
            order.append(name)
            clock.now += seconds
        return run

    timed = bench.time_interleaved({"a": (model("a", 0.002), None),
                                    "b": (model("b", 0.004), None)},
                                   rounds=3, clock=clock)
    turns = [name for i, name in enumerate(order) if i == 0 or order[i - 1] != name]
    assert turns == ["a", "b", "a", "b"]  # a b, b a, a b: the order reversed every round
    assert timed["a"].stopped == STABLE and timed["b"].stopped == STABLE
    assert timed["a"].median_ms == pytest.approx(2.0) and timed["b"].median_ms == pytest.approx(4.0)
    assert timed["a"].samples == 3 * 6  # six samples a round: the fewest for an interval
