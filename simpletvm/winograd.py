"""Winograd convolution for 3x3, stride-1 convolutions on a CPU.

A direct 3x3 convolution does 9 multiply-adds per output and input channel. Winograd's
F(m x m, 3 x 3) computes an m x m output tile from an (m+2) x (m+2) input tile with
(m+2)^2 of them: 4 times fewer for m = 4 (2.25 for m = 2) in the batched matrix product
that dominates, plus input and output transforms that are cheap and memory-bound.
onnxruntime's CPU kernels convolve directly and run near this CPU's peak, so a direct
schedule can at best tie with it; Winograd is the way past it.

The rewrite happens at the Relax level, before task extraction and the build alike (so
both see the same fused functions). The weights are constants, so their transform is
computed here once, in float64; the convolution becomes three functions (data pack,
batched matrix product with the transformed weights, inverse), whose blocks are TOPI's
so that MetaSchedule's own CPU rules for Winograd schedule the two transforms, while the
matrix product is tuned like any other, its constant weights layout-free.

The transformed weights are (m+2)^2 / 9 times larger (4x for m = 4). Where a layer's
weights dominate its cost (many channels on a small image), reading them costs more than
the saved arithmetic, so ``auto`` keeps those layers direct (``choose_tile``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# what reading one byte of weights costs, in FLOPs: a rough guide, not a measurement,
# from this machine's GEMM peak (157 GFLOPS, docs/quality.md) against an assumed 20 GB/s
# of memory bandwidth (see choose_tile)
FLOPS_PER_WEIGHT_BYTE = 8.0


@dataclass(frozen=True)
class ConvShape:
    in_channels: int
    out_channels: int
    out_height: int
    out_width: int

    def direct_flops(self) -> float:
        return 2.0 * 9 * self.in_channels * self.out_channels * self.out_height * self.out_width

    def winograd_flops(self, tile: int) -> float:
        """The batched matrix product's FLOPs (the transforms are memory-bound)."""
        alpha = tile + 2
        tiles = -(-self.out_height // tile) * -(-self.out_width // tile)
        return 2.0 * alpha * alpha * self.in_channels * self.out_channels * tiles

    def weight_bytes(self, tile: int | None) -> float:
        taps = 9 if tile is None else (tile + 2) ** 2
        return 4.0 * taps * self.in_channels * self.out_channels

    def cost(self, tile: int | None) -> float:
        """FLOPs plus the weights' bytes at FLOPS_PER_WEIGHT_BYTE: a rough roofline."""
        flops = self.direct_flops() if tile is None else self.winograd_flops(tile)
        return flops + FLOPS_PER_WEIGHT_BYTE * self.weight_bytes(tile)


def choose_tile(shape: ConvShape, mode: str) -> int | None:
    """The Winograd tile for this convolution, or None to keep it direct.

    ``auto`` takes the cheapest of direct, F(2x2) and F(4x4) by ``ConvShape.cost``: the
    arithmetic plus the weights' bytes at what reading them costs. Small images with
    many channels (7 x 7 x 512) take F(2x2), whose weights are smaller than F(4x4)'s;
    layers with fewer than 8 channels in or out stay direct, too small to matter.
    """
    if mode == "off":
        return None
    if mode in ("2", "4"):
        return int(mode)
    if min(shape.in_channels, shape.out_channels) < 8:
        return None
    return min((None, 2, 4), key=shape.cost)


def transform_weight(weight: np.ndarray, tile: int) -> np.ndarray:
    """OIHW 3x3 weights to Winograd's (alpha, alpha, in, out) form, computed in float64."""
    _, _, g = _matrices(tile)
    return np.einsum("ek,oikl,nl->enio", g, weight.astype(np.float64), g).astype(weight.dtype)


def _eligible(call, weight) -> tuple[ConvShape, list[int], str] | None:
    """The shape, padding and layout (NCHW or NHWC) of a conv2d Winograd can replace:
    3x3, stride 1, no dilation or groups, float32 constant weights, static shapes."""
    attrs = call.attrs
    layouts = (str(attrs.data_layout), str(attrs.kernel_layout))
    if layouts not in (("NCHW", "OIHW"), ("NHWC", "OHWI")):
        return None
    if str(attrs.out_layout) not in ("", layouts[0]) or int(attrs.groups) != 1:
        return None
    if [int(s) for s in attrs.strides] != [1, 1] or [int(d) for d in attrs.dilation] != [1, 1]:
        return None
    kernel = weight.shape[2:] if layouts[1] == "OIHW" else weight.shape[1:3]
    if weight.dtype != np.float32 or weight.ndim != 4 or tuple(kernel) != (3, 3):
        return None
    out_type = call.ty  # the call's tensor type: shape and dtype
    try:
        out_shape = [int(d) for d in out_type.shape.values]
    except (AttributeError, TypeError, ValueError):
        return None  # dynamic shapes
    if str(out_type.dtype) != "float32" or len(out_shape) != 4:
        return None
    nchw = layouts[0] == "NCHW"
    height, width = out_shape[2:] if nchw else out_shape[1:3]
    in_channels = int(weight.shape[1] if nchw else weight.shape[3])
    shape = ConvShape(in_channels, int(weight.shape[0]), height, width)
    return shape, [int(p) for p in attrs.padding], layouts[0]


def _matrices(tile: int):
    from tvm.topi.nn.winograd_util import _cook_toom_convolution, _interpolation_points

    return _cook_toom_convolution(_interpolation_points(tile + 1), tile, 3)


def _const(matrix: np.ndarray, name: str):
    from tvm.topi.utils import const_matrix

    return const_matrix(matrix.astype(np.float32), name)


def data_pack_te(data, *, tile: int, padding: list[int], layout: str = "NCHW"):
    """Input tiles to the Winograd domain: V[e, n, p, c] = (B^T d B)[e, n] for the tile
    p of channel c. The blocks are TOPI's (pad, input tile, data pack), so MetaSchedule's
    own CPU rule for Winograd's data pack schedules them: it unrolls the transform, so
    the multiplications by B's zeros and ones vanish."""
    from tvm import te, topi

    nchw = layout == "NCHW"
    if nchw:
        batch, channels, height, width = (int(d) for d in data.shape)
    else:
        batch, height, width, channels = (int(d) for d in data.shape)
    top, left, bottom, right = padding
    alpha = tile + 2
    tiles_h = -(-(height + top + bottom - 2) // tile)
    tiles_w = -(-(width + left + right - 2) // tile)
    per_image = tiles_h * tiles_w
    # pad to whole tiles: the last tile may read past the convolution's own padding
    extra_h = tiles_h * tile + 2 - height - top
    extra_w = tiles_w * tile + 2 - width - left
    if nchw:
        padded = topi.nn.pad(data, (0, 0, top, left), (0, 0, extra_h, extra_w),
                             name="data_pad")
        input_tile = te.compute(
            (batch * per_image, channels, alpha, alpha),
            lambda p, c, e, n: padded[p // per_image, c,
                                      (p % per_image) // tiles_w * tile + e,
                                      (p % tiles_w) * tile + n],
            name="input_tile", attrs={"schedule_rule": "None"})
        tile_of = lambda p, c, a, b: input_tile[p, c, a, b]  # noqa: E731
    else:
        padded = topi.nn.pad(data, (0, top, left, 0), (0, extra_h, extra_w, 0),
                             name="data_pad")
        input_tile = te.compute(
            (alpha, alpha, batch * per_image, channels),
            lambda e, n, p, c: padded[p // per_image, (p % per_image) // tiles_w * tile + e,
                                      (p % tiles_w) * tile + n, c],
            name="input_tile", attrs={"schedule_rule": "None"})
        tile_of = lambda p, c, a, b: input_tile[a, b, p, c]  # noqa: E731
    _, b_mat, _ = _matrices(tile)
    b_const = _const(b_mat, "B")
    r_a = te.reduce_axis((0, alpha), "r_a")
    r_b = te.reduce_axis((0, alpha), "r_b")
    return te.compute(
        (alpha, alpha, batch * per_image, channels),
        lambda e, n, p, c: te.sum(tile_of(p, c, r_a, r_b) * b_const[r_a, e]
                                  * b_const[r_b, n], axis=[r_a, r_b]),
        name="data_pack",
        attrs={"schedule_rule": f"conv2d_{layout.lower()}_winograd_data_pack"})


def batch_gemm_te(packed, kernel):
    """M[e, n, p, o] = sum_c V[e, n, p, c] U[e, n, c, o]: one matrix product per point
    of the tile, output channels innermost (the vectorised axis)."""
    from tvm import te

    alpha, _, tiles, channels = (int(d) for d in packed.shape)
    out_channels = int(kernel.shape[3])
    c = te.reduce_axis((0, channels), "c")
    return te.compute(
        (alpha, alpha, tiles, out_channels),
        lambda e, n, p, o: te.sum(packed[e, n, p, c] * kernel[e, n, c, o], axis=c),
        name="winograd_batch_gemm")


def inverse_te(product, *, tile: int, batch: int, out_height: int, out_width: int,
               layout: str = "NCHW"):
    """Back from the Winograd domain: Y = A^T M A per tile, cropped to the output. The
    inverse block is TOPI's, for MetaSchedule's CPU rule; ``product_copy`` stands in for
    the producer that rule expects (the matrix product is another function here)."""
    from tvm import te

    alpha, _, tiles, out_channels = (int(d) for d in product.shape)
    product_copy = te.compute(product.shape, lambda *i: product(*i), name="product_copy")
    a_mat, _, _ = _matrices(tile)
    a_const = _const(a_mat, "A")
    tiles_h, tiles_w = -(-out_height // tile), -(-out_width // tile)
    r_a = te.reduce_axis((0, alpha), "r_a")
    r_b = te.reduce_axis((0, alpha), "r_b")
    rule = f"conv2d_{layout.lower()}_winograd_inverse"

    def tile_index(b, h, w):
        return b * tiles_h * tiles_w + (h // tile) * tiles_w + w // tile

    def transform(p, o, h, w):
        return te.sum(product_copy[r_a, r_b, p, o] * a_const[r_a, h] * a_const[r_b, w],
                      axis=[r_a, r_b])

    if layout == "NCHW":
        inverse = te.compute((out_channels, tiles, tile, tile),
                             lambda o, p, h, w: transform(p, o, h, w),
                             name="inverse", attrs={"schedule_rule": rule})
        return te.compute(
            (batch, out_channels, out_height, out_width),
            lambda b, o, h, w: inverse[o, tile_index(b, h, w), h % tile, w % tile],
            name="conv2d_winograd")
    inverse = te.compute((tile, tile, tiles, out_channels),
                         lambda h, w, p, o: transform(p, o, h, w),
                         name="inverse", attrs={"schedule_rule": rule})
    return te.compute(
        (batch, out_height, out_width, out_channels),
        lambda b, h, w, o: inverse[h % tile, w % tile, tile_index(b, h, w), o],
        name="conv2d_winograd")


def rewrite_winograd(mod, mode: str = "auto"):
    """``mod`` with every eligible conv2d computed by Winograd (``choose_tile``), as three
    functions: the input transform, a batched matrix product with the transformed
    weights (a constant, layout-free), and the inverse transform, which the convolution's
    element-wise epilogue (bias, batch norm, activation) fuses into.

    Three small tuning tasks instead of one: a single fused function unrolls into
    thousands of statements and took 3 to 7 s to compile per candidate here, and the
    batched matrix product is a plain tensor program that MetaSchedule tiles well.
    Returns the module and the number of convolutions rewritten.
    """
    import tvm
    from tvm import relax

    if mode == "off":
        return mod, 0
    conv2d = tvm.ir.Op.get("relax.nn.conv2d")

    @relax.expr_functor.mutator
    class _Rewriter(relax.PyExprMutator):
        def __init__(self, module) -> None:
            super().__init__(module)
            self.module = module
            self.rewritten = 0

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if not (isinstance(call.op, tvm.ir.Op) and call.op.same_as(conv2d)):
                return call
            weight = call.args[1]
            if not isinstance(weight, tvm.ir.expr.Constant):
                return call
            weight_np = weight.value.numpy()
            found = _eligible(call, weight_np)
            tile = choose_tile(found[0], mode) if found is not None else None
            if tile is None:
                return call
            shape, padding, layout = found
            batch = int(call.ty.shape.values[0])
            self.rewritten += 1
            bb = self.builder_
            packed = bb.emit(bb.call_te(
                lambda x: data_pack_te(x, tile=tile, padding=padding, layout=layout),
                call.args[0], primfunc_name_hint="winograd_data_pack"))
            oihw = weight_np if layout == "NCHW" else weight_np.transpose(0, 3, 1, 2)
            kernel = relax.const(transform_weight(oihw, tile))
            product = bb.emit(bb.call_te(batch_gemm_te, packed, kernel,
                                         primfunc_name_hint="winograd_batch_gemm"))
            return bb.call_te(
                lambda m: inverse_te(m, tile=tile, batch=batch, out_height=shape.out_height,
                                     out_width=shape.out_width, layout=layout),
                product, primfunc_name_hint="winograd_inverse")

        def run(self):
            for gvar, func in self.module.functions_items():
                if isinstance(func, relax.Function):
                    self.builder_.update_func(gvar, self.visit_expr(func))
            return self.builder_.get()

    rewriter = _Rewriter(mod)
    out = rewriter.run()
    return out, rewriter.rewritten
