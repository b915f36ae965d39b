"""Real tuning runs of minutes: deselected by default, run with `bash scripts/test.sh -m long`."""

import pytest

from simpletvm.engine import TuningJob, TuningOptions

pytestmark = pytest.mark.long


def test_cnn_with_64_trials_is_measurably_faster_than_untuned(cnn_model, tmp_path):
    """Issue 2's acceptance check, with MetaSchedule's default search settings."""
    job = TuningJob.from_model(cnn_model, options=TuningOptions(trials=64, seed=0),
                               db_path=tmp_path / "t.db", output=tmp_path / "cnn.so")
    result = job.run_all().result()
    assert result["trials"] == 64
    # well outside the spread of either measurement (std is a few % of the median)
    assert result["tuned_ms"] < 0.8 * result["untuned_ms"], result
    assert result["tuned"]["std_ms"] < 0.2 * result["untuned_ms"]
