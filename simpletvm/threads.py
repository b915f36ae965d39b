"""How many threads TVM's runtime runs compiled kernels on: one per physical core.

Unless ``TVM_NUM_THREADS`` (or ``OMP_NUM_THREADS``) is set, TVM's thread pool starts
``hardware_concurrency() / 2`` workers on x86, assuming two hyper-threads per core. On a
machine without SMT (most cloud VMs with few vCPUs, and this project's 2-core machine)
that is half the cores: every parallel kernel, in measurements, in finalize's timing and
in the exported module, then ran on one core while onnxruntime used both. A ResNet-18
tuned for an hour ran in 20.0 ms on one thread and 11.9 ms on two.

So ``import simpletvm`` sets ``TVM_NUM_THREADS`` to the number of physical cores this
process may run on, unless the user has set it (or ``OMP_NUM_THREADS``, which TVM reads
next). TVM reads it once, when the first kernel starts its thread pool, and child
processes (MetaSchedule's runner workers, sched's runners) inherit it.
A process that loads an exported module without importing simpletvm should set
``TVM_NUM_THREADS`` itself (docs/simpletvm.md, "Threads").
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "TVM_NUM_THREADS"
_SYS_CPU = Path("/sys/devices/system/cpu")


def _allowed_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return list(range(os.cpu_count() or 1))


def physical_cores(sys_cpu: Path = _SYS_CPU, cpus: list[int] | None = None) -> int:
    """Physical cores among the CPUs this process may use (hyper-threads counted once).

    Where the topology is not readable, every allowed CPU counts as a core.
    """
    cpus = _allowed_cpus() if cpus is None else cpus
    cores = set()
    for cpu in cpus:
        topology = sys_cpu / f"cpu{cpu}" / "topology"
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return max(len(cpus), 1)
        cores.add((package, core))
    return max(len(cores), 1)


def _env_threads(environ) -> int | None:
    for name in (ENV, "OMP_NUM_THREADS"):  # the order TVM reads them in
        value = environ.get(name, "").strip()
        if value:
            try:
                return max(int(value), 1)
            except ValueError:
                return None
    return None


def runtime_threads(environ=None) -> int:
    """The threads TVM's runtime uses in this process (after ``configure_runtime_threads``)."""
    environ = os.environ if environ is None else environ
    return _env_threads(environ) or physical_cores()


def configure_runtime_threads(environ=None) -> int:
    """Set ``TVM_NUM_THREADS`` to the physical cores unless the user chose a count.

    Returns the count TVM's runtime will use. It has no effect on a thread pool that a
    kernel has already started in this process, so it runs at ``import simpletvm``.
    """
    environ = os.environ if environ is None else environ
    if not any(environ.get(name, "").strip() for name in (ENV, "OMP_NUM_THREADS")):
        environ[ENV] = str(physical_cores())
    return runtime_threads(environ)
