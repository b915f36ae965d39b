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
