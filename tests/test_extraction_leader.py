"""LEADER's fused graph, its cut at the heads and the finger window: the same minutiae
as the shipped model on the whole image, for less work; and the pixel budget that
shrinks only windows too large for it.

The fusions are checked twice: on small hand-built graphs in the tf2onnx form (so a
mismatch in a constant or a branch is proved to leave the graph alone), and on the
shipped model, whose outputs must agree with the unfused model's. The heads run on
patches are compared with the whole network's maps up to the window's edge. The trunk's
CPU layout (GEMMs, padding, moved layout nodes, phase convolutions) is checked the same
two ways."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.test_extraction_synthetic import several_minutiae_image


def _run(model_bytes: bytes, feeds: dict) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _model(nodes, initial: dict[str, np.ndarray], channels: int):
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 6, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in initial.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _tf2onnx_gelu(cubic: float = 0.044715):
    """0.5 x (1 + tanh(0.79788 (x + c x^3))) with the cube done channels-last."""
    from onnx import helper

    nodes = [
        helper.make_node("Mul", ["half", "x"], ["h"]),
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 3, 1]),
        helper.make_node("Pow", ["xt", "three"], ["p"]),
        helper.make_node("Mul", ["cubic", "p"], ["pc"]),
        helper.make_node("Transpose", ["pc"], ["pct"], perm=[0, 3, 1, 2]),
        helper.make_node("Add", ["x", "pct"], ["s"]),
        helper.make_node("Mul", ["k", "s"], ["sk"]),
        helper.make_node("Tanh", ["sk"], ["t"]),
        helper.make_node("Add", ["one", "t"], ["t1"]),
        helper.make_node("Mul", ["h", "t1"], ["y"]),
    ]
    consts = {"half": 0.5, "three": 3.0, "cubic": cubic, "k": 0.7978846, "one": 1.0}
    return _model(nodes, consts, 3)


def _tf2onnx_channel_layer_norm(channels: int = 5):
    """Keras LayerNormalization over the channels of an NCHW tensor, as tf2onnx writes it."""
    from onnx import helper

    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Neg", ["m"], ["nm"]),
        helper.make_node("Reshape", ["m", "shape"], ["mr"]),
        helper.make_node("Sub", ["x", "mr"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["d2"]),
        helper.make_node("ReduceMean", ["d2"], ["v"], axes=[1], keepdims=1),
        helper.make_node("Add", ["v", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Reciprocal", ["sd"], ["inv"]),
        helper.make_node("Mul", ["inv", "gamma"], ["s"]),
        helper.make_node("Mul", ["x", "s"], ["xs"]),
        helper.make_node("Mul", ["nm", "s"], ["ms"]),
        helper.make_node("Add", ["ms", "beta"], ["b"]),
        helper.make_node("Add", ["xs", "b"], ["y"]),
    ]
    consts = {
        "shape": np.array([1, 1, 6, 7]),
        "eps": np.full((1, 1, 1, 1), 1e-3),
        "gamma": rng.uniform(0.5, 2.0, (1, channels, 1, 1)),
        "beta": rng.normal(0.0, 1.0, (1, channels, 1, 1)),
    }
    model = _model(nodes, {k: v for k, v in consts.items() if k != "shape"}, channels)
    from onnx import numpy_helper

    model.graph.initializer.append(numpy_helper.from_array(consts["shape"].astype(np.int64),
                                                           "shape"))
    return model


def _space_to_batch_dilated_conv(back_perm=(1, 0, 2, 3)):
    """A 3 x 3 convolution with dilation 2 and "same" padding as TensorFlow exports it:
    pad, to (C, N, H, W), SpaceToDepth, phases as batch, plain conv, DepthToSpace, crop."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["p"]),
        helper.make_node("Transpose", ["p"], ["pt"], perm=[1, 0, 2, 3]),
        helper.make_node("SpaceToDepth", ["pt"], ["s"], blocksize=2),
        helper.make_node("Transpose", ["s"], ["sb"], perm=[1, 0, 2, 3]),
        helper.make_node("Conv", ["sb", "w"], ["c"], kernel_shape=[3, 3]),
        helper.make_node("Transpose", ["c"], ["ct"], perm=list(back_perm)),
        helper.make_node("DepthToSpace", ["ct"], ["d"], blocksize=2),
        helper.make_node("Slice", ["d", "starts", "ends", "axes"], ["y"]),
    ]
    consts = {"pads": np.array([0, 0, 2, 2, 0, 0, 2, 2], np.int64),
              "w": rng.normal(0, 1, (4, 3, 3, 3)).astype(np.float32),
              "starts": np.array([0, 0], np.int64), "ends": np.array([8, 8], np.int64),
              "axes": np.array([2, 3], np.int64)}
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _ops(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


def test_gelu_chain_becomes_one_fast_gelu_with_the_same_values():
    from gateway.extraction.leader_graph import _fuse_gelu, drop_unused

    model = _tf2onnx_gelu()
    x = {"x": np.random.default_rng(1).normal(0, 2, (1, 3, 6, 7)).astype(np.float32)}
    before = _run(model.SerializeToString(), x)
    assert _fuse_gelu(model) == 1
    drop_unused(model)
    assert _ops(model) == ["FastGelu"] and not model.graph.initializer
    np.testing.assert_allclose(_run(model.SerializeToString(), x), before, atol=1e-5)


def test_a_chain_with_another_constant_is_left_alone():
    from gateway.extraction.leader_graph import _fuse_gelu

    model = _tf2onnx_gelu(cubic=0.05)
    assert _fuse_gelu(model) == 0 and "FastGelu" not in _ops(model)


def test_channel_layer_norm_becomes_layer_normalization_with_the_same_values():
    from gateway.extraction.leader_graph import _fuse_channel_layer_norms, drop_unused

    model = _tf2onnx_channel_layer_norm()
    x = {"x": np.random.default_rng(2).normal(3, 2, (1, 5, 6, 7)).astype(np.float32)}
    before = _run(model.SerializeToString(), x)
    assert _fuse_channel_layer_norms(model) == 1
    drop_unused(model)
    assert _ops(model) == ["Transpose", "LayerNormalization", "Transpose"]
    np.testing.assert_allclose(_run(model.SerializeToString(), x), before, atol=1e-4)


def test_space_to_batch_convolution_becomes_one_dilated_conv_with_the_same_values():
    from gateway.extraction.leader_graph import _fuse_dilated_convs, drop_dead_nodes

    model = _space_to_batch_dilated_conv()
    x = {"x": np.random.default_rng(6).normal(0, 1, (1, 3, 8, 8)).astype(np.float32)}
    before = _run(model.SerializeToString(), x)
    assert before.shape == (4, 1, 8, 8)
    assert _fuse_dilated_convs(model) == 1
    drop_dead_nodes(model)
    assert _ops(model) == ["Conv", "Transpose"]
    conv = model.graph.node[0]
    assert [list(a.ints) for a in conv.attribute if a.name == "dilations"] == [[2, 2]]
    np.testing.assert_allclose(_run(model.SerializeToString(), x), before, atol=1e-5)


def test_a_space_to_batch_chain_that_does_not_return_to_its_layout_is_left_alone():
    from gateway.extraction.leader_graph import _fuse_dilated_convs

    model = _space_to_batch_dilated_conv(back_perm=(0, 1, 2, 3))
    assert _fuse_dilated_convs(model) == 0 and "SpaceToDepth" in _ops(model)


def test_window_covers_the_mask_on_the_32_pixel_grid():
    from gateway.extraction.leader import WINDOW_MARGIN, leader_window

    mask = np.zeros((300, 280), bool)
    mask[100:180, 50:120] = True
    rows, cols = leader_window(mask, (320, 288), offset=(10, 4))
    for s, lo, hi in ((rows, 100 + 10, 180 + 10), (cols, 50 + 4, 120 + 4)):
        assert s.start % 32 == 0 and (s.stop - s.start) % 32 == 0
        assert s.start <= lo - WINDOW_MARGIN and s.stop >= hi + WINDOW_MARGIN
        assert (s.stop - s.start) < (hi - lo) + 2 * WINDOW_MARGIN + 64
    assert leader_window(np.zeros_like(mask), (320, 288), (10, 4)) == (slice(0, 320),
                                                                       slice(0, 288))


def test_shipped_model_fuses_every_block_and_keeps_its_outputs():
    from gateway.extraction.leader import leader_model_path, padded_input
    from gateway.extraction.leader_graph import fused_leader_model

    fused, counts = fused_leader_model(leader_model_path())
    assert (counts.gelu, counts.layer_norm, counts.dilated) == (27, 24, 4)
    image, _ = several_minutiae_image(256)
    feeds = {"input": padded_input(image)[0][None, :, :, None]}
    ref = _run(leader_model_path().read_bytes(), feeds)[0]
    out = _run(fused, feeds)[0]
    np.testing.assert_allclose(out[..., 0], ref[..., 0], atol=1e-3)  # position heat
    np.testing.assert_allclose(out[..., 2], ref[..., 2], atol=1e-3)  # kind
    assert np.array_equal(out[..., 3] >= 0.55, ref[..., 3] >= 0.55)  # detections
    strong = ref[..., 3] >= 0.55
    turn = np.abs(np.mod(out[..., 1] - ref[..., 1] + math.pi, 2 * math.pi) - math.pi)
    assert np.all(turn[strong] < 1e-2)  # directions where a minutia is reported


def test_windowed_run_finds_the_minutiae_of_the_whole_image():
    from gateway.extraction.leader import leader_minutiae

    print_, truth = several_minutiae_image(256)
    # The print in a corner of a wide blank platen, as on a 500 x 500 sensor.
    image = np.full((480, 500), int(print_[0, 0]), np.uint8)
    image[40:296, 200:456] = print_
    mask = np.zeros(image.shape, bool)
    mask[40:296, 200:456] = True
    whole = leader_minutiae(image)
    window = leader_minutiae(image, mask)
    inside = mask[whole.y.astype(int), whole.x.astype(int)]
    assert len(window) == int(inside.sum()) > 0
    for cx, cy, _sign in truth:
        assert np.min(np.hypot(window.x - (cx + 200), window.y - (cy + 40))) <= 6.0
    for x, y in zip(window.x, window.y, strict=True):
        assert np.min(np.hypot(whole.x - x, whole.y - y)) <= 1.0


def test_a_graph_without_leaders_heads_is_not_cut():
    from gateway.extraction.leader_graph import split_at_heads

    assert split_at_heads(_tf2onnx_gelu().SerializeToString()) is None


def test_heads_on_patches_give_the_whole_networks_values_up_to_the_window_edge():
    # The heads run on feature patches; at the window's edge a patch reaches past the
    # image, where the whole network zero-pads: corners and edges test exactly that.
    from gateway.extraction.leader import _heads_at, _network, leader_model_path, padded_input
    from gateway.extraction.leader_graph import fused_leader_model, split_at_heads

    fused, _ = fused_leader_model(leader_model_path())
    split = split_at_heads(fused)
    assert split is not None
    net = _network()
    assert net.heads is not None
    image, _ = several_minutiae_image(160)
    window = np.ascontiguousarray(padded_input(image)[0][:, :96])  # not square
    feed = {"input": window[None, :, :, None]}
    whole = _run(fused, feed)[0]
    score, features = net.trunk.run(None, feed)
    np.testing.assert_allclose(score[0, 0], whole[..., 3], atol=1e-5)
    h, w = window.shape
    ys = np.array([0, 0, h - 1, h - 1, 1, 2, h - 2, 5, 0, h // 2, 77, 100])
    xs = np.array([0, w - 1, 0, w - 1, 1, w - 2, 3, 0, 40, w - 1, 33, 50])
    direction, kind = _heads_at(net.heads, features[0], ys, xs, window.shape)
    turn = np.abs(np.mod(direction - whole[ys, xs, 1] + math.pi, 2 * math.pi) - math.pi)
    assert np.all(turn < 1e-4)
    np.testing.assert_allclose(kind, whole[ys, xs, 2], atol=1e-5)


def _network_window_area(mask: np.ndarray, scale: float) -> int:
    """Pixels the network sees for this mask at this scale, as the extractor shrinks it."""
    import cv2

    from gateway.extraction.leader import _scaled_size, leader_window, padded_input

    h, w = mask.shape
    if scale < 1.0:
        size = (_scaled_size(w, scale), _scaled_size(h, scale))
        mask = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0
    padded, offset = padded_input(np.zeros(mask.shape, np.uint8))
    rows, cols = leader_window(mask, padded.shape, offset)
    return (rows.stop - rows.start) * (cols.stop - cols.start)


def test_budget_scale_is_the_largest_whose_window_fits_the_budget():
    from gateway.extraction.leader import LEADER_MIN_SCALE, LEADER_PIXEL_BUDGET, budget_scale

    rng = np.random.default_rng(11)
    shrunk = 0
    for shape in ((500, 500), (480, 504), (478, 448), (300, 300)):
        for _ in range(6):
            mask = np.zeros(shape, bool)
            top, left = rng.integers(0, shape[0] // 4), rng.integers(0, shape[1] // 4)
            bottom = rng.integers(top + shape[0] // 2, shape[0] + 1)
            right = rng.integers(left + shape[1] // 2, shape[1] + 1)
            mask[top:bottom, left:right] = True
            scale = budget_scale(mask, shape)
            fits = _network_window_area(mask, scale) <= LEADER_PIXEL_BUDGET
            assert fits or scale == LEADER_MIN_SCALE  # only the floor may overrun it
            if scale < 1.0:
                shrunk += 1
                assert _network_window_area(mask, round(scale + 0.01, 2)) > LEADER_PIXEL_BUDGET
    assert shrunk > 0  # the sweep reached windows too large for the budget
    assert budget_scale(np.ones((300, 300), bool), (300, 300)) == 1.0
    # The budget's promise: a finger filling a 500 x 500 frame fits above the floor.
    full = np.ones((500, 500), bool)
    assert LEADER_MIN_SCALE <= budget_scale(full, full.shape) < 1.0
    assert _network_window_area(full, budget_scale(full, full.shape)) <= LEADER_PIXEL_BUDGET


def test_a_shrunk_run_maps_minutiae_back_onto_the_image():
    from gateway.extraction.leader import leader_minutiae_at_scale

    image, truth = several_minutiae_image(256)
    mask = np.ones(image.shape, bool)
    found = leader_minutiae_at_scale(image, mask, 0.8)
    assert len(found) > 0
    for cx, cy, _sign in truth:
        assert np.min(np.hypot(found.x - cx, found.y - cy)) <= 6.0
    assert found.x.max() < image.shape[1] and found.y.max() < image.shape[0]


def test_the_cut_network_finds_what_the_whole_network_finds(monkeypatch):
    # The whole network is also the fallback when the graph cannot be cut.
    import onnxruntime as ort

    import gateway.extraction.leader as leader
    from gateway.extraction.leader_graph import fused_leader_model

    image, _ = several_minutiae_image(256)
    cut = leader.leader_minutiae(image, threshold=0.2)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    whole = ort.InferenceSession(fused_leader_model(leader.leader_model_path())[0], options,
                                 providers=["CPUExecutionProvider"])
    monkeypatch.setattr(leader, "_network", lambda: leader._Network(whole, None))
    ref = leader.leader_minutiae(image, threshold=0.2)
    assert len(ref) >= 5  # the print's five minutiae at least
    np.testing.assert_array_equal(cut.x, ref.x)
    np.testing.assert_array_equal(cut.y, ref.y)
    np.testing.assert_array_equal(cut.kind, ref.kind)
    turn = np.abs(np.mod(cut.angle - ref.angle + math.pi, 2 * math.pi) - math.pi)
    assert np.all(turn < 1e-4)
    np.testing.assert_allclose(cut.confidence, ref.confidence, atol=1e-5)


# The trunk laid out for the CPU: each rewrite on a small graph of the form the fusions
# leave (values compared with onnxruntime before and after), then on the shipped model.

def _graph(nodes, inputs: dict[str, list[int]], constants: dict[str, np.ndarray]):
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in constants.items()])
    return helper.make_model(graph, ir_version=8, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def _bottleneck(adjusted: int | None, split: tuple[int, int] = (3, 3)):
    """concat(a, b) -> 3 x 3 depthwise -> channel LN (as fused) -> 1 x 1 expansion -> GELU
    -> 1 x 1 reduction -> + concat [-> 1 x 1 adjustment to ``adjusted`` channels]."""
    from onnx import helper

    rng = np.random.default_rng(9)
    c = sum(split)

    def normal(*shape):
        return rng.normal(0.0, 0.5, shape).astype(np.float32)

    constants = {"dw": normal(c, 1, 3, 3), "gamma": rng.uniform(0.5, 1.5, c).astype(np.float32),
                 "beta": normal(c), "we": normal(4 * c, c, 1, 1), "be": normal(4 * c),
                 "wr": normal(c, 4 * c, 1, 1), "br": normal(c)}
    nodes = [
        helper.make_node("Concat", ["a", "b"], ["x"], axis=1),
        helper.make_node("Conv", ["x", "dw"], ["d"], group=c, kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Transpose", ["d"], ["dt"], perm=[0, 2, 3, 1]),
        helper.make_node("LayerNormalization", ["dt", "gamma", "beta"], ["n"], axis=-1,
                         epsilon=1e-3),
        helper.make_node("Transpose", ["n"], ["nc"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nc", "we", "be"], ["e"], kernel_shape=[1, 1]),
        helper.make_node("FastGelu", ["e"], ["g"], domain="com.microsoft"),
        helper.make_node("Conv", ["g", "wr", "br"], ["r"], kernel_shape=[1, 1]),
        helper.make_node("Add", ["x", "r"], ["y" if adjusted is None else "s"]),
    ]
    if adjusted is not None:
        constants |= {"wa": normal(adjusted, c, 1, 1), "ba": normal(adjusted)}
        nodes.append(helper.make_node("Conv", ["s", "wa", "ba"], ["y"], kernel_shape=[1, 1]))
    inputs = {"a": [1, split[0], 9, 11], "b": [1, split[1], 9, 11]}
    return _graph(nodes, inputs, constants), inputs


@pytest.mark.parametrize(("adjusted", "split", "expected"), [
    (4, (3, 3), (1, 1, 1)),  # 6 channels padded to 8; 6 -> 4 adjustment folded in
    (10, (3, 3), (1, 0, 1)),  # a wider adjustment is not folded (it would cost more)
    (None, (4, 4), (1, 0, 0)),  # no adjustment, 8 channels: the GEMMs only
    (None, (3, 3), (1, 0, 0)),  # no 1 x 1 conv to absorb padding zeros: not padded
])
def test_a_bottleneck_runs_as_gemms_with_the_same_values(adjusted, split, expected):
    from gateway.extraction.leader_graph import drop_dead_nodes, drop_unused
    from gateway.extraction.leader_layout import _bottlenecks_to_gemms

    model, inputs = _bottleneck(adjusted, split)
    rng = np.random.default_rng(4)
    feeds = {k: rng.normal(0.3, 1.0, v).astype(np.float32) for k, v in inputs.items()}
    before = _run(model.SerializeToString(), feeds)
    assert _bottlenecks_to_gemms(model) == expected
    drop_dead_nodes(model)
    drop_unused(model)
    ops = _ops(model)
    assert ops.count("MatMul") >= 2 and "FastGelu" in ops
    # Only the depthwise conv is left as a Conv, and the adjustment where it is not folded.
    assert ops.count("Conv") == 1 + (adjusted is not None and not expected[1])
    np.testing.assert_allclose(_run(model.SerializeToString(), feeds), before, atol=2e-5)


def test_a_block_whose_input_is_a_graph_output_keeps_its_channels():
    from onnx import TensorProto, helper

    from gateway.extraction.leader_layout import _bottlenecks_to_gemms

    model, _ = _bottleneck(4)
    model.graph.output.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, None))
    assert _bottlenecks_to_gemms(model) == (1, 1, 0)


def _repeat_upsampling(channels: int = 3, h: int = 5, w: int = 6):
    """TensorFlow's 2x nearest upsampling as tf2onnx writes it (reshape targets fixed
    here; the export computes them from the input's shape)."""
    from onnx import helper

    nodes = [
        helper.make_node("Unsqueeze", ["x", "axis3"], ["u"]),
        helper.make_node("Tile", ["u", "reps"], ["t"]),
        helper.make_node("Transpose", ["t"], ["tt"], perm=[0, 2, 3, 4, 1]),
        helper.make_node("Reshape", ["tt", "rows"], ["r"]),
        helper.make_node("Unsqueeze", ["r", "axis3"], ["u2"]),
        helper.make_node("Tile", ["u2", "reps"], ["t2"]),
        helper.make_node("Reshape", ["t2", "cols"], ["r2"]),
        helper.make_node("Transpose", ["r2"], ["y"], perm=[0, 3, 1, 2]),
    ]
    constants = {"axis3": np.array([3]), "reps": np.array([1, 1, 1, 2, 1]),
                 "rows": np.array([1, 2 * h, w, channels]),
                 "cols": np.array([1, 2 * h, 2 * w, channels])}
    return _graph(nodes, {"x": [1, channels, h, w]}, constants)


def test_repeat_upsampling_becomes_one_resize_with_the_same_values():
    from gateway.extraction.leader_graph import drop_unused
    from gateway.extraction.leader_layout import _upsamplings_to_resize

    model = _repeat_upsampling()
    feeds = {"x": np.random.default_rng(2).normal(0, 1, (1, 3, 5, 6)).astype(np.float32)}
    before = _run(model.SerializeToString(), feeds)
    assert before.shape == (1, 3, 10, 12)
    assert _upsamplings_to_resize(model) == 1
    drop_unused(model)
    assert _ops(model) == ["Resize"]
    np.testing.assert_array_equal(_run(model.SerializeToString(), feeds), before)


@pytest.mark.parametrize("kernel", [3, 5, 7])
def test_upsampled_pixels_run_at_low_resolution_with_the_same_values(kernel):
    # Upsampling, then per-pixel nodes (1 x 1 conv, channel LN, GELU) and a k x k conv
    # with a sigmoid: the per-pixel nodes move before the upsampling, the conv becomes a
    # phase conv at the low resolution and the interleave moves after the sigmoid.
    from onnx import helper

    from gateway.extraction.leader_graph import drop_dead_nodes
    from gateway.extraction.leader_layout import _move_later, _upsampled_convs_as_phases

    rng = np.random.default_rng(kernel)
    model = _graph([
        helper.make_node("Resize", ["x", "", "scales"], ["up"], mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("Conv", ["up", "w1", "b1"], ["c1"], kernel_shape=[1, 1]),
        helper.make_node("Transpose", ["c1"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("LayerNormalization", ["t", "gamma", "beta"], ["n"], axis=-1),
        helper.make_node("Transpose", ["n"], ["nc"], perm=[0, 3, 1, 2]),
        helper.make_node("FastGelu", ["nc"], ["g"], domain="com.microsoft"),
        helper.make_node("Conv", ["g", "wk", "bk"], ["k"], kernel_shape=[kernel, kernel],
                         auto_pad="SAME_UPPER"),
        helper.make_node("Sigmoid", ["k"], ["s"]),
        helper.make_node("Identity", ["s"], ["y"]),
    ], {"x": [1, 3, 7, 6]}, {
        "scales": np.array([1, 1, 2, 2], np.float32),
        "w1": rng.normal(0, 0.5, (4, 3, 1, 1)).astype(np.float32),
        "b1": rng.normal(0, 0.5, 4).astype(np.float32),
        "gamma": rng.uniform(0.5, 1.5, 4).astype(np.float32),
        "beta": rng.normal(0, 0.5, 4).astype(np.float32),
        "wk": rng.normal(0, 0.5, (2, 4, kernel, kernel)).astype(np.float32),
        "bk": rng.normal(0, 0.5, 2).astype(np.float32)})
    feeds = {"x": rng.normal(0, 1, (1, 3, 7, 6)).astype(np.float32)}
    before = _run(model.SerializeToString(), feeds)
    assert _move_later(model) > 0
    assert _ops(model)[-4:] == ["Resize", "Conv", "Sigmoid", "Identity"]
    assert _upsampled_convs_as_phases(model) == 1
    _move_later(model)
    drop_dead_nodes(model)
    assert "Resize" not in _ops(model)
    assert _ops(model)[-4:] == ["Conv", "Sigmoid", "DepthToSpace", "Identity"]
    np.testing.assert_allclose(_run(model.SerializeToString(), feeds), before, atol=2e-6)


def test_transposes_move_past_per_pixel_nodes_and_cancel():
    # A dilated conv's detour through (C, N, H, W) around its bias, and a layer norm's
    # transpose back before a GELU and two channel slices.
    from onnx import helper

    from gateway.extraction.leader_layout import _move_later

    rng = np.random.default_rng(12)
    model = _graph([
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], dilations=[2, 2],
                         pads=[2] * 4),
        helper.make_node("Transpose", ["c"], ["cn"], perm=[1, 0, 2, 3]),
        helper.make_node("Add", ["cn", "bias"], ["cb"]),
        helper.make_node("Transpose", ["cb"], ["nc"], perm=[1, 0, 2, 3]),
        helper.make_node("Transpose", ["nc"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("LayerNormalization", ["t", "gamma", "beta"], ["n"], axis=-1),
        helper.make_node("Transpose", ["n"], ["back"], perm=[0, 3, 1, 2]),
        helper.make_node("FastGelu", ["back"], ["g"], domain="com.microsoft"),
        helper.make_node("Slice", ["g", "zero", "two", "one"], ["low"]),
        helper.make_node("Slice", ["g", "two", "four", "one"], ["high"]),
        helper.make_node("Sub", ["low", "high"], ["y"]),
    ], {"x": [1, 3, 8, 9]}, {
        "w": rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32),
        "bias": rng.normal(0, 0.5, (4, 1, 1, 1)).astype(np.float32),
        "gamma": rng.uniform(0.5, 1.5, 4).astype(np.float32),
        "beta": rng.normal(0, 0.5, 4).astype(np.float32),
        "zero": np.array([0]), "two": np.array([2]), "four": np.array([4]),
        "one": np.array([1])})
    feeds = {"x": rng.normal(0, 1, (1, 3, 8, 9)).astype(np.float32)}
    before = _run(model.SerializeToString(), feeds)
    assert _move_later(model) > 0
    ops = _ops(model)
    assert ops[:4] == ["Conv", "Add", "Transpose", "LayerNormalization"]  # detour gone
    assert ops.index("FastGelu") < ops.index("Slice") < ops.index("Transpose", 3)
    np.testing.assert_allclose(_run(model.SerializeToString(), feeds), before, atol=2e-6)


def test_shipped_trunk_laid_out_for_the_cpu_gives_the_same_maps():
    from onnx import load_from_string

    from gateway.extraction.leader import leader_model_path, padded_input
    from gateway.extraction.leader_graph import fused_leader_model, split_at_heads
    from gateway.extraction.leader_layout import LayoutCounts, trunk_for_cpu

    split = split_at_heads(fused_leader_model(leader_model_path())[0])
    assert split is not None
    trunk, counts = trunk_for_cpu(split.trunk)
    assert counts == LayoutCounts(blocks=9, folded=6, padded=3, upsamplings=9, phase_convs=1,
                                  moved=30)
    assert [o.name for o in load_from_string(trunk).graph.output] == \
        [o.name for o in load_from_string(split.trunk).graph.output]
    image, _ = several_minutiae_image(256)
    for window in (padded_input(image)[0], padded_input(image)[0][:96, 32:]):
        feed = {"input": np.ascontiguousarray(window)[None, :, :, None]}
        score, features = _run_both(split.trunk, feed)
        new_score, new_features = _run_both(trunk, feed)
        np.testing.assert_allclose(new_features, features, atol=1e-4)
        # The score is suppressed to local maxima: where two blurred neighbours tie to
        # float rounding either may win, which happens only on the near-zero background.
        wins = np.maximum(score, new_score) > 1e-3
        np.testing.assert_allclose(new_score[wins], score[wins], atol=1e-5)
        assert np.count_nonzero(score >= 0.4) > 0


def _run_both(model_bytes: bytes, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options,
                                providers=["CPUExecutionProvider"]).run(None, feeds)
