"""`kcnn info` analysis: receptive field, MACs and parameters per layer, on small graphs
whose numbers are worked out by hand."""

import json

import keras
import numpy as np
import pytest

from kcnn.errors import KcnnError
from kcnn.models import create_model
from kcnn.models.info import ReceptiveField, analyze, format_table, load_target, recipe_shapes
from kcnn.recipes import loads


def graph(shape, *layers):
    inputs = keras.Input(shape, name="image")
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x)


def rf(model, name):
    return analyze(model).layer(name).receptive_field


def test_three_3x3_convolutions_see_what_one_7x7_sees():
    c = 8
    stack = graph((32, 32, c), *[keras.layers.Conv2D(c, 3, padding="same", name=f"c{i}")
                                 for i in range(3)])
    single = graph((32, 32, c), keras.layers.Conv2D(c, 7, padding="same", name="c7"))
    assert rf(stack, "c2") == rf(single, "c7") == ReceptiveField((7, 7), (1, 1), (0, 0))
    # ... with 27·C² weights instead of 49·C² (biases aside).
    s, o = analyze(stack), analyze(single)
    assert s.total_params - 3 * c == 27 * c * c
    assert o.total_params - c == 49 * c * c
    assert s.macs == 32 * 32 * 27 * c * c and o.macs == 32 * 32 * 49 * c * c


def test_strided_dilated_and_padded_windows():
    model = graph(
        (16, 16, 1),
        keras.layers.Conv2D(2, 3, strides=2, padding="valid", name="s2"),      # 7×7 map
        keras.layers.Conv2D(2, 3, dilation_rate=2, padding="same", name="d2"),
        keras.layers.ZeroPadding2D(((1, 0), (2, 0)), name="pad"),
        keras.layers.MaxPooling2D(2, name="pool"),
        keras.layers.Cropping2D(((1, 0), (0, 0)), name="crop"),
    )
    # valid 3×3/2: size 3, jump 2, first centre at pixel 1
    assert rf(model, "s2") == ReceptiveField((3, 3), (2, 2), (1, 1))
    # dilation 2 → effective 5×5: size 3 + 4·2 = 11; "same" pads 2 before → centre unchanged
    assert rf(model, "d2") == ReceptiveField((11, 11), (2, 2), (1, 1))
    # padding shifts the first unit by pad·jump to the top-left
    assert rf(model, "pad") == ReceptiveField((11, 11), (2, 2), (-1, -3))
    # 2×2/2 pooling: size 11 + 1·2, jump 4, centre + 0.5·2
    assert rf(model, "pool") == ReceptiveField((13, 13), (4, 4), (0, -2))
    # cropping one row moves the first unit one jump down
    assert rf(model, "crop") == ReceptiveField((13, 13), (4, 4), (4, -2))


def test_same_padding_with_stride_uses_tensorflows_split():
    # 8 → 4 with k=3, s=2: TensorFlow pads 0 before and 1 after, so the first centre is pixel 1.
    even = graph((8, 8, 1), keras.layers.Conv2D(1, 3, strides=2, padding="same", name="c"))
    assert rf(even, "c") == ReceptiveField((3, 3), (2, 2), (1, 1))
    # 7 → 4: pads 1 before and 1 after, centre at pixel 0.
    odd = graph((7, 7, 1), keras.layers.Conv2D(1, 3, strides=2, padding="same", name="c"))
    assert rf(odd, "c") == ReceptiveField((3, 3), (2, 2), (0, 0))


def test_merging_branches_takes_the_largest_field():
    inputs = keras.Input((16, 16, 4))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs)
    b = keras.layers.Conv2D(4, 5, padding="same", name="b1")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", name="b2")(b)
    added = keras.layers.Add(name="add")([a, b])
    joined = keras.layers.Concatenate(name="cat")([inputs, added])
    model = keras.Model(inputs, joined)
    assert rf(model, "add").size == (7, 7)
    assert rf(model, "cat").size == (7, 7)


def test_composite_kcnn_layers_count_their_own_kernels():
    from kcnn.layers import DeformableConv2D, HighwayConv2D, MLPConv2D, ResidualBlock

    model = graph(
        (16, 16, 4),
        MLPConv2D([8, 8], 5, name="mlp"),                          # 5×5 then 1×1s
        HighwayConv2D(3, name="hw"),                               # 3×3, stride 1
        ResidualBlock(8, strides=2, shortcut="projection", name="res"),  # 3×3/2 then 3×3
        DeformableConv2D(8, 3, padding="same", name="deform"),     # nominal 3×3 grid
    )
    info = analyze(model)
    assert info.layer("mlp").receptive_field.size == (5, 5)
    assert info.layer("hw").receptive_field.size == (7, 7)
    assert info.layer("res").receptive_field.size == (7 + 2 * 1 + 2 * 2,) * 2
    assert info.layer("res").receptive_field.jump == (2, 2)
    assert info.layer("deform").receptive_field.size == (13 + 2 * 2,) * 2
    # MACs: mlp 16·16·(25·4·8 + 8·8); highway: two 3×3 8→8 convolutions;
    # residual: 3×3/2 8→8 and 3×3 8→8 at 8×8, plus the 1×1/2 projection.
    assert info.layer("mlp").macs == 256 * (25 * 4 * 8 + 8 * 8)
    assert info.layer("hw").macs == 2 * 256 * 9 * 8 * 8
    assert info.layer("res").macs == 64 * (9 * 8 * 8 * 2 + 8 * 8)
    assert info.layer("deform").macs == 64 * 9 * 8 * (8 + 18)


def test_grouped_convolution_and_dense_macs():
    model = graph((6, 6, 4), keras.layers.Conv2D(8, 3, groups=2, name="g"),
                  keras.layers.Flatten(name="flat"), keras.layers.Dense(3, name="fc"))
    info = analyze(model)
    assert info.layer("g").macs == 4 * 4 * 8 * 9 * 2
    assert info.layer("g").params == 9 * 2 * 8 + 8
    assert info.layer("fc").macs == 128 * 3
    assert info.macs == 4 * 4 * 8 * 9 * 2 + 128 * 3


def test_depthwise_separable_and_grouped_macs():
    # Howard et al. 2017, Eq. 5: a depthwise separable layer costs
    # Dk·Dk·M·Df·Df + M·N·Df·Df against Dk·Dk·M·N·Df·Df for a standard convolution.
    inputs = keras.Input((8, 8, 4))
    dw = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2,
                                      name="dw")(inputs)                       # 4×4×8
    sep = keras.layers.SeparableConv2D(6, 3, padding="same", depth_multiplier=1,
                                       name="sep")(dw)                         # 4×4×6
    sep2 = keras.layers.SeparableConv2D(5, 3, strides=2, padding="valid", depth_multiplier=3,
                                        name="sep2")(sep)                      # 1×1×5
    grouped = keras.layers.Conv2D(8, 1, groups=4, name="g")(dw)               # 4×4×8
    full = keras.layers.Conv2D(8, 3, padding="same", name="full")(dw)
    model = keras.Model(inputs, [sep2, grouped, full])
    info = analyze(model)
    assert info.layer("dw").macs == 4 * 4 * 8 * 9
    assert info.layer("sep").macs == 4 * 4 * (8 * 9 + 8 * 6)
    assert info.layer("sep2").macs == 1 * 1 * (6 * 3 * 9 + 6 * 3 * 5)
    assert info.layer("g").macs == 4 * 4 * 8 * (8 // 4)
    assert info.layer("full").macs == 4 * 4 * 8 * 9 * 8
    # the separable layer against the standard 3×3 convolution it replaces: 1/N + 1/Dk²
    assert info.layer("sep").macs / (4 * 4 * 9 * 8 * 6) == pytest.approx(1 / 6 + 1 / 9)
    assert info.layer("dw").params == 9 * 8 + 8


def test_one_dimensional_depthwise_and_separable_macs():
    model = graph((10, 3), keras.layers.DepthwiseConv1D(3, depth_multiplier=2, name="dw1"),
                  keras.layers.SeparableConv1D(4, 3, name="sep1"))
    info = analyze(model)
    assert info.layer("dw1").macs == 8 * 6 * 3        # 8 positions, 6 channels, k = 3
    assert info.layer("sep1").macs == 6 * (6 * 3 + 6 * 4)


def test_mobilenet_v2_block_macs_by_hand():
    model = create_model("mobilenet_v2", num_classes=10, input_shape=(16, 16, 1), alpha=0.35,
                         small_input=True)
    info = analyze(model)
    # block2: 8 → 48 (1×1 at 16×16), 3×3 depthwise (stride 1 on small inputs), 48 → 8
    assert info.layer("block2_expand").macs == 16 * 16 * 8 * 48
    assert info.layer("block2_dw").macs == 16 * 16 * 48 * 9
    assert info.layer("block2_project").macs == 16 * 16 * 48 * 8
    assert info.macs == sum(row.macs for row in info.layers)


def test_json_and_table():
    model = create_model("resnet20", num_classes=10, input_shape=(32, 32, 3), width=4)
    info = analyze(model)
    data = json.loads(json.dumps(info.to_json()))
    assert set(data) >= {"total_params", "trainable_params", "macs", "layers"}
    assert data["total_params"] == model.count_params()
    assert data["trainable_params"] < data["total_params"]  # BN moving statistics
    assert sum(row["params"] for row in data["layers"]) == data["total_params"]
    row = next(r for r in data["layers"] if r["name"] == "stage3_block3")
    assert set(row) == {"name", "type", "output_shape", "params", "macs", "receptive_field"}
    assert row["type"] == "ResidualBlock" and row["output_shape"] == [None, 8, 8, 16]
    # 3×3 stem + 9 blocks of two 3×3 convolutions, strides 2 at blocks 4 and 7
    assert row["receptive_field"]["size"] == [81, 81]
    assert data["layers"][-1]["receptive_field"] is None  # global average pooling
    table = format_table(info)
    assert any(line.startswith("stage3_block3 ") and "ResidualBlock" in line and
               line.split()[-3:] == ["81", "4", "3"] for line in table.splitlines())
    assert table.splitlines()[-1].startswith(f"total: {model.count_params():,} parameters")


def test_recipe_shapes_without_downloading(monkeypatch):
    def no_download():
        raise AssertionError("must not download")

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", no_download)
    recipe = loads("name: x\ndata: {source: {type: keras, name: cifar10}}\n"
                   "model: {name: resnet20}\n")
    assert recipe_shapes(recipe) == ((32, 32, 3), 10)
    recipe = loads("name: x\ndata: {source: {type: keras, name: fashion_mnist}}\n"
                   "model: {name: resnet20}\n")
    assert recipe_shapes(recipe) == ((28, 28, 1), 10)
    recipe = loads("name: x\ndata: {source: {type: digits, resize: 16}}\nmodel: {name: nin_small}\n")
    assert recipe_shapes(recipe) == ((16, 16, 1), 10)
    recipe = loads("name: x\ndata: {source: {type: directory, path: /nonexistent, "
                   "image_size: [40, 30], color_mode: grayscale}}\n"
                   "model: {name: resnet20, num_classes: 7}\n")
    assert recipe_shapes(recipe) == ((40, 30, 1), 7)


def test_npz_recipe_shapes_read_headers(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((5, 12, 10), "uint8"), y=np.array([0, 1, 2, 4, 1]))
    recipe = loads(f"name: x\ndata: {{source: {{type: npz, path: {tmp_path / 'd.npz'}}}}}\n"
                   "model: {name: simple_cnn}\n")
    assert recipe_shapes(recipe) == ((12, 10, 1), 5)


def test_targets(tmp_path):
    model = load_target("resnet20")  # a registered name: the builder's defaults
    assert analyze(model).trainable_params == 269_722
    with pytest.raises(KcnnError, match=r"not a run directory.*did you mean .*'resnet20'"):
        load_target("resnet2O")
    with pytest.raises(KcnnError, match="model file not found"):
        load_target(str(tmp_path / "missing.keras"))


def test_nested_models_are_walked_layer_by_layer():
    inner = keras.Sequential([keras.Input((8, 8, 2)),
                              keras.layers.Conv2D(2, 3, padding="same", name="i1"),
                              keras.layers.Conv2D(2, 3, padding="same", name="i2")], name="inner")
    inputs = keras.Input((16, 16, 2))
    x = keras.layers.MaxPooling2D(2, name="pool")(inputs)
    x = inner(x)
    x = keras.layers.Conv2D(2, 1, name="last")(x)
    info = analyze(keras.Model(inputs, x))
    # pool: 2 (jump 2); two 3×3 at jump 2: 2 + 4 + 4 = 10; the 1×1 keeps it
    assert info.layer("inner/i2").receptive_field.size == (10, 10)
    assert info.layer("last").receptive_field.size == (10, 10)
    assert info.total_params == 2 * (9 * 2 * 2 + 2) + (2 * 2 + 2)
