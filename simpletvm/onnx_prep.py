"""Importing ONNX into Relax, with a second chance for graphs TVM's frontend rejects.

Exporters (the classic TorchScript export above all) leave shape arithmetic in the graph
(Shape, Gather, Concat, ConstantOfShape on an empty shape...) that TVM's Relax frontend
sometimes cannot convert, although all of it is constant once the input shapes are fixed.
So when the import fails we fix the input shapes, run ONNX shape inference and
onnxruntime's basic offline optimisation (constant folding and redundant-node elimination
only), and import again. onnxruntime is already a dependency and its folding runs the real
kernels, so it folds exactly what onnxruntime itself would compute.

When the import still fails, the error names the operator and node that failed: the
frontend converts node by node, and a thin subclass of its importer records which one
raised (its own report is a print of the whole Relax IR of the node's inputs).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile

import onnx

from .errors import ModelError

log = logging.getLogger(__name__)

_DEFAULT_DOMAINS = ("", "ai.onnx")


class ImportFailure(Exception):
    """TVM's frontend failed on ``op_type`` (at ``node``), or somewhere not node-specific."""

    def __init__(self, reason: str, op_type: str | None = None, node: str | None = None):
        super().__init__(reason)
        self.reason, self.op_type, self.node = reason, op_type, node

    def describe(self) -> str:
        if self.op_type is None:
            return self.reason
        where = f" ({self.node})" if self.node else ""
        return f"operator {self.op_type}{where} failed: {self.reason}"


def import_relax(model: onnx.ModelProto, shapes: dict[str, list[int]],
                 dtypes: dict[str, str]):
    """Import ``model``; on failure retry on its shape-inferred, constant-folded form.

    Raises ``ModelError`` naming the failing operator when no form imports.
    """
    try:
        return from_onnx_traced(model, shapes, dtypes)
    except ImportFailure as exc:
        failure = exc
    log.info("TVM's ONNX import failed (%s); retrying after constant folding",
             failure.describe())
    for simplified in _simplified_forms(model, shapes):
        try:
            mod = from_onnx_traced(simplified, shapes, dtypes)
        except ImportFailure as exc:
            failure = exc
            continue
        log.info("imported the model after shape inference and constant folding")
        return mod
    raise ModelError(
        f"TVM could not import the model: {failure.describe()}; shape inference and "
        "constant folding did not help: replace that operator in the model, or export it "
        "again with static input shapes or another opset")


def from_onnx_traced(model: onnx.ModelProto, shapes: dict[str, list[int]],
                     dtypes: dict[str, str]):
    """``tvm.relax.frontend.onnx.from_onnx`` that raises ``ImportFailure`` naming the node."""
    from tvm.relax.frontend.onnx import onnx_frontend

    importer_cls = getattr(onnx_frontend, "ONNXGraphImporter", None)
    # The frontend prints each failing node's inputs (the whole Relax IR) to stdout; the
    # failure is reported here in one line instead.
    with contextlib.redirect_stdout(io.StringIO()):
        if importer_cls is None or not hasattr(importer_cls, "_convert_operator"):
            # another TVM: the public entry point, without the node's name
            try:  # pragma: no cover - TVM is pinned
                return onnx_frontend.from_onnx(model, shape_dict=shapes, dtype_dict=dtypes,
                                               keep_params_in_input=False)
            except Exception as exc:  # noqa: BLE001 - the frontend raises many kinds
                raise _failure(exc, None, model) from None
        importer = _tracing_importer(importer_cls)(shapes, dtypes, keep_params_in_input=False)
        # as from_onnx does: the default domain's opset (it also runs the checker, which
        # load_onnx has already run)
        opset = 1
        for entry in model.opset_import:
            if entry.domain in _DEFAULT_DOMAINS:
                opset = entry.version
        try:
            return importer.from_onnx(model.graph, opset)
        except Exception as exc:  # noqa: BLE001 - the frontend raises many kinds
            raise _failure(exc, importer.failed, model) from None


_TRACING: dict[type, type] = {}


def _tracing_importer(base: type) -> type:
    """A subclass of the frontend's importer that remembers the first node that raised."""
    if base not in _TRACING:
        class TracingImporter(base):
            failed: tuple[str, str] | None = None

            def _convert_operator(self, op_name, inputs, attrs, opset):
                try:
                    if op_name == "Clip":
                        clipped = clip_with_relax_ops(self.bb, inputs, attrs, opset)
                        if clipped is not None:
                            return self.bb.normalize(clipped)
                    return super()._convert_operator(op_name, inputs, attrs, opset)
                except Exception:
                    if self.failed is None:  # the innermost node of a subgraph comes first
                        name = (attrs.get("tvm_custom") or {}).get("name") or ""
                        self.failed = (op_name, name)
                    raise

        _TRACING[base] = TracingImporter
    return _TRACING[base]


def clip_with_relax_ops(bb, inputs: list, attrs: dict, opset: int):
    """ONNX ``Clip`` as Relax ``maximum``/``minimum`` with scalar constants.

    TVM's converter emits TE functions (``call_tir``), which ``ConvertLayout`` cannot see
    through: with ``--conv-layout NHWC`` each ReLU6 of a MobileNet sat between two
    transposes. Relax operators are converted like any elementwise operator. Returns None
    where the input is not floating point or a bound is not a finite scalar constant, and
    the frontend's converter handles those (it also treats NaN bounds as absent).
    """
    import numbers

    import numpy as np
    from tvm import relax
    from tvm.ir.expr import Constant

    x = inputs[0]
    dtype = getattr(getattr(x, "ty", None), "dtype", "")  # TVM 0.27: ``.ty``
    if not str(dtype).startswith("float"):
        return None
    if opset < 11:
        bounds = [attrs.get("min"), attrs.get("max")]
    else:
        bounds = [inputs[i] if len(inputs) > i else None for i in (1, 2)]
    values = []
    for bound in bounds:
        if bound is None:
            values.append(None)
            continue
        if isinstance(bound, Constant):
            array = bound.value.numpy()
            if array.size != 1:
                return None
            bound = float(array.reshape(()))
        if not isinstance(bound, numbers.Real) or not np.isfinite(bound):
            return None
        values.append(float(bound))
    out = x
    for value, op in zip(values, (relax.op.maximum, relax.op.minimum), strict=True):
        if value is not None:
            out = bb.emit(op(out, relax.const(value, dtype)))
    return out


def _failure(exc: Exception, failed: tuple[str, str] | None,
             model: onnx.ModelProto) -> ImportFailure:
    reason = short_reason(exc)
    if failed is None:
        # checks outside the converters name the node: "Node X cannot handle ShapeExpr inputs"
        match = re.search(r"\bNode (\S+) ", str(exc))
        node = _find_node(model, name=match.group(1)) if match else None
        if node is None:
            return ImportFailure(reason)
        failed = (node.op_type, node.name)
    op_type, name = failed
    return ImportFailure(reason, op_type, _node_label(model, op_type, name))


def short_reason(exc: BaseException) -> str:
    """The last line of the message: TVM's errors put a C++ traceback before it."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return text[:240] + ("..." if len(text) > 240 else "")


def _find_node(model: onnx.ModelProto, *, name: str) -> onnx.NodeProto | None:
    return next((n for n in model.graph.node if n.name == name), None)


def _node_label(model: onnx.ModelProto, op_type: str, name: str) -> str:
    if name:
        return f"node '{name}'"
    same = [n for n in model.graph.node if n.op_type == op_type]
    if len(same) == 1 and same[0].output:
        return f"the node computing '{same[0].output[0]}'"
    return "an unnamed node"


def _simplified_forms(model: onnx.ModelProto, shapes: dict[str, list[int]]):
    """The forms to try after a failed import, best first (each made lazily)."""
    try:
        static = with_static_inputs(model, shapes)
        inferred = onnx.shape_inference.infer_shapes(static, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - a model shape inference rejects
        log.info("shape inference failed: %s", short_reason(exc))
        return
    folded = fold_constants(inferred)
    if folded is not None:
        yield folded
    else:  # onnxruntime could not fold it into standard operators: shapes alone
        yield inferred


def with_static_inputs(model: onnx.ModelProto,
                       shapes: dict[str, list[int]]) -> onnx.ModelProto:
    """A copy whose inputs have the concrete shapes, so Shape ops become foldable."""
    static = onnx.ModelProto()
    static.CopyFrom(model)
    for inp in static.graph.input:
        if inp.name not in shapes:
            continue
        dims = inp.type.tensor_type.shape.dim
        del dims[:]
        for size in shapes[inp.name]:
            dims.add().dim_value = int(size)
    return static


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """onnxruntime's basic offline optimisation of ``model``, or None if unusable.

    The basic level only folds constants and removes redundant nodes, but the result is
    checked anyway: a node outside the default domain (an onnxruntime contrib op) would
    be one TVM cannot import, so such a result is discarded.
    """
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    with tempfile.TemporaryDirectory(prefix="simpletvm-fold-") as work:
        out = os.path.join(work, "folded.onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = out
        options.log_severity_level = 3
        options.intra_op_num_threads = 1
        try:
            ort.InferenceSession(model.SerializeToString(), options,
                                 providers=["CPUExecutionProvider"])
            folded = onnx.load(out)
        except Exception as exc:  # noqa: BLE001 - onnxruntime rejects some models
            log.info("onnxruntime could not optimise the model: %s", short_reason(exc))
            return None
    foreign = sorted({f"{n.domain}.{n.op_type}" for n in folded.graph.node
                      if n.domain not in _DEFAULT_DOMAINS})
    if foreign:
        log.info("onnxruntime's optimised model has non-standard operators: %s", foreign)
        return None
    # onnxruntime declares every domain it knows; keep the default one only
    default = [entry for entry in folded.opset_import if entry.domain in _DEFAULT_DOMAINS]
    del folded.opset_import[:]
    folded.opset_import.extend(default)
    return folded
