"""Loading ONNX models safely, and turning them into Relax modules and tuning tasks.

Every way a model file can be wrong is checked here, before TVM sees it, so the user
gets one line naming the problem instead of a frontend traceback. Nothing in a model
file is executed: ONNX is data, and custom-op domains are refused.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .errors import ModelError, UserInputError

_ONNX_TO_NUMPY = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64",
                  9: "bool", 10: "float16", 11: "float64"}


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str


def parse_input_shapes(items: list[str] | None) -> dict[str, tuple[int, ...]]:
    """Parse ``NAME=D1,D2,...`` (repeatable) into a dict; raise on malformed text."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items or []:
        match = re.fullmatch(r"\s*([^=\s]+)\s*=\s*(\d+(?:\s*[,x]\s*\d+)*)\s*", item)
        if not match:
            raise UserInputError(f"malformed input shape '{item}'; write NAME=D1,D2,... "
                                 "with positive integers, e.g. input=1,3,224,224")
        dims = tuple(int(d) for d in re.split(r"\s*[,x]\s*", match.group(2)))
        if any(d <= 0 for d in dims):
            raise UserInputError(f"input shape '{item}' has a zero dimension; "
                                 "every dimension must be a positive integer")
        shapes[match.group(1)] = dims
    return shapes


MAX_MODEL_BYTES_ENV = "SIMPLETVM_MAX_MODEL_BYTES"
DEFAULT_MAX_MODEL_BYTES = 2 * 1024**3  # protobuf cannot parse a bigger message anyway


def max_model_bytes() -> int:
    """The largest model file we read (``SIMPLETVM_MAX_MODEL_BYTES``, default 2 GiB)."""
    text = os.environ.get(MAX_MODEL_BYTES_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_MODEL_BYTES
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise UserInputError(f"{MAX_MODEL_BYTES_ENV}='{text}' is not a positive number of "
                             "bytes; set it to an integer such as 4294967296, or unset it")
    return limit


def _read_model_file(path: Path) -> bytes:
    """The file's bytes; only a regular file of at most ``max_model_bytes()`` is read.

    A device (``/dev/zero``) would be read until memory runs out and a FIFO would block
    forever, so the path is stat'ed before it is opened, and the open file is checked
    again (the path may have been swapped between the two).
    """
    limit = max_model_bytes()
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ModelError(f"model file '{path}' does not exist; check the path, or write a "
                         "sample with `simpletvm sample cnn -o cnn.onnx`") from None
    except OSError as exc:
        raise ModelError(f"model file '{path}' cannot be read ({exc.strerror}); "
                         "check the path and its permissions") from None
    _check_model_stat(path, info, limit)
    try:
        # O_NONBLOCK: should a FIFO have replaced the file since the stat, open returns
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ModelError(f"model file '{path}' cannot be read ({exc.strerror}); "
                         "check the path and its permissions") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        _check_model_stat(path, info, limit)
        data = fh.read(info.st_size + 1)  # bounded: never more than the limit allows
    if len(data) > info.st_size:
        raise ModelError(f"model file '{path}' grew while it was read; "
                         "wait until it is written completely")
    return data


def _check_model_stat(path: Path, info: os.stat_result, limit: int) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise ModelError(f"'{path}' is a directory, not an ONNX model file")
    if not stat.S_ISREG(info.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(info.st_mode) else
                "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else
                "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file")
        raise ModelError(f"'{path}' is {kind}, not an ONNX model file; give the path of "
                         "a regular .onnx file")
    if info.st_size > limit:
        raise ModelError(f"model file '{path}' is {info.st_size:,} bytes, over the limit of "
                         f"{limit:,} bytes; check the path, or raise {MAX_MODEL_BYTES_ENV} "
                         "if this really is the model")


def load_onnx(path: str | Path) -> onnx.ModelProto:
    path = Path(path)
    data = _read_model_file(path)
    if not data:
        raise ModelError(f"model file '{path}' is empty; export the model to ONNX again")
    try:
        model = onnx.load_from_string(data)
    except Exception:  # noqa: BLE001 - protobuf raises several decode errors
        raise ModelError(f"'{path}' is not a valid ONNX model (it could not be parsed; it may "
                         "be truncated or another format); export it to ONNX again") from None
    if not model.graph.node or not model.graph.output:
        raise ModelError(f"'{path}' is not a valid ONNX model (its graph is empty); "
                         "export it to ONNX again")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "check failed"
        raise ModelError(f"'{path}' is not a valid ONNX model: {first}") from None
    return model


def model_inputs(model: onnx.ModelProto,
                 shapes: dict[str, tuple[int, ...]] | None = None) -> list[InputSpec]:
    """The graph's real inputs with concrete shapes; a dynamic dim needs a given shape."""
    shapes = dict(shapes or {})
    initializers = {init.name for init in model.graph.initializer}
    specs = []
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        tensor = inp.type.tensor_type
        dtype = _ONNX_TO_NUMPY.get(tensor.elem_type)
        if dtype is None:
            raise ModelError(f"input '{inp.name}' has an unsupported element type "
                             f"({tensor.elem_type}); only numeric tensors are supported")
        if inp.name in shapes:
            shape = shapes.pop(inp.name)
        else:
            dims = []
            for dim in tensor.shape.dim:
                if dim.HasField("dim_value") and dim.dim_value > 0:
                    dims.append(dim.dim_value)
                else:
                    label = dim.dim_param or "?"
                    raise ModelError(
                        f"input '{inp.name}' has a dynamic dimension '{label}'; give its shape "
                        f"with --input-shape {inp.name}=D1,D2,...")
            shape = tuple(dims)
        specs.append(InputSpec(inp.name, tuple(shape), dtype))
    if shapes:
        names = ", ".join(s.name for s in specs) or "none"
        raise UserInputError(f"--input-shape names unknown input(s) {', '.join(shapes)}; "
                             f"the model's inputs are: {names}")
    return specs


def check_operators(model: onnx.ModelProto) -> None:
    """Refuse operators the Relax ONNX frontend cannot convert, naming them."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    supported = _get_convert_map()
    unknown = sorted({node.op_type for node in model.graph.node
                      if node.domain not in ("", "ai.onnx") or node.op_type not in supported})
    if unknown:
        raise ModelError(f"unsupported operator(s): {', '.join(unknown)}; TVM's ONNX frontend "
                         "cannot convert them (replace them, or export with another opset)")


def to_relax(model: onnx.ModelProto, inputs: list[InputSpec]):
    """Import into Relax with weights folded in as constants.

    A model TVM's frontend rejects is retried after shape inference and constant folding
    (see ``onnx_prep``); if that fails too, the error names the operator that failed.
    """
    from .onnx_prep import import_relax

    return import_relax(model, {i.name: list(i.shape) for i in inputs},
                        {i.name: i.dtype for i in inputs})


def fuse_for_tuning(mod, target, *, layout_rewrite: bool = False):
    """The same preparation as the build (``compile.compile_tuned``), so that database
    keys match at build time; ``layout_rewrite`` marks constant weights layout-free."""
    import tvm
    from tvm import relax

    from .compile import fuse_passes

    seq = tvm.transform.Sequential([
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        *fuse_passes(target, layout_rewrite),
    ])
    with target, tvm.transform.PassContext(opt_level=3):
        return seq(mod)


def random_inputs(inputs: list[InputSpec], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for spec in inputs:
        if spec.dtype.startswith("float"):
            out[spec.name] = rng.standard_normal(spec.shape).astype(spec.dtype)
        elif spec.dtype == "bool":
            out[spec.name] = rng.integers(0, 2, spec.shape).astype(bool)
        else:
            out[spec.name] = rng.integers(0, 8, spec.shape).astype(spec.dtype)
    return out
