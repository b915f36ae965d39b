"""Deterministic sample ONNX models, built with ``onnx.helper`` and seeded weights.

Nothing is downloaded: every model is generated from code so that tests, the README
demo and the benchmarks run on a machine with no network. The small "toy" models live
here; real architectures (ResNet-18, MobileNetV2, a BERT encoder) with random weights
live in :mod:`simpletvm.samples_real` and are imported only when one is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
_ONNX_DTYPES = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64}


class SampleInput(NamedTuple):
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class SampleSpec:
    """One sample; ``inputs`` lists every graph input, since BERT-style models take two."""

    name: str
    description: str
    inputs: tuple[SampleInput, ...]
    build: Callable[[np.random.Generator], onnx.ModelProto]
    kind: str = "toy"

    @property
    def input_name(self) -> str:
        """The first input's name, kept for callers written for single-input samples."""
        return self.inputs[0].name

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.inputs[0].shape


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
        """He-normal by default, with fan-in taken from every dimension but the first."""
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

    def op(self, op_type: str, inputs: list[str], *, out: str | None = None, **attrs) -> str:
        """Add one node; ``out`` names its output, for graph outputs worth a readable name."""
        out = out or self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1, *,
             groups: int = 1, bias: bool = True) -> str:
        """Same-padded conv; ``groups=cin`` gives a depthwise conv, ``bias=False`` one before BN."""
        w = self.weight((cout, cin // groups, k, k))
        pad = k // 2
        inputs = [x, w]
        if bias:
            inputs.append(self.const(np.zeros(cout, dtype=np.float32)))
        # group is only written when it matters, so the toy samples keep their bytes
        extra = {"group": groups} if groups != 1 else {}
        return self.op("Conv", inputs, kernel_shape=[k, k], strides=[stride, stride],
                       pads=[pad, pad, pad, pad], **extra)

    def batch_norm(self, x: str, channels: int) -> str:
        """Inference BN with gamma/beta near 1/0; mean/var are placeholders to calibrate."""
        gamma = self.const((1.0 + 0.1 * self.rng.standard_normal(channels)).astype(np.float32))
        beta = self.const((0.1 * self.rng.standard_normal(channels)).astype(np.float32))
        mean = self.const(np.zeros(channels, dtype=np.float32))
        var = self.const(np.ones(channels, dtype=np.float32))
        return self.op("BatchNormalization", [x, gamma, beta, mean, var], epsilon=1e-5)

    def dense(self, x: str, din: int, dout: int, scale: float | None = None, *,
              out: str | None = None) -> str:
        w = self.weight((din, dout), scale)
        b = self.const((self.rng.standard_normal(dout) * 0.01).astype(np.float32))
        return self.op("Add", [self.op("MatMul", [x, w]), b], out=out)

    def layer_norm(self, x: str, dim: int, epsilon: float = 1e-5, *,
                   out: str | None = None) -> str:
        gamma = self.const(np.ones(dim, dtype=np.float32))
        beta = self.const(np.zeros(dim, dtype=np.float32))
        return self.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=epsilon,
                       out=out)

    def model(self, name: str, inputs: Sequence[SampleInput], output: str,
              output_shape: tuple[int, ...]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info(i.name, _ONNX_DTYPES[i.dtype], list(i.shape))
             for i in inputs],
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
    return g.model("cnn", [SampleInput("input", (1, 3, 64, 64))], out, (1, 10))


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
    return g.model("resnet", [SampleInput("input", (1, 3, 32, 32))], out, (1, 10))


def _mlp(rng: np.random.Generator) -> onnx.ModelProto:
    g = _GraphBuilder(rng)
    x = g.op("Relu", [g.dense("input", 256, 512)])
    x = g.op("Relu", [g.dense(x, 512, 256)])
    out = g.dense(x, 256, 10)
    return g.model("mlp", [SampleInput("input", (1, 256))], out, (1, 10))


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
    return g.model("attention", [SampleInput("input", (1, seq, dim))], out, (1, seq, dim))


def _tiny(rng: np.random.Generator) -> onnx.ModelProto:
    g = _GraphBuilder(rng)
    out = g.op("Relu", [g.dense("input", 64, 64)])
    return g.model("tiny", [SampleInput("input", (1, 64))], out, (1, 64))


def _real(builder: str) -> Callable[[np.random.Generator], onnx.ModelProto]:
    """Defer importing the real architectures: listing samples should stay instant."""

    def build(rng: np.random.Generator) -> onnx.ModelProto:
        from . import samples_real

        return getattr(samples_real, builder)(rng)

    return build


def _one(shape: tuple[int, ...]) -> tuple[SampleInput, ...]:
    return (SampleInput("input", shape),)


IMAGE_INPUTS = _one((1, 3, 224, 224))
BERT_SEQ = 64
BERT_INPUTS = (SampleInput("input_ids", (1, BERT_SEQ), "int64"),
               SampleInput("attention_mask", (1, BERT_SEQ), "int64"))

SAMPLES: dict[str, SampleSpec] = {
    s.name: s
    for s in [
        SampleSpec("cnn", "small CNN: 3 conv+relu, global pool, dense", _one((1, 3, 64, 64)),
                   _cnn),
        SampleSpec("resnet", "ResNet-style: stem, 3 residual blocks, pool, dense",
                   _one((1, 3, 32, 32)), _resnet),
        SampleSpec("mlp", "MLP: 256-512-256-10 with relu", _one((1, 256)), _mlp),
        SampleSpec("attention", "transformer block: LayerNorm, attention (MatMul, Softmax), FFN",
                   _one((1, 32, 64)), _attention),
        SampleSpec("tiny", "one dense+relu layer, for fast tests", _one((1, 64)), _tiny),
        SampleSpec("resnet18", "ResNet-18 (torchvision layout), 224x224, 11.7M params, "
                   "random weights, calibrated BN", IMAGE_INPUTS, _real("resnet18"), "real"),
        SampleSpec("mobilenet_v2", "MobileNetV2 (torchvision layout, width 1.0), 224x224, "
                   "3.5M params, random weights, calibrated BN", IMAGE_INPUTS,
                   _real("mobilenet_v2"), "real"),
        SampleSpec("bert_encoder", "BERT-base-style encoder: 2 layers, hidden 768, 12 heads, "
                   f"seq {BERT_SEQ}, 38M params, random weights", BERT_INPUTS,
                   _real("bert_encoder"), "real"),
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
