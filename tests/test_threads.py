"""TVM's runtime runs kernels on one thread per physical core (simpletvm/threads.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from simpletvm.threads import ENV, configure_runtime_threads, physical_cores, runtime_threads


def _topology(root, cores):
    """A fake /sys/devices/system/cpu: cores[cpu] = (package, core)."""
    for cpu, (package, core) in enumerate(cores):
        top = root / f"cpu{cpu}" / "topology"
        top.mkdir(parents=True)
        (top / "physical_package_id").write_text(f"{package}\n")
        (top / "core_id").write_text(f"{core}\n")
    return root


def test_hyper_threads_count_once(tmp_path):
    root = _topology(tmp_path, [(0, 0), (0, 1), (0, 0), (0, 1), (1, 0), (1, 1)])
    assert physical_cores(root, cpus=[0, 1, 2, 3, 4, 5]) == 4
    assert physical_cores(root, cpus=[0, 2]) == 1  # two siblings of one core
    assert physical_cores(root, cpus=[0, 1]) == 2  # no SMT: every CPU is a core


def test_unreadable_topology_counts_every_allowed_cpu(tmp_path):
    assert physical_cores(tmp_path, cpus=[0, 1, 2]) == 3


def test_configure_sets_the_physical_cores_and_keeps_a_users_choice():
    env = {}
    assert configure_runtime_threads(env) == physical_cores()
    assert env[ENV] == str(physical_cores())
    env = {ENV: "7"}
    assert configure_runtime_threads(env) == 7 and env[ENV] == "7"
    env = {"OMP_NUM_THREADS": "3"}  # TVM reads it when TVM_NUM_THREADS is unset
    assert configure_runtime_threads(env) == 3 and ENV not in env
    assert runtime_threads({ENV: "5", "OMP_NUM_THREADS": "3"}) == 5


def _fresh_process_threads(env):
    code = ("import json, simpletvm, tvm; "
            "print(json.dumps([tvm.runtime.num_threads(), simpletvm.threads.physical_cores()]))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_tvm_runtime_uses_every_physical_core_after_import():
    """TVM alone halves the logical CPUs on x86; on a machine without SMT that is half."""
    env = {k: v for k, v in os.environ.items() if k not in (ENV, "OMP_NUM_THREADS")}
    threads, cores = _fresh_process_threads(env)
    assert threads == cores
    threads, _ = _fresh_process_threads({**env, ENV: "1"})
    assert threads == 1  # the user's choice stands
