"""Deterministic sample ONNX models, built with ``onnx.helper`` and seeded weights.

Nothing is downloaded: every model is generated from code so that tests, the README
demo and the benchmarks run on a machine with no network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


@dataclass(frozen=True)
class SampleSpec:
    name: str
    description: str
    input_name: str
    input_shape: tuple[int, ...]
    build: Callable[[np.random.Generator], onnx.ModelProto]


class _GraphBuilder:
    """Collects nodes and initializers; names are generated so they stay deterministic."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def weight(self, shape: tuple[int, ...], scale: float | None = None) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        scale = scale if scale is not None else (2.0 / max(fan_in, 1)) ** 0.5
        data = (self.rng.standard_normal(shape) * scale).astype(np.float32)
        name = self._name("w")
        self.inits.append(numpy_helper.from_array(data, name))
        return name

    def const(self, data: np.ndarray) -> str:
        name = self._name("c")
        self.inits.append(numpy_helper.from_array(data, name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        out = self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1) -> str:
        w = self.weight((cout, cin, k, k))
        b = self.const(np.zeros(cout, dtype=np.float32))
        pad = k // 2
        return self.op("Conv", [x, w, b], kernel_shape=[k, k], strides=[stride, stride],
                       pads=[pad, pad, pad, pad])

    def dense(self, x: str, din: int, dout: int) -> str:
        w = self.weight((din, dout))
        b = self.const((self.rng.standard_normal(dout) * 0.01).astype(np.float32))
        return self.op("Add", [self.op("MatMul", [x, w]), b])

    def layer_norm(self, x: str, dim: int) -> str:
        gamma = self.const(np.ones(dim, dtype=np.float32))
        beta = self.const(np.zeros(dim, dtype=np.float32))
        return self.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=1e-5)

    def model(self, name: str, input_name: str, input_shape: tuple[int, ...], output: str,
              output_shape: tuple[int, ...]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, list(output_shape))],
            initializer=self.inits,
        )
        model = helper.make_model(graph, producer_name="simpletvm.samples",
                                  opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def _cnn(rng: np.random.Generator) -> onnx.ModelProto:
    g = _GraphBuilder(rng)
    x = g.op("Relu", [g.conv("input", 3, 16)])
    x = g.op("Relu", [g.conv(x, 16, 32, stride=2)])
    x = g.op("Relu", [g.conv(x, 32, 32)])
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x])])
    out = g.dense(x, 32, 10)
    return g.model("cnn", "input", (1, 3, 64, 64), out, (1, 10))


def _resnet(rng: np.random.Generator) -> onnx.ModelProto:
    g = _GraphBuilder(rng)
    x = g.op("Relu", [g.conv("input", 3, 16)])
    for _ in range(2):
        y = g.op("Relu", [g.conv(x, 16, 16)])
        y = g.conv(y, 16, 16)
        x = g.op("Relu", [g.op("Add", [x, y])])
    x = g.op("Relu", [g.conv(x, 16, 32, stride=2)])
    y = g.op("Relu", [g.conv(x, 32, 32)])
    x = g.op("Relu", [g.op("Add", [x, g.conv(y, 32, 32)])])
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x])])
    out = g.dense(x, 32, 10)
    return g.model("resnet", "input", (1, 3, 32, 32), out, (1, 10))


def _mlp(rng: np.random.Generator) -> onnx.ModelProto:
    g = _GraphBuilder(rng)
    x = g.op("Relu", [g.dense("input", 256, 512)])
    x = g.op("Relu", [g.dense(x, 512, 256)])
    out = g.dense(x, 256, 10)
    return g.model("mlp", "input", (1, 256), out, (1, 10))


def _attention(rng: np.random.Generator) -> onnx.ModelProto:
    seq, dim = 32, 64
    g = _GraphBuilder(rng)
    h = g.layer_norm("input", dim)
    q = g.dense(h, dim, dim)
    k = g.dense(h, dim, dim)
    v = g.dense(h, dim, dim)
    kt = g.op("Transpose", [k], perm=[0, 2, 1])
    scores = g.op("Mul", [g.op("MatMul", [q, kt]),
                          g.const(np.array(1.0 / np.sqrt(dim), dtype=np.float32))])
    attn = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
    x = g.op("Add", ["input", g.dense(attn, dim, dim)])
    ff = g.dense(g.op("Relu", [g.dense(g.layer_norm(x, dim), dim, 2 * dim)]), 2 * dim, dim)
    out = g.op("Add", [x, ff])
    return g.model("attention", "input", (1, seq, dim), out, (1, seq, dim))


def _tiny(rng: np.random.Generator) -> onnx.ModelProto:
    g = _GraphBuilder(rng)
    out = g.op("Relu", [g.dense("input", 64, 64)])
    return g.model("tiny", "input", (1, 64), out, (1, 64))


SAMPLES: dict[str, SampleSpec] = {
    s.name: s
    for s in [
        SampleSpec("cnn", "small CNN: 3 conv+relu, global pool, dense", "input",
                   (1, 3, 64, 64), _cnn),
        SampleSpec("resnet", "ResNet-style: stem, 3 residual blocks, pool, dense", "input",
                   (1, 3, 32, 32), _resnet),
        SampleSpec("mlp", "MLP: 256-512-256-10 with relu", "input", (1, 256), _mlp),
        SampleSpec("attention", "transformer block: LayerNorm, attention (MatMul, Softmax), FFN",
                   "input", (1, 32, 64), _attention),
        SampleSpec("tiny", "one dense+relu layer, for fast tests", "input", (1, 64), _tiny),
    ]
}


class UnknownSampleError(ValueError):
    pass


def sample_model(name: str, *, seed: int = 0) -> onnx.ModelProto:
    """Build the named sample; the same name and seed give byte-identical models."""
    if name not in SAMPLES:
        raise UnknownSampleError(
            f"unknown sample model '{name}'; choose one of: {', '.join(SAMPLES)}"
        )
    return SAMPLES[name].build(np.random.default_rng(seed))


def write_sample(name: str, path: str | Path, *, seed: int = 0) -> Path:
    path = Path(path)
    model = sample_model(name, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path
