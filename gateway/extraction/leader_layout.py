"""LEADER's trunk laid out for onnxruntime's CPU kernels (:func:`trunk_for_cpu`).

The trunk is the part of the network :func:`gateway.extraction.leader_graph.split_at_heads`
keeps after the fusions of :mod:`gateway.extraction.leader_graph`.
onnxruntime runs convolutions in a blocked layout (NCHWc) and reorders tensors into
and out of it around every node it has no blocked kernel for -- each GELU and layer
norm -- so a third of the trunk's time went to layout changes, and depthwise
convolutions whose channel count is not a multiple of 4 ran unblocked, several times
slower. The rewrites, each the same sums in another order:

- the network's inverted bottlenecks (depthwise conv, channel layer norm, 1 x 1
  expansion, GELU, 1 x 1 reduction, residual sum, and the 1 x 1 "adjustment" conv that
  follows most of them) run channels-last: the 1 x 1 convolutions become GEMMs that
  read the layer norm's and GELU's outputs as they are, and only the depthwise conv
  stays blocked. Where the adjustment has fewer outputs than the block has channels,
  adj(x + red(g)) is computed as adj(x) + (adj . red)(g): one E -> A GEMM instead of
  E -> C then C -> A (the reductions were the largest GEMMs). Blocks whose channel count
  is not a multiple of 4 get zero channels so the depthwise conv is blocked;
- TensorFlow's 2x upsampling (two Repeats of eight nodes) becomes one nearest Resize;
- transposes, upsamplings and interleaves move after the per-pixel nodes that follow
  them: the layer norms' transposes back to NCHW land where onnxruntime folds them into
  its reorders, the dilated convolutions' detours through (C, N, H, W) cancel, and the
  position head's 1 x 1 convs, layer norm and GELU run before its upsampling, on a
  quarter of the pixels;
- the position head's 5 x 5 convolution of the upsampled map runs at the low
  resolution as four "phase" kernels interleaved by DepthToSpace.

On a 416 x 416 window the trunk went from about 2.2 to 1.5 us of CPU per pixel, and the
detections of 250 development prints (50 from each set) stayed the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gateway.extraction.leader_graph import (
    TensorGraph,
    drop_dead_nodes,
    drop_unused,
    node_attr,
    replace_nodes,
)

# onnxruntime (1.31) runs a depthwise convolution in its blocked NCHWc layout only when the
# channel count is a multiple of 4: 52, 60 and 108 channels are blocked, 59, 106 and 219
# are not, and then the convolution is several times slower.
_DEPTHWISE_CHANNEL_MULTIPLE = 4
_PER_ELEMENT = ("FastGelu", "Sigmoid", "Tanh", "Relu", "Erf", "Neg", "Abs", "Sqrt")
_ARITHMETIC = ("Add", "Sub", "Mul", "Div")


@dataclass(frozen=True)
class LayoutCounts:
    """How often each trunk rewrite applied: a test pins them for the shipped model."""

    blocks: int  # inverted bottlenecks run as channels-last GEMMs
    folded: int  # ... whose reduction was folded into the 1 x 1 convolution after it
    padded: int  # ... whose channels were padded for the blocked depthwise kernel
    upsamplings: int  # TensorFlow Repeat chains replaced by one nearest Resize
    phase_convs: int  # 2x upsampling + k x k convolution run at the low resolution
    moved: int  # transposes, upsamplings and interleaves moved past per-pixel nodes


def trunk_for_cpu(trunk: bytes) -> tuple[bytes, LayoutCounts]:
    """The trunk of :func:`split_at_heads` rewritten so that onnxruntime's CPU kernels
    spend its time in GEMMs rather than in layout changes; the same outputs (to float
    rounding) under the same names."""
    import onnx

    model = onnx.load_from_string(trunk)
    blocks, folded, padded = _bottlenecks_to_gemms(model)
    upsamplings = _upsamplings_to_resize(model)
    moved = _move_later(model)
    phase_convs = _upsampled_convs_as_phases(model)
    moved += _move_later(model)
    drop_dead_nodes(model)
    drop_unused(model)
    return model.SerializeToString(), LayoutCounts(blocks, folded, padded, upsamplings,
                                                   phase_convs, moved)


def _pointwise_conv(g: TensorGraph, node) -> tuple[np.ndarray, np.ndarray] | None:
    """(weights (out, in), bias (out,)) of a constant 1 x 1 convolution, or None."""
    if node is None or node.op_type != "Conv" or len(node.input) < 2:
        return None
    w = g.const.get(node.input[1])
    if (w is None or w.ndim != 4 or w.shape[2:] != (1, 1) or node_attr(node, "group", 1) != 1
            or any(v != 1 for v in node_attr(node, "strides", [1, 1]))
            or any(v != 0 for v in node_attr(node, "pads", [0, 0, 0, 0]))):
        return None
    bias = g.const.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if len(node.input) > 2 and node.input[2] and bias is None:
        return None
    b = np.zeros(w.shape[0], np.float32) if bias is None else bias.reshape(-1)
    return w[:, :, 0, 0], b


@dataclass
class _Bottleneck:
    """x -> k x k depthwise conv -> channel layer norm -> 1 x 1 expansion -> GELU -> 1 x 1
    reduction -> + x [-> 1 x 1 adjustment], as the layer-norm fusion leaves it."""

    x: str
    depthwise: object
    norm: object
    nodes: list
    exit: object
    expand: tuple[np.ndarray, np.ndarray]
    reduce: tuple[np.ndarray, np.ndarray]
    adjust: tuple[np.ndarray, np.ndarray] | None


def _bottleneck_at(g: TensorGraph, norm) -> _Bottleneck | None:
    """The bottleneck whose (fused) channel layer norm this LayerNormalization is, or None."""
    to_nhwc = g.made_by(norm.input[0], "Transpose")
    back = g.only_use(norm.output[0], "Transpose")
    if (not to_nhwc or not back or node_attr(to_nhwc, "perm") != [0, 2, 3, 1]
            or node_attr(back, "perm") != [0, 3, 1, 2]):
        return None
    depthwise = g.made_by(to_nhwc.input[0], "Conv")
    w = depthwise and g.const.get(depthwise.input[1])
    if (w is None or g.consumers.get(to_nhwc.input[0]) != [to_nhwc] or w.ndim != 4
            or w.shape[1] != 1 or node_attr(depthwise, "group", 1) != w.shape[0]):
        return None
    expand = g.only_use(back.output[0], "Conv")
    gelu = expand and g.only_use(expand.output[0], "FastGelu")
    reduce = gelu and len(gelu.input) == 1 and g.only_use(gelu.output[0], "Conv")
    add = reduce and g.only_use(reduce.output[0], "Add")
    weights = [_pointwise_conv(g, expand), _pointwise_conv(g, reduce)] if add else [None]
    if any(v is None for v in weights) or depthwise.input[0] not in add.input:
        return None
    x = depthwise.input[0]
    if (list(add.input).count(x) != 1 or weights[0][0].shape[1] != w.shape[0]
            or weights[1][0].shape != weights[0][0].shape[::-1]):
        return None
    nodes = [depthwise, to_nhwc, norm, back, expand, gelu, reduce, add]
    adjust_node = g.only_use(add.output[0], "Conv")
    adjust = _pointwise_conv(g, adjust_node)
    if adjust is not None:
        nodes.append(adjust_node)
    return _Bottleneck(x, depthwise, norm, nodes, adjust_node if adjust is not None else add,
                       weights[0], weights[1], adjust)


def _bottlenecks_to_gemms(model) -> tuple[int, int, int]:
    """Run each bottleneck's 1 x 1 convolutions as GEMMs on channels-last tensors.

    onnxruntime blocks the convolutions in NCHWc and puts layout reorders around every
    GELU and layer norm between them; channels-last, the layer norm, the expansion GEMM,
    GELU (with the bias added inside it) and the reduction GEMM read each other's
    output as it is, and only the depthwise convolution keeps the blocked layout. Two
    more savings, the same sums in another order: when the block's output feeds only a
    1 x 1 convolution with fewer channels (A < C), adj(x + red(g)) is computed as
    adj(x) + (adj . red)(g), an E -> A GEMM instead of E -> C; and when C is not a
    multiple of 4 the block's input is padded with zero channels so the depthwise
    convolution is blocked (the layer norm still sees the C real channels).
    Returns (blocks, folded, padded).
    """
    g = TensorGraph(model.graph)
    outputs = {o.name for o in model.graph.output}
    removed: list = []
    anchors: dict[str, list] = {}
    folded = padded = 0
    for norm in [n for n in model.graph.node if n.op_type == "LayerNormalization"]:
        block = _bottleneck_at(g, norm)
        if block is None or any(n.output[0] in outputs for n in block.nodes[:-1]):
            continue
        maker = _NodeMaker(f"{block.exit.name}/gemms")
        fold, pad = _emit_bottleneck(g, block, _padded_channels(g, block, outputs), maker)
        model.graph.initializer.extend(maker.constants)
        removed += block.nodes
        anchors[block.exit.name] = maker.nodes
        folded += fold
        padded += pad
    if anchors:
        replace_nodes(model.graph, removed, anchors)
    return len(anchors), folded, padded


class _NodeMaker:
    """New nodes and constants under one name prefix."""

    def __init__(self, stem: str) -> None:
        self.stem = stem
        self.nodes: list = []
        self.constants: list = []

    def const(self, name: str, value, dtype=np.float32) -> str:
        from onnx import numpy_helper

        name = f"{self.stem}/const/{name}"
        self.constants.append(numpy_helper.from_array(
            np.ascontiguousarray(value, dtype=dtype), name))
        return name

    def add(self, op: str, inputs: list[str], name: str, to: str | None = None,
            **attrs) -> str:
        """Append an ``op`` node called ``name`` under the prefix; its output tensor is
        ``to`` when given, else named like the node. Returns the output's name."""
        from onnx import helper

        tensor = to or f"{self.stem}/{name}"
        self.nodes.append(helper.make_node(
            op, inputs, [tensor], name=f"{self.stem}/{name}",
            domain="com.microsoft" if op == "FastGelu" else "", **attrs))
        return tensor


def _padded_channels(g: TensorGraph, b: _Bottleneck, outputs: set[str]) -> int:
    """The channel count to run the block's depthwise conv with: C rounded up to the
    blocked kernel's multiple when the input is a concat only this block reads (zero
    channels are appended to it) and a 1 x 1 conv after the block absorbs them."""
    c = g.const[b.depthwise.input[1]].shape[0]
    padded = -(-c // _DEPTHWISE_CHANNEL_MULTIPLE) * _DEPTHWISE_CHANNEL_MULTIPLE
    concat = g.made_by(b.x, "Concat")
    if (concat is None or node_attr(concat, "axis") % 4 != 1 or b.x in outputs
            or len(g.consumers.get(b.x, [])) != 2 or b.adjust is None):
        return c
    return padded


def _emit_bottleneck(g: TensorGraph, b: _Bottleneck, padded: int, make: _NodeMaker
                     ) -> tuple[int, int]:
    """Append the channels-last form of the bottleneck to ``make``; (folded, padded)."""
    from onnx import numpy_helper

    w_dw = g.const[b.depthwise.input[1]]
    c = w_dw.shape[0]

    def pad(w: np.ndarray) -> np.ndarray:  # zeros for the padding channels (axis 0)
        return np.concatenate([w, np.zeros((padded - c, *w.shape[1:]), w.dtype)])

    x = b.x
    if padded > c:
        shape = make.add("Shape", [b.x], "shape")
        batch = make.add("Slice", [shape, make.const("n0", [0], np.int64),
                                   make.const("n1", [1], np.int64)], "batch")
        area = make.add("Slice", [shape, make.const("hw0", [2], np.int64),
                                  make.const("hw1", [4], np.int64)], "area")
        zeros = make.add("ConstantOfShape", [make.add(
            "Concat", [batch, make.const("pad", [padded - c], np.int64), area],
            "zeros_shape", axis=0)], "zeros",
            value=numpy_helper.from_array(np.zeros(1, np.float32)))
        x = make.add("Concat", [*g.made_by(b.x, "Concat").input, zeros], "padded", axis=1)
    dw_attrs = {a.name: node_attr(b.depthwise, a.name) for a in b.depthwise.attribute}
    dw_inputs = [x, make.const("depthwise", pad(w_dw))]
    if len(b.depthwise.input) > 2 and b.depthwise.input[2]:
        dw_inputs.append(make.const("depthwise_bias",
                                    pad(g.const[b.depthwise.input[2]].reshape(-1))))
    normed = make.add("Transpose", [make.add("Conv", dw_inputs, "depthwise",
                                             **(dw_attrs | {"group": padded}))],
                      "depthwise_nhwc", perm=[0, 2, 3, 1])
    if padded > c:
        normed = make.add("Slice", [normed, make.const("c0", [0], np.int64),
                                    make.const("c1", [c], np.int64),
                                    make.const("c_axis", [3], np.int64)], "unpadded")
    (w_e, b_e), (w_r, b_r) = b.expand, b.reduce
    normed = make.add("LayerNormalization", [normed, *b.norm.input[1:]], "normed",
                      **{a.name: node_attr(b.norm, a.name) for a in b.norm.attribute})
    gelu = make.add("FastGelu", [make.add("MatMul", [normed, make.const("expand", w_e.T)],
                                          "expanded"), make.const("expand_bias", b_e)], "gelu")
    x_nhwc = make.add("Transpose", [x], "x_nhwc", perm=[0, 2, 3, 1])
    out = b.exit.output[0]
    if b.adjust is not None and b.adjust[0].shape[0] < c:  # fold the reduction
        w_a, b_a = (v.astype(np.float64) for v in b.adjust)
        reduced = make.add("MatMul", [gelu, make.const("reduce_adjust",
                                                       (w_a @ w_r.astype(np.float64)).T)],
                           "reduced")
        adjusted = make.add("Add", [make.add("MatMul", [x_nhwc, make.const("adjust",
                                                                          pad(w_a.T))],
                                             "adjusted"),
                                    make.const("bias", w_a @ b_r + b_a)], "adjusted_bias")
        make.add("Transpose", [make.add("Add", [reduced, adjusted], "sum")], "sum_nchw",
                 to=out, perm=[0, 3, 1, 2])
        return 1, int(padded > c)
    reduced = make.add("Add", [make.add("MatMul", [gelu, make.const("reduce", pad(w_r).T)],
                                        "reduced"), make.const("reduce_bias", pad(b_r))],
                       "reduced_bias")
    total = make.add("Add", [x_nhwc, reduced], "sum")
    if b.adjust is None:
        make.add("Transpose", [total], "sum_nchw", to=out, perm=[0, 3, 1, 2])
        return 0, 0
    w_a, b_a = b.adjust
    make.add("Conv", [make.add("Transpose", [total], "sum_nchw", perm=[0, 3, 1, 2]),
                      make.const("adjust", pad(w_a.T).T[:, :, None, None]),
                      make.const("adjust_bias", b_a)], "adjust", to=out, kernel_shape=[1, 1])
    return 0, int(padded > c)


def _upsamplings_to_resize(model) -> int:
    """Replace TensorFlow's 2x nearest upsampling (two Repeats: Unsqueeze, Tile, a
    transpose to channels-last, Reshape, Unsqueeze, Tile, Reshape, a transpose back) by
    one ``Resize`` (nearest, the same copies), which the later rewrites can move."""
    from onnx import helper, numpy_helper

    g = TensorGraph(model.graph)
    removed: list = []
    anchors: dict[str, list] = {}
    scales = "upsample_2x/scales"
    for tile in [n for n in model.graph.node if n.op_type == "Tile"]:
        rows = g.made_by(tile.input[0], "Unsqueeze")
        to_nhwc = (rows and _unsqueeze_axes(g, rows) == [3] and _repeats_once(g, tile)
                   and g.only_use(tile.output[0], "Transpose"))
        merge_rows = (to_nhwc and node_attr(to_nhwc, "perm") == [0, 2, 3, 4, 1]
                      and g.only_use(to_nhwc.output[0], "Reshape"))
        users = g.consumers.get(merge_rows.output[0], []) if merge_rows else []
        cols = next((u for u in users if u.op_type == "Unsqueeze"), None)
        cols_tile = (cols and _unsqueeze_axes(g, cols) == [3]
                     and all(u.op_type in ("Unsqueeze", "Shape") for u in users)
                     and g.only_use(cols.output[0], "Tile"))
        merge_cols = (cols_tile and _repeats_once(g, cols_tile)
                      and g.only_use(cols_tile.output[0], "Reshape"))
        back = merge_cols and g.only_use(merge_cols.output[0], "Transpose")
        if not back or node_attr(back, "perm") != [0, 3, 1, 2]:
            continue
        removed += [rows, tile, to_nhwc, merge_rows, cols, cols_tile, merge_cols, back]
        anchors[back.name] = [helper.make_node(
            "Resize", [rows.input[0], "", scales], [back.output[0]], name=f"{back.name}/resize",
            mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")]
    if anchors:
        model.graph.initializer.append(numpy_helper.from_array(
            np.array([1, 1, 2, 2], np.float32), scales))
        replace_nodes(model.graph, removed, anchors)
    return len(anchors)


def _unsqueeze_axes(g: TensorGraph, node) -> list[int] | None:
    if len(node.input) > 1:
        axes = g.const.get(node.input[1])
        return None if axes is None else [int(a) for a in axes.reshape(-1)]
    return node_attr(node, "axes")


def _repeats_once(g: TensorGraph, tile) -> bool:
    """A Tile that doubles the axis after the one just unsqueezed (TensorFlow's Repeat)."""
    repeats = g.const.get(tile.input[1])
    return repeats is not None and repeats.reshape(-1).tolist() == [1, 1, 1, 2, 1]


def _nearest_scales(g: TensorGraph, node) -> list[float] | None:
    """The scales of a nearest-neighbour Resize that copies pixels (floor, asymmetric)."""
    if (node.op_type != "Resize" or len(node.input) != 3 or node.input[1]
            or node_attr(node, "mode") != b"nearest"
            or node_attr(node, "coordinate_transformation_mode") != b"asymmetric"
            or node_attr(node, "nearest_mode") != b"floor"):
        return None
    scales = g.const.get(node.input[2])
    return None if scales is None else scales.reshape(-1).tolist()


def _move_later(model) -> int:
    """Move layout nodes after the per-pixel nodes that follow them, until none moves.

    A transpose moves past element-wise nodes (a constant operand is transposed with
    it), slices and concats of equally transposed inputs, and cancels against its
    inverse: the layer norms' transposes back to NCHW then land where onnxruntime fuses
    them into its blocked-layout reorders, and the dilated convolutions' detours through
    (C, N, H, W) disappear. A nearest upsampling moves past 1 x 1 convolutions, layer
    norms and element-wise nodes, which then run on a quarter of the pixels, and a
    DepthToSpace interleave past element-wise nodes (a sigmoid then fuses into the
    convolution before it). The values are the same; only the order of the nodes
    changes.
    """
    moved = 0
    known: dict[str, np.ndarray] = {}
    while _move_one(model, known):
        moved += 1
    return moved


def _move_one(model, known: dict[str, np.ndarray]) -> bool:
    graph = model.graph
    g = TensorGraph(graph, known)
    known.update(g.const)
    outputs = {o.name for o in graph.output}
    for node in list(graph.node):
        uses = g.consumers.get(node.output[0], [])
        if not uses or node.output[0] in outputs:
            continue
        if node.op_type == "Transpose" and _transpose_moved(graph, g, node, uses, outputs):
            return True
        if len(uses) != 1 or uses[0].output[0] in outputs:
            continue
        after = uses[0]
        scales = _nearest_scales(g, node)
        if scales is not None and _moves_past_upsampling(graph, g, node, after, scales):
            _swap(graph, node, after)
            return True
        if node.op_type == "DepthToSpace" and _is_per_element(after):
            _swap(graph, node, after)
            return True
    return False


def _is_per_element(node) -> bool:
    return node.op_type in _PER_ELEMENT and len(node.input) == 1


def _swap(graph, first, second) -> None:
    """first -> second becomes second -> first (second read first's only output)."""
    x, y = first.input[0], second.output[0]
    second.input[list(second.input).index(first.output[0])] = x
    second.output[0] = first.output[0]
    first.input[0], first.output[0] = second.output[0], y
    graph.node.remove(first)
    graph.node.insert(list(graph.node).index(second) + 1, first)


def _transpose_moved(graph, g: TensorGraph, t, uses: list, outputs: set[str]) -> bool:
    from onnx import helper, numpy_helper

    perm = node_attr(t, "perm")
    if not perm:
        return False
    if all(u.op_type == "Slice" and len(u.input) >= 4 and all(i in g.const for i in u.input[1:])
           and u.output[0] not in outputs for u in uses):
        for u in uses:  # slice first, then transpose each (smaller) slice
            axes = np.array([perm[int(a) % len(perm)] for a in g.const[u.input[3]].reshape(-1)])
            name = f"{u.name}/axes_before_transpose"
            graph.initializer.append(numpy_helper.from_array(axes.astype(np.int64), name))
            u.input[0], u.input[3] = t.input[0], name
            out, u.output[0] = u.output[0], f"{u.output[0]}/untransposed"
            graph.node.insert(list(graph.node).index(u) + 1, helper.make_node(
                "Transpose", [u.output[0]], [out], perm=perm, name=f"{u.name}/transpose"))
        graph.node.remove(t)
        return True
    if len(uses) != 1 or uses[0].output[0] in outputs:
        return False
    after = uses[0]
    if _is_per_element(after):
        _swap(graph, t, after)
        return True
    if after.op_type in _ARITHMETIC and list(after.input).count(t.output[0]) == 1:
        other = next(i for i in after.input if i != t.output[0])
        value = g.const.get(other)
        if value is None or value.ndim > len(perm):
            return False
        value = value.reshape((1,) * (len(perm) - value.ndim) + value.shape)
        name = f"{other}/before_{after.name}"
        graph.initializer.append(numpy_helper.from_array(
            np.ascontiguousarray(np.transpose(value, np.argsort(perm))), name))
        after.input[list(after.input).index(other)] = name
        _swap(graph, t, after)
        return True
    if after.op_type == "Transpose" and [perm[i] for i in node_attr(after, "perm")] == sorted(perm):
        for user in g.consumers.get(after.output[0], []):  # the pair is the identity
            for k, name in enumerate(user.input):
                if name == after.output[0]:
                    user.input[k] = t.input[0]
        graph.node.remove(after)
        graph.node.remove(t)
        return True
    if after.op_type == "Concat":
        sources = [g.producer.get(i) for i in after.input]
        if not all(s is not None and s.op_type == "Transpose" and node_attr(s, "perm") == perm
                   and len(g.consumers.get(s.output[0], [])) == 1 for s in sources):
            return False
        axis = node_attr(after, "axis") % len(perm)
        for a in after.attribute:
            if a.name == "axis":
                a.i = perm[axis]
        for k, s in enumerate(sources):
            after.input[k] = s.input[0]
            graph.node.remove(s)
        out, after.output[0] = after.output[0], f"{after.output[0]}/untransposed"
        graph.node.insert(list(graph.node).index(after) + 1, helper.make_node(
            "Transpose", [after.output[0]], [out], perm=perm, name=f"{after.name}/transpose"))
        return True
    return False


def _moves_past_upsampling(graph, g: TensorGraph, resize, after, scales: list[float]) -> bool:
    """Whether ``after`` is per-pixel for this nearest upsampling (and so may run first);
    a transpose takes the upsampling's scales with it."""
    from onnx import numpy_helper

    scaled = [s != 1 for s in scales]
    if _is_per_element(after):
        return True
    if after.op_type == "Conv":
        return _pointwise_conv(g, after) is not None and not any(scaled[:2])
    if after.op_type == "LayerNormalization":
        return not any(scaled[node_attr(after, "axis", -1) % len(scales):])
    if after.op_type in _ARITHMETIC and list(after.input).count(resize.output[0]) == 1:
        value = g.const.get(next(i for i in after.input if i != resize.output[0]))
        if value is None or value.ndim > len(scales):
            return False
        shape = (1,) * (len(scales) - value.ndim) + value.shape
        return all(d == 1 for d, s in zip(shape, scaled, strict=True) if s)
    if after.op_type == "Transpose":
        moved = np.array([scales[i] for i in node_attr(after, "perm")], np.float32)
        name = f"{resize.input[2]}/{'_'.join(str(int(v)) for v in moved)}"
        if name not in g.const:
            graph.initializer.append(numpy_helper.from_array(moved, name))
            g.const[name] = moved
        resize.input[2] = name
        return True
    return False


def _upsampled_convs_as_phases(model) -> int:
    """Run each 2x nearest upsampling followed by a k x k convolution at the low
    resolution: output pixel (2i + a, 2j + b) sums the kernel taps over the few low-
    resolution pixels it copies, so four "phase" kernels (summed taps) of a convolution
    with 4 x the outputs, interleaved by DepthToSpace, give the same values for a
    quarter of the pixels. Zero padding matches: the upsampled image's outside is the
    low-resolution image's outside."""
    from onnx import helper, numpy_helper

    graph = model.graph
    g = TensorGraph(graph)
    count = 0
    for resize in [n for n in graph.node if _nearest_scales(g, n) == [1, 1, 2, 2]]:
        conv = g.only_use(resize.output[0], "Conv")
        w = conv and g.const.get(conv.input[1])
        if w is None or w.ndim != 4 or not _same_padded(conv, w.shape[2:]):
            continue
        phases, r = _phase_kernels(w)
        stem = f"{conv.name}/phases"
        inputs = [resize.input[0], f"{stem}/weights"]
        graph.initializer.append(numpy_helper.from_array(phases, inputs[1]))
        if len(conv.input) > 2 and conv.input[2]:
            bias = g.const.get(conv.input[2])
            if bias is None:
                continue
            inputs.append(f"{stem}/bias")
            graph.initializer.append(numpy_helper.from_array(
                np.tile(bias.reshape(-1), 4).astype(np.float32), inputs[2]))
        replace_nodes(graph, [resize, conv], {conv.name: [
            helper.make_node("Conv", inputs, [f"{stem}/out"], name=stem,
                             kernel_shape=list(phases.shape[2:]), pads=[r] * 4),
            helper.make_node("DepthToSpace", [f"{stem}/out"], [conv.output[0]],
                             name=f"{stem}/interleave", blocksize=2, mode="DCR")]})
        count += 1
    return count


def _same_padded(conv, kernel: tuple[int, ...]) -> bool:
    """A stride-1, undilated, ungrouped convolution with odd square kernel and "same"
    (symmetric) zero padding."""
    k = kernel[0]
    if (len(kernel) != 2 or kernel[1] != k or k % 2 == 0 or node_attr(conv, "group", 1) != 1
            or any(v != 1 for v in node_attr(conv, "strides", [1, 1]))
            or any(v != 1 for v in node_attr(conv, "dilations", [1, 1]))):
        return False
    auto = node_attr(conv, "auto_pad", b"NOTSET")
    if auto in (b"SAME_UPPER", b"SAME_LOWER"):
        return True
    return auto == b"NOTSET" and node_attr(conv, "pads", [0] * 4) == [k // 2] * 4


def _phase_kernels(w: np.ndarray) -> tuple[np.ndarray, int]:
    """The (4 O, I, K, K) kernels and padding radius of :func:`_upsampled_convs_as_phases`,
    phase (a, b) in output channels (2 a + b) O ... (2 a + b + 1) O (DepthToSpace's DCR
    order)."""
    out_channels, k = w.shape[0], w.shape[2]
    radius = k // 2
    r = max(-((-radius) // 2), (1 + radius) // 2)  # farthest low-resolution offset
    phases = np.zeros((4 * out_channels, w.shape[1], 2 * r + 1, 2 * r + 1), np.float64)
    for a in range(2):
        for b in range(2):
            rows = slice((2 * a + b) * out_channels, (2 * a + b + 1) * out_channels)
            for dy in range(-radius, radius + 1):
                for dx in range(-radius, radius + 1):
                    phases[rows, :, (a + dy) // 2 + r, (b + dx) // 2 + r] += \
                        w[:, :, dy + radius, dx + radius]
    return phases.astype(np.float32), r
