import json

import pytest

from simpletvm.errors import TargetError
from simpletvm.targets import resolve_target


def test_llvm_name_detects_host():
    spec = resolve_target("llvm")
    assert spec.kind == "llvm"
    assert spec.config["num-cores"] >= 1
    assert spec.device_type == "cpu"
    spec.tvm_target()


def test_json_dict_form_is_kept():
    spec = resolve_target('{"kind": "llvm", "num-cores": 1}')
    assert spec.config["num-cores"] == 1
    assert json.loads(spec.key)["kind"] == "llvm"


def test_tag_is_accepted():
    import tvm

    tag = next(t for t in tvm.target.list_tags() if tvm.target.Target(t).kind.name == "llvm")
    assert resolve_target(tag).kind == "llvm"


@pytest.mark.parametrize(
    "bad, match",
    [
        ("foo", "unknown target 'foo'"),
        ("llvm -mcpu=skylake", "old CLI-string form"),
        ("{not json", "malformed"),
        ('{"mcpu": "x"}', "'kind' key"),
        ("nvidia/no-such-gpu", "unknown target tag"),
        ("", "empty target"),
    ],
)
def test_bad_targets(bad, match):
    with pytest.raises(TargetError, match=match):
        resolve_target(bad)


def test_cuda_without_gpu_is_a_clear_error():
    from simpletvm.targets import gpu_available

    if gpu_available("cuda"):
        pytest.skip("this machine has a GPU")
    with pytest.raises(TargetError, match="needs an NVIDIA GPU"):
        resolve_target("cuda")


def test_cuda_target_carries_the_device_limits():
    """MetaSchedule's GPU rules need the per-block limits; we take them from the device."""
    from simpletvm.targets import gpu_available

    if not gpu_available("cuda"):
        pytest.skip("needs an NVIDIA GPU")
    spec = resolve_target("cuda")
    assert spec.config["arch"].startswith("sm_")
    assert spec.config["max_shared_memory_per_block"] >= 16 * 1024
    assert spec.config["max_threads_per_block"] >= 256
    assert spec.config["thread_warp_size"] == 32
    target = spec.tvm_target()
    assert int(target.attrs["max_shared_memory_per_block"]) == spec.config[
        "max_shared_memory_per_block"]
