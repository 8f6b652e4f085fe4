"""LEADER's ONNX graph rewritten into operators and layouts onnxruntime runs fast.

The model ships as a tf2onnx export of a Keras network. Three of its building blocks
come out as long chains of small nodes that onnxruntime's own fusions do not recognise,
and they cost more CPU than the convolutions around them:

- GELU (tanh form) as 0.5 x (1 + tanh(0.79788 (x + 0.044715 x^3))), with a transpose to
  channels-last and back around the cube: ten full passes over the tensor. It becomes
  one ``com.microsoft.FastGelu`` (the same formula).
- dilated convolutions as TensorFlow's space-to-batch emulation: pad, transpose,
  SpaceToDepth, a plain convolution over the b^2 phases, DepthToSpace and a crop, with
  a subgraph of shape arithmetic beside it -- four full-resolution shuffles of the
  stem's input and output. Each becomes one ``Conv`` with ``dilations`` and the
  symmetric "same" padding (TensorFlow's extra padding for divisibility is cropped
  away again, so the sums are the same).
- layer normalisation over the channels of an NCHW tensor, as two ReduceMean over axis
  1 and nine element-wise nodes. ReduceMean over a strided axis is slow; it becomes a
  transpose to channels-last, one ``LayerNormalization`` over the last axis (the same
  epsilon, gamma and beta) and a transpose back.

Each pattern is matched exactly, constants included; anything that does not match is
left as it was, so another release of the model still runs (only slower). The rewrite
happens in memory when the session is built: no derived model file is written.

The fused graph is then cut in two (:func:`split_at_heads`). The network ends in three
heads (position, direction, kind) that read the same half-resolution feature map; only
the position head is needed everywhere -- it says where the minutiae are. The direction
and kind heads are local (a 7 x 7 depthwise convolution at half resolution, 1 x 1
convolutions, a 2x nearest upsampling and a 5 x 5 convolution), so their value at a
detected pixel depends only on a 9 x 9 patch of that feature map: the "heads" model runs
them unpadded on a batch of such patches, computing only the cells the centre pixel
needs, a few dozen patches per print instead of the whole map (a quarter of the
network's time), with the same numbers.

The trunk is then laid out for onnxruntime's CPU kernels by
:mod:`gateway.extraction.leader_layout`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

GELU_SQRT_2_OVER_PI = 0.7978846
GELU_CUBIC = 0.044715


@dataclass(frozen=True)
class RewriteCounts:
    """How many blocks were fused: a test pins them for the shipped model."""

    gelu: int
    layer_norm: int
    dilated: int = 0


def fused_leader_model(path: Path) -> tuple[bytes, RewriteCounts]:
    """The serialised model at ``path`` with its GELU and channel layer norms fused."""
    import onnx  # only needed to build the session

    model = onnx.load(str(path))
    gelu = _fuse_gelu(model)
    layer_norm = _fuse_channel_layer_norms(model)
    dilated = _fuse_dilated_convs(model)
    drop_dead_nodes(model)
    drop_unused(model)
    return model.SerializeToString(), RewriteCounts(gelu, layer_norm, dilated)


class TensorGraph:
    """Who produces and who consumes each tensor, and the constant values."""

    def __init__(self, graph, known: dict[str, np.ndarray] | None = None) -> None:
        from onnx import numpy_helper

        self.graph = graph
        _name_nodes(graph)
        # ``known``: initializers already decoded (by name), for passes that rebuild this
        # view after every small edit; decoding all of them each time dominated.
        known = {} if known is None else known
        self.const = {i.name: known[i.name] if i.name in known else numpy_helper.to_array(i)
                      for i in graph.initializer}
        for n in graph.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.const[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def made_by(self, tensor: str, op: str):
        n = self.producer.get(tensor)
        return n if n is not None and n.op_type == op else None

    def only_use(self, tensor: str, op: str):
        uses = self.consumers.get(tensor, [])
        return uses[0] if len(uses) == 1 and uses[0].op_type == op else None

    def is_scalar(self, tensor: str, value: float) -> bool:
        v = self.const.get(tensor)
        return v is not None and v.size == 1 and np.isclose(float(v.reshape(-1)[0]), value,
                                                            rtol=1e-5, atol=0.0)

    def split_const(self, node, value: float | None = None) -> tuple[str, str] | None:
        """(constant input, other input) of a binary node, or None."""
        a, b = node.input
        for c, x in ((a, b), (b, a)):
            if (c in self.const and x not in self.const
                    and (value is None or self.is_scalar(c, value))):
                return c, x
        return None

    def private(self, group: list, exit_node) -> bool:
        """True when only ``group`` reads the tensors ``group`` makes (but the exit's)."""
        inside = {id(n) for n in group}
        return all(id(c) in inside
                   for n in group if n is not exit_node
                   for o in n.output for c in self.consumers.get(o, []))


def _name_nodes(graph) -> None:
    """Give every node a unique name: the rewrite finds nodes again by name."""
    seen: set[str] = set()
    for i, n in enumerate(graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}/{i}/unnamed"
        seen.add(n.name)


def replace_nodes(graph, removed: list, anchors: dict[str, list]) -> None:
    """Drop ``removed`` nodes; put each anchor's replacement where the anchor was."""
    gone = {n.name for n in removed}
    nodes = []
    for n in graph.node:
        if n.name in anchors:
            nodes.extend(anchors[n.name])
        elif n.name not in gone:
            nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)


def _gelu_input(g: TensorGraph, tanh) -> tuple[str, list, object] | None:
    """(x, nodes, exit node) of the tanh-GELU around this Tanh node, or None."""
    scale = g.made_by(tanh.input[0], "Mul")
    split = scale and g.split_const(scale, GELU_SQRT_2_OVER_PI)
    inner = split and g.made_by(split[1], "Add")
    if not inner:
        return None
    for x, cubic_tensor in (inner.input, inner.input[::-1]):
        chain = _cubic_chain(g, cubic_tensor, x)
        if chain is not None:
            break
    else:
        return None
    one = g.only_use(tanh.output[0], "Add")
    out = one and g.split_const(one, 1.0) and g.only_use(one.output[0], "Mul")
    if not out:
        return None
    half = g.made_by(next(i for i in out.input if i != one.output[0]), "Mul")
    halved = half and g.split_const(half, 0.5)
    if not halved or halved[1] != x:
        return None
    group = [scale, inner, tanh, one, out, half, *chain]
    return (x, group, out) if g.private(group, out) else None


def _cubic_chain(g: TensorGraph, tensor: str, x: str) -> list | None:
    """The nodes computing 0.044715 * x**3 (through optional transposes), or None."""
    chain = []
    node = g.producer.get(tensor)
    if node is not None and node.op_type == "Transpose":
        chain.append(node)
        node = g.producer.get(node.input[0])
    split = node is not None and node.op_type == "Mul" and g.split_const(node, GELU_CUBIC)
    power = split and g.made_by(split[1], "Pow")
    if not power or not g.is_scalar(power.input[1], 3.0):
        return None
    chain += [node, power]
    source = power.input[0]
    back = g.made_by(source, "Transpose")
    if back is not None:
        chain.append(back)
        source = back.input[0]
    return chain if source == x else None


def _fuse_gelu(model) -> int:
    from onnx import helper

    g = TensorGraph(model.graph)
    removed: list = []
    anchors: dict[str, list] = {}
    for tanh in [n for n in model.graph.node if n.op_type == "Tanh"]:
        found = _gelu_input(g, tanh)
        if found is None:
            continue
        x, group, out = found
        removed += group
        anchors[out.name] = [helper.make_node("FastGelu", [x], [out.output[0]],
                                              name=f"{out.name}/fast_gelu",
                                              domain="com.microsoft")]
    if anchors:
        replace_nodes(model.graph, removed, anchors)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return len(anchors)


def _is_channel_mean(node) -> bool:
    from onnx import helper

    if node is None or node.op_type != "ReduceMean" or len(node.input) != 1:
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return list(attrs.get("axes", [])) == [1] and attrs.get("keepdims", 1) == 1


@dataclass
class _LayerNorm:
    x: str
    exit: object
    nodes: list
    epsilon: float
    gamma: np.ndarray
    beta: np.ndarray


def _layer_norm_at(g: TensorGraph, variance) -> _LayerNorm | None:
    """The channel layer norm whose variance ReduceMean this is, or None.

    Keras/tf2onnx form: m = mean(x); v = mean((x - m)^2); s = gamma / sqrt(v + eps);
    y = x * s + (beta - m * s).
    """
    square = g.made_by(variance.input[0], "Mul")
    if square is None or square.input[0] != square.input[1]:
        return None
    centred = g.made_by(square.input[0], "Sub")
    if centred is None:
        return None
    x = centred.input[0]
    reshapes, mean_tensor = _through_reshapes(g, centred.input[1])
    mean = g.producer.get(mean_tensor)
    if not _is_channel_mean(mean) or mean.input[0] != x:
        return None
    add_eps = g.only_use(variance.output[0], "Add")
    eps = add_eps and g.split_const(add_eps)
    root = eps and g.only_use(add_eps.output[0], "Sqrt")
    inverse = root and g.only_use(root.output[0], "Reciprocal")
    scale = inverse and g.only_use(inverse.output[0], "Mul")
    gamma = scale and g.split_const(scale)
    if not gamma:
        return None
    uses = g.consumers.get(scale.output[0], [])
    times_x = [u for u in uses if u.op_type == "Mul" and x in u.input]
    times_mean = [u for u in uses if u.op_type == "Mul" and x not in u.input]
    if len(uses) != 2 or len(times_x) != 1 or len(times_mean) != 1:
        return None
    negated = g.made_by(next(i for i in times_mean[0].input if i != scale.output[0]), "Neg")
    if negated is None or negated.input[0] != mean.output[0]:
        return None
    shift = g.only_use(times_mean[0].output[0], "Add")
    beta = shift and g.split_const(shift)
    out = beta and g.only_use(times_x[0].output[0], "Add")
    if not out or shift.output[0] not in out.input:
        return None
    nodes = [mean, negated, centred, square, variance, add_eps, root, inverse, scale,
             times_x[0], times_mean[0], shift, out, *reshapes]
    if not g.private(nodes, out):
        return None
    return _LayerNorm(x, out, nodes, float(g.const[eps[0]].reshape(-1)[0]),
                      g.const[gamma[0]].reshape(-1), g.const[beta[0]].reshape(-1))


def _through_reshapes(g: TensorGraph, tensor: str) -> tuple[list, str]:
    chain = []
    node = g.producer.get(tensor)
    while node is not None and node.op_type in ("Reshape", "Unsqueeze", "Squeeze"):
        chain.append(node)
        node = g.producer.get(node.input[0])
    return chain, (chain[-1].input[0] if chain else tensor)


def _fuse_channel_layer_norms(model) -> int:
    from onnx import helper, numpy_helper

    g = TensorGraph(model.graph)
    removed: list = []
    anchors: dict[str, list] = {}
    for variance in [n for n in model.graph.node if _is_channel_mean(n)]:
        ln = _layer_norm_at(g, variance)
        if ln is None:
            continue
        if ln.gamma.shape != ln.beta.shape:
            continue
        out = ln.exit.output[0]
        stem = f"{ln.exit.name}/channel_ln"
        model.graph.initializer.extend([
            numpy_helper.from_array(ln.gamma.astype(np.float32), f"{stem}/gamma"),
            numpy_helper.from_array(ln.beta.astype(np.float32), f"{stem}/beta"),
        ])
        removed += ln.nodes
        anchors[ln.exit.name] = [
            helper.make_node("Transpose", [ln.x], [f"{stem}/nhwc"], perm=[0, 2, 3, 1],
                             name=f"{stem}/to_nhwc"),
            helper.make_node("LayerNormalization", [f"{stem}/nhwc", f"{stem}/gamma",
                                                    f"{stem}/beta"],
                             [f"{stem}/normalised"], axis=-1, epsilon=ln.epsilon,
                             name=f"{stem}/norm"),
            helper.make_node("Transpose", [f"{stem}/normalised"], [out], perm=[0, 3, 1, 2],
                             name=f"{stem}/to_nchw"),
        ]
    if anchors:
        replace_nodes(model.graph, removed, anchors)
    return len(anchors)


_LAYOUT_OPS = ("Reshape", "Squeeze", "Unsqueeze", "Transpose")


def _fuse_dilated_convs(model) -> int:
    """Replace each space-to-batch dilated convolution by a dilated ``Conv``.

    Matched: Pad(x) -> Transpose -> SpaceToDepth(b) -> layout ops -> Conv (valid, no
    groups) -> Transpose(1, 0, 2, 3) -> DepthToSpace(b) -> Slice, whose output is in
    (C, N, H, W) order. The Transpose after Pad tells the layout of x; the replacement
    reads x, convolves in NCHW and transposes to (C, N, H, W). Pads and crops are not
    read (they are computed at run time); the tests compare with the shipped model.
    """
    from onnx import helper

    g = TensorGraph(model.graph)
    removed: list = []
    anchors: dict[str, list] = {}
    for s2d in [n for n in model.graph.node if n.op_type == "SpaceToDepth"]:
        block = node_attr(s2d, "blocksize")
        to_cnhw = g.made_by(s2d.input[0], "Transpose")
        pad = to_cnhw and g.made_by(to_cnhw.input[0], "Pad")
        if not pad or sorted(node_attr(to_cnhw, "perm")) != [0, 1, 2, 3]:
            continue
        perm = node_attr(to_cnhw, "perm")
        nchw_perm = [perm[1], perm[0], perm[2], perm[3]]
        for conv in _convs_after_layout(g, s2d.output[0]):
            w = g.const.get(conv.input[1])
            back = g.only_use(conv.output[0], "Transpose")
            d2s = back and node_attr(back, "perm") == [1, 0, 2, 3] and g.only_use(
                back.output[0], "DepthToSpace")
            crop = d2s and node_attr(d2s, "blocksize") == block and g.only_use(
                d2s.output[0], "Slice")
            if (not crop or w is None or w.ndim != 4 or node_attr(conv, "group", 1) != 1
                    or any(v != 1 for v in node_attr(conv, "strides", [1, 1]))
                    or any(v != 1 for v in node_attr(conv, "dilations", [1, 1]))
                    or any(v != 0 for v in node_attr(conv, "pads", [0, 0, 0, 0]))
                    or any((k - 1) * block % 2 for k in w.shape[2:])):
                continue
            stem = f"{conv.name}/dilated"
            x = pad.input[0]
            new = []
            if nchw_perm != [0, 1, 2, 3]:
                new.append(helper.make_node("Transpose", [x], [f"{stem}/nchw"],
                                            perm=nchw_perm, name=f"{stem}/to_nchw"))
                x = f"{stem}/nchw"
            half = [(k - 1) * block // 2 for k in w.shape[2:]]
            new.append(helper.make_node(
                "Conv", [x, *conv.input[1:]], [f"{stem}/out"], name=stem,
                kernel_shape=list(w.shape[2:]), dilations=[block, block],
                pads=half + half, group=1))
            new.append(helper.make_node("Transpose", [f"{stem}/out"], [crop.output[0]],
                                        perm=[1, 0, 2, 3], name=f"{stem}/to_cnhw"))
            removed += [conv, back, d2s, crop]
            anchors[crop.name] = new
    if anchors:
        replace_nodes(model.graph, removed, anchors)
    return len(anchors)


def node_attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return list(value) if isinstance(value, (list, tuple)) else value
    return default


def _convs_after_layout(g: TensorGraph, tensor: str) -> list:
    """The Conv nodes reading ``tensor`` through layout-only ops (as their data input)."""
    found, stack = [], [tensor]
    while stack:
        t = stack.pop()
        for n in g.consumers.get(t, []):
            if n.op_type == "Conv" and n.input[0] == t:
                found.append(n)
            elif n.op_type in _LAYOUT_OPS and n.input[0] == t:
                stack.append(n.output[0])
    return found


def drop_dead_nodes(model) -> None:
    """Remove nodes none of whose outputs is read (the rewrites orphan shape arithmetic)."""
    graph = model.graph
    while True:
        read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        live = [n for n in graph.node if any(o in read for o in n.output)]
        if len(live) == len(graph.node):
            return
        del graph.node[:]
        graph.node.extend(live)


# Half-resolution patch radius the direction and kind heads need around a pixel: 3 for
# their 7 x 7 depthwise convolution, 1 for the 5 x 5 one after the 2x upsampling.
HEAD_PATCH_RADIUS = 4
_HEAD_KERNELS = ((7, 7), (5, 5))  # the spatial kernels each of those heads must have
# The heads model convolves without padding, so a 9 x 9 patch yields 3 x 3 half-resolution
# cells after the 7 x 7 convolution, 6 x 6 pixels after the upsampling and 2 x 2 after
# the 5 x 5 one: exactly the pixel (2i + a, 2j + b) at output (a, b) for the patch
# centred on half-resolution cell (i, j).
HEAD_UPSAMPLED = 6


@dataclass(frozen=True)
class HeadSplit:
    """The fused model cut at the heads' shared input.

    ``trunk``: image (1, H, W, 1) -> suppressed position score (1, 1, H, W) and the heads'
    features (1, C, H/2, W/2). ``heads``: feature patches (N, C, P, P), P = 2 *
    HEAD_PATCH_RADIUS + 1, and a validity map (N, 1, U, U), U = HEAD_UPSAMPLED (0 where
    an upsampled pixel lies outside the image, as the whole network's zero padding has
    it) -> direction vector (N, 2, 2, 2), whose angle is atan2(v[1], v[0]), and kind
    score (N, 1, 2, 2), at the four pixels of the patch's centre cell.
    """

    trunk: bytes
    heads: bytes


def split_at_heads(model_bytes: bytes) -> HeadSplit | None:
    """The trunk and heads models of LEADER (see the module doc), or None when the graph
    does not have the shape this cut was checked on (then the whole model runs)."""
    import onnx
    from onnx import helper

    model = onnx.load_from_string(model_bytes)
    g = TensorGraph(model.graph)
    found = _head_tensors(g, model.graph)
    if found is None:
        return None
    score, features, direction, kind, last_convs = found
    models = []
    for inputs, outputs in ((["input"], [score, features]), ([features], [direction, kind])):
        models.append(helper.make_model(_submodel(g, inputs, outputs),
                                        opset_imports=model.opset_import,
                                        ir_version=model.ir_version))
    trunk, heads = models
    _without_padding(heads, features)
    _mask_inputs(heads, [c.name for c in last_convs])
    return HeadSplit(trunk.SerializeToString(), heads.SerializeToString())


def _head_tensors(g: TensorGraph, graph):
    """(suppressed score, head features, direction vector, kind score, last convs) or None.

    The output is a channels-last transpose of concat(position, angle, kind, suppressed
    score); the angle is atan2 of the direction head's two-channel convolution.
    """
    if len(graph.output) != 1 or [i.name for i in graph.input] != ["input"]:
        return None
    out = g.made_by(graph.output[0].name, "Transpose")
    concat = out and g.made_by(out.input[0], "Concat")
    if not concat or len(concat.input) != 4:
        return None
    position, angle, kind, score = concat.input
    direction_conv = _nearest_producer(g, angle, "Conv")
    kind_sigmoid = g.made_by(kind, "Sigmoid")
    kind_conv = kind_sigmoid and g.made_by(kind_sigmoid.input[0], "Conv")
    if direction_conv is None or not kind_conv:
        return None
    direction = direction_conv.output[0]
    features = _shared_input(g, [direction, kind, position])
    if features is None:
        return None
    for tip in (direction, kind):
        nodes, reached = _walk_back(g, tip, {features})
        kernels = sorted((k for k in (_kernel(g, n) for n in nodes if n.op_type == "Conv")
                          if k != (1, 1)), reverse=True)
        # Self-contained (no shape or tensor of the whole image) and the receptive field
        # HEAD_PATCH_RADIUS was worked out for.
        if reached or tuple(kernels) != _HEAD_KERNELS:
            return None
    return score, features, direction, kind, [direction_conv, kind_conv]


def _kernel(g: TensorGraph, conv) -> tuple[int, ...]:
    w = g.const.get(conv.input[1])
    return tuple(w.shape[2:]) if w is not None else ()


def _nearest_producer(g: TensorGraph, tensor: str, op: str):
    """The first ``op`` node met walking back from ``tensor`` (breadth first)."""
    queue, seen = [tensor], set()
    while queue:
        node = g.producer.get(queue.pop(0))
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type == op:
            return node
        queue.extend(node.input)
    return None


def _walk_back(g: TensorGraph, tip: str, stop: set[str]) -> tuple[list, set[str]]:
    """The nodes computing ``tip`` from the ``stop`` tensors and the weights, in graph
    order, and the graph inputs the walk reached instead."""
    weights = {i.name for i in g.graph.initializer}
    names, reached, seen, stack = set(), set(), set(), [tip]
    while stack:
        t = stack.pop()
        if t in seen or t in stop or t in weights or not t:
            continue
        seen.add(t)
        node = g.producer.get(t)
        if node is None:
            reached.add(t)
            continue
        names.add(node.name)
        stack.extend(node.input)
    return [n for n in g.graph.node if n.name in names], reached


def _shared_input(g: TensorGraph, tips: list[str]) -> str | None:
    """The latest tensor (in graph order) computed from the image that every tip reads."""
    order = {o: i for i, n in enumerate(g.graph.node) for o in n.output}
    ancestors = []
    for tip in tips:
        nodes, _ = _walk_back(g, tip, set())
        ancestors.append({o for n in nodes for o in n.output if n.op_type != "Constant"})
    for t in sorted(set.intersection(*ancestors), key=order.__getitem__, reverse=True):
        if _walk_back(g, t, set())[1]:  # not a constant-folded side chain
            return t
    return None


def _submodel(g: TensorGraph, inputs: list[str], outputs: list[str]):
    """A model computing ``outputs`` from ``inputs`` with only the nodes they need."""
    from onnx import TensorProto, helper

    names = {n.name for t in outputs for n in _walk_back(g, t, set(inputs))[0]}
    nodes = [n for n in g.graph.node if n.name in names]
    used = {i for n in nodes for i in n.input}
    existing = {i.name: i for i in g.graph.input}
    return helper.make_graph(
        nodes, g.graph.name,
        [existing.get(t) or helper.make_tensor_value_info(t, TensorProto.FLOAT, None)
         for t in inputs],
        [helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in outputs],
        [i for i in g.graph.initializer if i.name in used],
    )


def _without_padding(model, features: str) -> None:
    """Make every spatial convolution of the heads unpadded ("valid"), and crop the
    features where a residual sum adds them to a depthwise convolution's output."""
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    crop = None
    nodes = []
    for n in graph.node:
        w = weights.get(n.input[1]) if n.op_type == "Conv" else None
        if w is not None and tuple(w.shape[2:]) != (1, 1):
            for a in list(n.attribute):
                if a.name in ("auto_pad", "pads"):
                    n.attribute.remove(a)
            n.attribute.append(helper.make_attribute("auto_pad", "VALID"))
            if n.input[0] == features:
                crop = (w.shape[2] - 1) // 2
        elif n.op_type != "Conv" and features in n.input and crop:
            cropped = f"{features}/centre"
            if not any(x.name == f"{cropped}/starts" for x in graph.initializer):
                graph.initializer.extend([
                    numpy_helper.from_array(np.array([crop, crop], np.int64), f"{cropped}/starts"),
                    numpy_helper.from_array(np.array([-crop, -crop], np.int64), f"{cropped}/ends"),
                    numpy_helper.from_array(np.array([2, 3], np.int64), f"{cropped}/axes")])
                nodes.append(helper.make_node(
                    "Slice", [features, f"{cropped}/starts", f"{cropped}/ends",
                              f"{cropped}/axes"], [cropped], name=f"{cropped}/slice"))
            n.input[list(n.input).index(features)] = cropped
        nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)


def _mask_inputs(model, conv_names: list[str]) -> None:
    """Multiply the data input of each named conv by a new graph input ``valid``."""
    from onnx import TensorProto, helper

    graph = model.graph
    nodes = []
    for n in graph.node:
        if n.name in conv_names:
            masked = f"{n.input[0]}/valid"
            nodes.append(helper.make_node("Mul", [n.input[0], "valid"], [masked],
                                          name=f"{n.name}/valid"))
            n.input[0] = masked
        nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.input.append(helper.make_tensor_value_info("valid", TensorProto.FLOAT,
                                                     [None, 1, None, None]))


def drop_unused(model) -> None:
    """Remove the constants the fused nodes no longer read (onnxruntime warns of them)."""
    graph = model.graph
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = [n for n in graph.node if n.op_type != "Constant" or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(nodes)
