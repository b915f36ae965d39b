"""Why a measurement on a CPU target claims every cpu slot: timings with and without.

One probe job times a fixed single-threaded workload in each of its measure stages
while two other jobs run CPU-burning stages.  Under ``synchronous`` (no control) the
burns overlap the measurements; under ``interleaved`` a measure stage on the
``cpu-device`` also holds every cpu slot, so it runs alone.  A probe job alone gives
the reference.

    .venv/bin/python benchmarks/sched_measure_noise.py
"""

import pathlib
import tempfile

from tvmsched import api
from tvmsched.resources import cpu_count

PROBE = "rounds=6,search=0.2,update=0.05,probe=150,device=cpu"
BURN = "rounds=12,search=0.4,build=0.4,update=0.2,cpu=burn,device=cpu"


def run(workdir, name, strategy, burners):
    db = pathlib.Path(workdir) / f"{name}.db"
    api.start_daemon(db, strategy=strategy, resources={"cpu": cpu_count(), "cpu-device": 1})
    try:
        ids = [api.submit(db, mock=BURN, name=f"burn{i}") for i in range(burners)]
        probe = api.submit(db, mock=PROBE, name="probe")
        api.wait(db, [probe], timeout=300)
        for job_id in ids:
            api.cancel(db, job_id)
    finally:
        api.stop_daemon(db)
    return api.job(db, probe)["result"]["probe"]


def main():
    print(f"{'scenario':<36} {'median ms':>9} {'p90 ms':>7} {'std ms':>7}")
    with tempfile.TemporaryDirectory(prefix="sched-noise-") as workdir:
        for name, strategy, burners in (
            ("probe alone", "interleaved", 0),
            ("2 burners, synchronous (no control)", "synchronous", 2),
            ("2 burners, interleaved (claims cpus)", "interleaved", 2),
        ):
            r = run(workdir, name.split(",")[0].replace(" ", "-") + strategy, strategy, burners)
            print(f"{name:<36} {r['median_ms']:>9.3f} {r['p90_ms']:>7.3f} {r['std_ms']:>7.3f}",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
