"""The compact families (SqueezeNet, MobileNet v1/v2, ShuffleNet V2): their building blocks
compute what the papers say, small inputs get the small stem, options are checked, and tiny
models export to int8 TFLite with builtin integer kernels only."""

import keras
import numpy as np
import pytest

from kcnn.errors import KcnnError
from kcnn.models import check_kwargs, create_model
from kcnn.models.info import analyze
from kcnn.models.shufflenet import channel_shuffle, channel_split


def numbers(shape):
    return np.arange(np.prod(shape), dtype="float32").reshape(shape)


@pytest.mark.parametrize("channels, groups, order", [
    (6, 2, [0, 3, 1, 4, 2, 5]),
    (6, 3, [0, 2, 4, 1, 3, 5]),
    (8, 2, [0, 4, 1, 5, 2, 6, 3, 7]),
])
def test_channel_shuffle_interleaves_the_groups(channels, groups, order):
    inputs = keras.Input((3, 2, channels))
    model = keras.Model(inputs, channel_shuffle(inputs, groups, name="shuffle"))
    x = numbers((2, 3, 2, channels))
    out = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_array_equal(out, x[..., order])
    assert {type(layer).__name__ for layer in model.layers[1:]} == {"Reshape", "Permute"}


def test_channel_split_halves():
    inputs = keras.Input((2, 3, 8))
    first, second = channel_split(inputs, name="split")
    model = keras.Model(inputs, [first, second])
    x = numbers((2, 2, 3, 8))
    a, b = (keras.ops.convert_to_numpy(t) for t in model(x))
    np.testing.assert_array_equal(a, x[..., :4])
    np.testing.assert_array_equal(b, x[..., 4:])


def test_shufflenet_unit_layouts():
    # torchvision: both branches of a stride-2 unit make half the width; the authors' code
    # keeps the input width (24) on the depthwise branch and gives the rest to the other.
    tv = create_model("shufflenet_v2_x1_0", num_classes=10, input_shape=(64, 64, 3))
    official = create_model("shufflenet_v2_x1_0", num_classes=10, input_shape=(64, 64, 3),
                            downsample_widths="official")
    assert tv.get_layer("stage2_unit1_proj_pw").filters == 58
    assert tv.get_layer("stage2_unit1_main_pw2").filters == 58
    assert official.get_layer("stage2_unit1_proj_pw").filters == 24
    assert official.get_layer("stage2_unit1_main_pw2").filters == 116 - 24
    # stride-1 units: the split passes 58 channels through, the branch keeps 58 wide
    assert tuple(tv.get_layer("stage2_unit2_split_first_map").output.shape) == (None, 8, 8, 58)
    assert sum(layer.name.endswith("_shuffle_transpose") for layer in tv.layers) == 16
    # no activation after a depthwise convolution
    assert type(tv.get_layer("stage2_unit2_main_dw_bn")._outbound_nodes[0].operation) \
        .__name__ == "Conv2D"


def test_mobilenet_v2_blocks():
    model = create_model("mobilenet_v2", num_classes=10, input_shape=(224, 224, 3), alpha=0.35)
    names = {layer.name for layer in model.layers}
    assert "block1_expand" not in names and "block2_expand" in names  # t = 1, then t = 6
    assert model.get_layer("block2_expand").filters == 6 * 8  # block1 makes 16·0.35 → 8
    # 10 residual connections: where stride is 1 and the widths match
    adds = sorted(layer.name for layer in model.layers if type(layer).__name__ == "Add")
    assert len(adds) == 10 and "block3_add" in adds and "block2_add" not in adds
    # linear bottlenecks: the projection's BN feeds the addition, no ReLU between
    assert model.get_layer("block3_project_bn")._outbound_nodes[0].operation.name == "block3_add"
    relus = [layer for layer in model.layers if type(layer).__name__ == "ReLU"]
    assert relus and all(layer.max_value == 6.0 for layer in relus)
    assert model.get_layer("conv_last").filters == 1280  # kept for alpha < 1
    wide = create_model("mobilenet_v2", num_classes=10, input_shape=(64, 64, 3), alpha=1.4)
    assert wide.get_layer("conv_last").filters == 1792
    assert wide.get_layer("conv1").filters == 48


def test_mobilenet_v1_width_multiplier():
    # Howard et al. 2017, Table 6: alpha 0.5 has 1.3 M parameters and 149 M mult-adds.
    model = create_model("mobilenet_v1", num_classes=1000, input_shape=(224, 224, 3), alpha=0.5)
    info = analyze(model)
    assert round(info.trainable_params / 1e6, 1) == 1.3
    assert abs(info.macs - 149e6) / 149e6 < 0.01
    assert model.get_layer("block13_pw").filters == 512


@pytest.mark.parametrize("name, kwargs, layer, small_map, large_map", [
    ("mobilenet_v2", {"alpha": 0.35}, "conv_last", 4, 2),
    ("mobilenet_v1", {"alpha": 0.25}, "block13_pw", 4, 2),
    ("shufflenet_v2_x0_5", {}, "conv5", 4, 2),
    # SqueezeNet 1.1: 64 → conv1 3×3/2 31 → pooled 15, 7, 3; small: 32 → pooled 16, 8
    ("squeezenet1_1", {"width": 0.25}, "fire9_concat", 8, 3),
])
def test_small_inputs_get_the_small_stem(name, kwargs, layer, small_map, large_map):
    def side(model):
        return model.get_layer(layer).output.shape[1]

    small = create_model(name, num_classes=10, input_shape=(32, 32, 1), **kwargs)
    large = create_model(name, num_classes=10, input_shape=(64, 64, 1), **kwargs)
    forced = create_model(name, num_classes=10, input_shape=(32, 32, 1), small_input=False,
                          **kwargs)
    assert (side(small), side(large), side(forced)) == (small_map, large_map, 1)
    assert small.count_params() == large.count_params()  # the same weights, other strides


def test_squeezenet_head_keeps_conv10_relu_and_batch_norm_option():
    model = create_model("squeezenet1_1", num_classes=10, input_shape=(32, 32, 3), width=0.25)
    assert [type(layer).__name__ for layer in model.layers[-4:]] == [
        "Dropout", "Conv2D", "ReLU", "GlobalAveragePooling2D"]
    assert not any(type(layer).__name__ == "BatchNormalization" for layer in model.layers)
    assert model.get_layer("fire2_squeeze").use_bias
    bn = create_model("squeezenet1_1", num_classes=10, input_shape=(32, 32, 3), width=0.25,
                      batch_norm=True)
    assert not bn.get_layer("fire2_squeeze").use_bias
    assert bn.get_layer("fire2_squeeze_bn")
    fc = create_model("squeezenet1_1", num_classes=10, input_shape=(32, 32, 3), width=0.25,
                      head="pool_fc")
    assert [type(layer).__name__ for layer in fc.layers[-3:]] == [
        "GlobalAveragePooling2D", "Dropout", "Dense"]


@pytest.mark.parametrize("name, kwargs, message", [
    ("mobilenet_v2", {"batch_norm": False}, "model.batch_norm: mobilenet_v2 always uses batch"),
    ("mobilenet_v1", {"alpha": 0}, r"model.alpha must be a number > 0 \(got 0\)"),
    ("squeezenet1_0", {"width": -1}, r"model.width must be a number > 0"),
    ("shufflenet_v2_x1_0", {"small_input": "yes"}, "model.small_input must be true, false"),
    ("shufflenet_v2_x1_0", {"downsample_widths": "oficial"},
     "model.downsample_widths: unknown downsample_widths 'oficial' .*did you mean"),
    ("shufflenet_v2_x0_5", {"head": "pool-fc"}, "model.head: unknown head"),
])
def test_bad_options_are_refused_at_recipe_time_and_build_time(name, kwargs, message):
    with pytest.raises(KcnnError, match=message):
        check_kwargs(name, kwargs)
    with pytest.raises(KcnnError, match=message.removeprefix("model.head: ")
                       .removeprefix("model.downsample_widths: ")):
        create_model(name, num_classes=3, input_shape=(16, 16, 1), **kwargs)


# Builtin TFLite ops with integer kernels, plus SHAPE and PACK: Keras' Reshape reads the
# (dynamic) batch size, integer bookkeeping that stays outside the quantized graph.
BUILTIN_INT8 = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MEAN", "AVERAGE_POOL_2D",
                "MAX_POOL_2D", "CONCATENATION", "RESHAPE", "TRANSPOSE", "STRIDED_SLICE", "ADD",
                "RELU", "RELU6", "QUANTIZE", "DEQUANTIZE", "SLICE", "SHAPE", "PACK"}


@pytest.mark.parametrize("name, kwargs", [
    ("squeezenet1_1", {"width": 0.125, "batch_norm": True}),
    ("mobilenet_v2", {"alpha": 0.1}),
    ("shufflenet_v2_x0_5", {}),
])
def test_tiny_compact_models_export_to_int8_tflite_with_builtin_ops(name, kwargs):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TFLite export needs the TensorFlow backend")
    from kcnn.export.runtime import TFLiteModel
    from kcnn.export.tflite import convert, float_fallback

    keras.utils.set_random_seed(0)
    model = create_model(name, num_classes=10, input_shape=(16, 16, 1), **kwargs)
    samples = np.random.default_rng(0).normal(size=(8, 16, 16, 1)).astype("float32")
    tflite = TFLiteModel(convert(model, "int8", samples))
    ops = tflite.ops()
    kinds = {op["op"] for op in ops}
    assert kinds <= BUILTIN_INT8, kinds - BUILTIN_INT8
    assert float_fallback(ops, [layer.name for layer in model.layers]) == ([], [])
    assert {"CONV_2D", "MEAN"} <= kinds
    if name != "squeezenet1_1":  # SqueezeNet has neither depthwise nor FC layers
        assert {"DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} <= kinds
    if name.startswith("shufflenet"):
        assert {"TRANSPOSE", "RESHAPE", "CONCATENATION"} <= kinds
    scores = tflite.predict(samples[:2])
    assert scores.shape == (2, 10) and np.isfinite(scores).all()
