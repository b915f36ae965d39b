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


def test_cuda_target_carries_the_per_block_limits():
    """MetaSchedule's GPU rules need the per-block limits; resolving must not touch CUDA."""
    from simpletvm.targets import CUDA_LIMITS, gpu_available

    if not gpu_available("cuda"):
        pytest.skip("needs an NVIDIA GPU")
    spec = resolve_target("cuda")
    assert spec.config["arch"].startswith("sm_")
    target = spec.tvm_target()
    for key, value in CUDA_LIMITS.items():
        assert int(target.attrs[key]) == value


def test_a_forked_child_can_time_a_cuda_model(tiny_model):
    """sched's runners are forked from a daemon that has imported TVM, and CUDA does not
    survive such a fork (seen on an H100: cudaErrorInitializationError). GPU timing
    therefore runs in a spawned process; check it from a forked child."""
    import os

    from simpletvm import bench
    from simpletvm.compile import compile_untuned, prepare_module
    from simpletvm.model import load_onnx, model_inputs, random_inputs, to_relax
    from simpletvm.targets import gpu_available

    if not gpu_available("cuda"):
        pytest.skip("needs an NVIDIA GPU")
    spec = resolve_target("cuda")
    model = load_onnx(tiny_model)
    inputs = model_inputs(model)
    executable = compile_untuned(prepare_module(to_relax(model, inputs), spec), spec)
    feeds = random_inputs(inputs, seed=0)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            stats = bench.bench_tvm(executable, "cuda", feeds, repeat=3)
            code = 0 if stats.median_ms > 0 else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_compiling_runs_inside_the_targets_scope(tiny_model, monkeypatch, tmp_path):
    """TVM's CUDA compiler callback takes the GPU architecture from Target.current(), and
    without one asks the device, initialising CUDA: in a forked sched runner that failed
    (H100, finalize: cudaErrorInitializationError). Every compile path must enter the
    target's scope; checked on llvm by recording the current target at each compile."""
    import tvm
    import tvm.driver
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    from simpletvm import builder
    from simpletvm.compile import compile_tuned, compile_untuned, prepare_module
    from simpletvm.model import fuse_for_tuning, load_onnx, model_inputs, to_relax

    spec = resolve_target("llvm")
    model = load_onnx(tiny_model)
    mod = prepare_module(to_relax(model, model_inputs(model)), spec)
    seen = {}

    def recording(path, real):
        def wrapper(*args, **kwargs):
            current = tvm.target.Target.current(allow_none=True)
            seen[path] = None if current is None else current.kind.name
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(tvm, "compile", recording("untuned", tvm.compile))
    monkeypatch.setattr(relax, "build", recording("tuned", relax.build))
    monkeypatch.setattr(tvm.driver, "build", recording("candidate", tvm.driver.build))
    compile_untuned(mod, spec)
    compile_tuned(mod, spec, ms.database.MemoryDatabase())
    fused = fuse_for_tuning(mod, spec.tvm_target())
    func = ms.relax_integration.extract_tasks(fused, spec.tvm_target())[0].dispatched[0]
    builder._build_one(func, spec.tvm_target(), str(tmp_path))
    assert seen == {"untuned": "llvm", "tuned": "llvm", "candidate": "llvm"}


def test_a_forked_child_can_compile_and_time_a_cuda_model(tiny_model):
    """The finalize stage compiles in the runner, which sched forks from its daemon. With
    CUDA initialised in the parent (the worst case), a forked child must still compile
    (architecture from the target, not the device) and time (in a spawned process)."""
    import os

    import tvm
    from tvm.s_tir import meta_schedule as ms

    from simpletvm import bench
    from simpletvm.compile import compile_tuned, compile_untuned, prepare_module
    from simpletvm.model import load_onnx, model_inputs, random_inputs, to_relax
    from simpletvm.targets import gpu_available

    if not gpu_available("cuda"):
        pytest.skip("needs an NVIDIA GPU")
    spec = resolve_target("cuda")
    model = load_onnx(tiny_model)
    inputs = model_inputs(model)
    mod = prepare_module(to_relax(model, inputs), spec)
    feeds = random_inputs(inputs, seed=0)
    assert tvm.cuda(0).exist  # initialises CUDA here, in the parent
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for executable in (compile_untuned(mod, spec),
                               compile_tuned(mod, spec, ms.database.MemoryDatabase())):
                stats = bench.bench_tvm(executable, "cuda", feeds, repeat=3)
                assert stats.median_ms > 0
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
