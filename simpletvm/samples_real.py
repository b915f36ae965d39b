"""Real architectures (ResNet-18, MobileNetV2, a BERT encoder) with seeded random weights.

They give TVM the operator mix and tensor sizes of real networks without downloading any
weights. Random weights alone would let activations explode or vanish over dozens of layers,
so the BatchNormalization statistics are calibrated on a fixed input: outputs stay of order 1
and comparisons between backends remain meaningful.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from .samples import BERT_INPUTS, BERT_SEQ, IMAGE_INPUTS, OPSET, _GraphBuilder

# Independent of the weight seed, so a model depends only on its own seed.
_CALIBRATION_SEED = 1234


def count_parameters(model: onnx.ModelProto) -> int:
    """Count what PyTorch calls parameters, to compare with torchvision's published counts.

    That is every float initializer with at least one dimension, minus BatchNormalization
    running mean/var (buffers in PyTorch). Scalar constants (Clip bounds, GELU factors) and
    integer tensors (shapes, position ids) are not parameters either.
    """
    stats = {name for node in model.graph.node if node.op_type == "BatchNormalization"
             for name in node.input[3:5]}
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer
               if t.name not in stats and t.dims and t.data_type == TensorProto.FLOAT)


def _round_stat(x: np.ndarray) -> np.ndarray:
    """Keep 8 mantissa bits, so last-bit differences between CPUs rarely change the bytes."""
    mantissa, exponent = np.frexp(x.astype(np.float64))
    return np.ldexp(np.round(mantissa * 256) / 256, exponent).astype(np.float32)


def _run_segment(nodes: list[onnx.NodeProto], inits: dict[str, onnx.TensorProto],
                 values: dict[str, np.ndarray]) -> None:
    produced = {o for n in nodes for o in n.output}
    needed = list(dict.fromkeys(i for n in nodes for i in n.input if i and i not in produced))
    feeds = {name: values[name] for name in needed if name not in inits}
    graph = helper.make_graph(
        nodes, "segment",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for k, v in feeds.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in produced],
        initializer=[inits[name] for name in needed if name in inits],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # deterministic, and light on shared machines
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values.update(zip(names, session.run(names, feeds)))


def calibrate_batchnorm(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    """Set each BN's running mean/var to the per-channel statistics of its input on ``feeds``.

    The graph runs once, in segments that stop before each BN whose input is not known yet,
    so every BN sees the already-calibrated layers before it (one forward pass in total).
    """
    inits = {t.name: t for t in model.graph.initializer}
    values = dict(feeds)
    pending: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            if node.input[0] not in values:
                _run_segment(pending, inits, values)
                pending = []
            x = values[node.input[0]]
            mean, var = x.mean(axis=(0, 2, 3)), np.maximum(x.var(axis=(0, 2, 3)), 1e-6)
            for name, stat in zip(node.input[3:5], (mean, var)):
                inits[name].CopyFrom(numpy_helper.from_array(_round_stat(stat), name))
        pending.append(node)


def _calibrated(g: _GraphBuilder, name: str, out: str) -> onnx.ModelProto:
    model = g.model(name, IMAGE_INPUTS, out, (1, 1000))
    image = np.random.default_rng(_CALIBRATION_SEED).standard_normal(IMAGE_INPUTS[0].shape)
    calibrate_batchnorm(model, {IMAGE_INPUTS[0].name: image.astype(np.float32)})
    return model


def _conv_bn(g: _GraphBuilder, x: str, cin: int, cout: int, k: int, stride: int = 1,
             groups: int = 1) -> str:
    """Conv without bias then BN, as in torchvision (the BN bias makes a conv bias redundant)."""
    return g.batch_norm(g.conv(x, cin, cout, k, stride, groups=groups, bias=False), cout)


def _classifier(g: _GraphBuilder, x: str, channels: int) -> str:
    """Global average pool and Linear(channels, 1000), scaled like torch's default init."""
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x])])
    return g.dense(x, channels, 1000, scale=channels ** -0.5, out="logits")


def resnet18(rng: np.random.Generator) -> onnx.ModelProto:
    """torchvision ``resnet18``: BasicBlocks [2, 2, 2, 2], 1x1/2 conv+BN downsample shortcuts."""
    g = _GraphBuilder(rng)
    x = g.op("Relu", [_conv_bn(g, "input", 3, 64, 7, 2)])
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for stage, cout in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            y = g.op("Relu", [_conv_bn(g, x, cin, cout, 3, stride)])
            y = _conv_bn(g, y, cout, cout, 3)
            if stride != 1 or cin != cout:
                x = _conv_bn(g, x, cin, cout, 1, stride)
            x = g.op("Relu", [g.op("Add", [x, y])])
            cin = cout
    return _calibrated(g, "resnet18", _classifier(g, x, 512))


_MOBILENET_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                          (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def mobilenet_v2(rng: np.random.Generator) -> onnx.ModelProto:
    """torchvision ``mobilenet_v2`` (width 1.0): inverted residuals, depthwise convs, ReLU6."""
    g = _GraphBuilder(rng)
    lo, hi = g.const(np.array(0.0, np.float32)), g.const(np.array(6.0, np.float32))

    def relu6(y: str) -> str:
        return g.op("Clip", [y, lo, hi])

    x = relu6(_conv_bn(g, "input", 3, 32, 3, 2))
    cin = 32
    for t, c, n, s in _MOBILENET_V2_SETTINGS:
        for i in range(n):
            stride, hidden = (s if i == 0 else 1), cin * t
            y = relu6(_conv_bn(g, x, cin, hidden, 1)) if t != 1 else x
            y = relu6(_conv_bn(g, y, hidden, hidden, 3, stride, groups=hidden))
            y = _conv_bn(g, y, hidden, c, 1)  # linear bottleneck: no activation
            x = g.op("Add", [x, y]) if stride == 1 and cin == c else y
            cin = c
    x = relu6(_conv_bn(g, x, cin, 1280, 1))
    return _calibrated(g, "mobilenet_v2", _classifier(g, x, 1280))


def bert_encoder(rng: np.random.Generator, *, layers: int = 2, hidden: int = 768,
                 heads: int = 12, ffn: int = 3072, vocab: int = 30522,
                 max_positions: int = 512) -> onnx.ModelProto:
    """BERT-base-style encoder; LayerNorm everywhere keeps it of order 1 without calibration."""
    g = _GraphBuilder(rng)
    seq, head_dim = BERT_SEQ, hidden // heads

    def scalar(v: float) -> str:
        return g.const(np.array(v, np.float32))

    def shape(*dims: int) -> str:
        return g.const(np.array(dims, np.int64))

    def dense(x: str, din: int, dout: int, out: str | None = None) -> str:
        return g.dense(x, din, dout, scale=(2.0 / (din + dout)) ** 0.5, out=out)  # Xavier

    def embed(rows: int, ids: str) -> str:
        return g.op("Gather", [g.weight((rows, hidden), 0.02), ids], axis=0)

    def heads_of(x: str, perm: list[int]) -> str:
        return g.op("Transpose", [g.op("Reshape", [x, shape(1, seq, heads, head_dim)])],
                    perm=perm)

    ids, mask = (i.name for i in BERT_INPUTS)
    positions = g.const(np.arange(seq, dtype=np.int64)[None])
    x = g.op("Add", [embed(vocab, ids), embed(max_positions, positions)])
    x = g.op("Add", [x, embed(2, g.const(np.zeros((1, seq), np.int64)))])  # token type 0
    x = g.layer_norm(x, hidden, 1e-12)
    # (1 - mask) * -10000, broadcast over heads and query positions
    bias = g.op("Sub", [scalar(1.0), g.op("Cast", [mask], to=TensorProto.FLOAT)])
    bias = g.op("Reshape", [g.op("Mul", [bias, scalar(-10000.0)]), shape(1, 1, 1, seq)])
    for layer in range(layers):
        q = heads_of(dense(x, hidden, hidden), [0, 2, 1, 3])
        k = heads_of(dense(x, hidden, hidden), [0, 2, 3, 1])
        v = heads_of(dense(x, hidden, hidden), [0, 2, 1, 3])
        scores = g.op("Div", [g.op("MatMul", [q, k]), scalar(head_dim ** 0.5)])
        probs = g.op("Softmax", [g.op("Add", [scores, bias])], axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, shape(1, seq, hidden)])
        x = g.layer_norm(g.op("Add", [x, dense(ctx, hidden, hidden)]), hidden, 1e-12)
        h = dense(x, hidden, ffn)
        erf = g.op("Erf", [g.op("Div", [h, scalar(2.0 ** 0.5)])])
        h = g.op("Mul", [g.op("Mul", [h, g.op("Add", [erf, scalar(1.0)])]), scalar(0.5)])
        last = layer == layers - 1
        x = g.layer_norm(g.op("Add", [x, dense(h, ffn, hidden)]), hidden, 1e-12,
                         out="last_hidden_state" if last else None)
    return g.model("bert_encoder", BERT_INPUTS, x, (1, seq, hidden))
