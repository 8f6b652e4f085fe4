"""LEADER's ONNX graph rewritten into operators onnxruntime runs in one pass.

The model ships as a tf2onnx export of a Keras network. Two of its building blocks come
out as long chains of small element-wise nodes that onnxruntime's own fusions do not
recognise, and they cost more CPU than the convolutions around them:

- GELU (tanh form) as 0.5 x (1 + tanh(0.79788 (x + 0.044715 x^3))), with a transpose to
  channels-last and back around the cube: ten full passes over the tensor. It becomes
  one ``com.microsoft.FastGelu`` (the same formula).
- layer normalisation over the channels of an NCHW tensor, as two ReduceMean over axis
  1 and nine element-wise nodes. ReduceMean over a strided axis is slow; it becomes a
  transpose to channels-last, one ``LayerNormalization`` over the last axis (the same
  epsilon, gamma and beta) and a transpose back.

Each pattern is matched exactly, constants included; anything that does not match is
left as it was, so another release of the model still runs (only slower). The rewrite
happens in memory when the session is built: no derived model file is written.
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


def fused_leader_model(path: Path) -> tuple[bytes, RewriteCounts]:
    """The serialised model at ``path`` with its GELU and channel layer norms fused."""
    import onnx  # only needed to build the session

    model = onnx.load(str(path))
    gelu = _fuse_gelu(model)
    layer_norm = _fuse_channel_layer_norms(model)
    _drop_unused(model)
    return model.SerializeToString(), RewriteCounts(gelu, layer_norm)


class _Graph:
    """Who produces and who consumes each tensor, and the constant values."""

    def __init__(self, graph) -> None:
        from onnx import numpy_helper

        self.graph = graph
        _name_nodes(graph)
        self.const = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
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


def _replace(graph, removed: list, anchors: dict[str, list]) -> None:
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


def _gelu_input(g: _Graph, tanh) -> tuple[str, list, object] | None:
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


def _cubic_chain(g: _Graph, tensor: str, x: str) -> list | None:
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

    g = _Graph(model.graph)
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
        _replace(model.graph, removed, anchors)
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


def _layer_norm_at(g: _Graph, variance) -> _LayerNorm | None:
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


def _through_reshapes(g: _Graph, tensor: str) -> tuple[list, str]:
    chain = []
    node = g.producer.get(tensor)
    while node is not None and node.op_type in ("Reshape", "Unsqueeze", "Squeeze"):
        chain.append(node)
        node = g.producer.get(node.input[0])
    return chain, (chain[-1].input[0] if chain else tensor)


def _fuse_channel_layer_norms(model) -> int:
    from onnx import helper, numpy_helper

    g = _Graph(model.graph)
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
        _replace(model.graph, removed, anchors)
    return len(anchors)


def _drop_unused(model) -> None:
    """Remove the constants the fused nodes no longer read (onnxruntime warns of them)."""
    graph = model.graph
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = [n for n in graph.node if n.op_type != "Constant" or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(nodes)
