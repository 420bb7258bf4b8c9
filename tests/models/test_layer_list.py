"""The free-form `layers` builder: layer types, repeat / residual / highway, the appended
head, and error messages that name the entry."""

import keras
import numpy as np
import pytest

from kcnn.errors import KcnnError, RecipeError
from kcnn.models import create_model
from kcnn.recipes import loads


def build(layers, classes=3, shape=(8, 8, 2), **kw):
    return create_model("layers", num_classes=classes, input_shape=shape, layers=layers, **kw)


def types(model):
    return [type(layer).__name__ for layer in model.layers]


def test_keras_and_kcnn_layers_by_name_and_entry_forms():
    model = build([
        {"type": "Conv2D", "filters": 4, "kernel_size": 3, "dilation_rate": 2, "padding": "same"},
        {"LocalResponseNormalization": {"size": 3}},
        {"lrn": None},
        "ReLU",
        {"StochasticPooling2D": {"pool_size": 2}},
        {"MLPConv2D": {"filters": [4, 4], "kernel_size": 3}},
        {"type": "Flatten"},
        {"Dense": {"units": 3}},
    ])
    assert types(model)[1:] == ["Conv2D", "LocalResponseNormalization",
                                "LocalResponseNormalization", "ReLU", "StochasticPooling2D",
                                "MLPConv2D", "Flatten", "Dense"]
    assert model.layers[1].dilation_rate == (2, 2)
    assert model.layers[1].name == "conv2d_1"
    # The list already ends with 3 = num_classes units: nothing is appended.
    assert model.layers[-1].name == "dense_1" and tuple(model.output.shape) == (None, 3)


def test_shorthands_follow_the_models_batch_norm_and_pooling():
    model = build([{"type": "conv", "filters": 4}, "pool"], batch_norm=True, pooling="lp")
    assert types(model)[1:5] == ["Conv2D", "BatchNormalization", "ReLU", "LpPooling2D"]
    assert not model.layers[1].use_bias


def test_repeat_makes_fresh_layers():
    model = build([{"repeat": 3, "layers": [{"type": "conv", "filters": 4}]}])
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.name for c in convs] == ["conv_1", "conv_2", "conv_3", "classifier"]
    assert len({id(c.kernel) for c in convs}) == 4


def test_residual_adds_the_input_and_projects_when_shapes_differ():
    same = build([{"residual": [{"type": "Conv2D", "filters": 2, "kernel_size": 3,
                                 "padding": "same", "kernel_initializer": "zeros"}]}],
                 shape=(8, 8, 2))
    inner = keras.Model(same.input, same.get_layer("residual_1_add").output)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 2)).astype("float32")
    # F(x) = 0, so the block is the identity.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(inner(x)), x, atol=1e-6)

    wider = build([{"residual": [{"type": "conv", "filters": 6, "strides": 2}],
                    "activation": "relu"}], shape=(8, 8, 2))
    proj = wider.get_layer("residual_1_projection")
    assert proj.kernel_size == (1, 1) and proj.strides == (2, 2) and proj.filters == 6
    assert types(wider).count("Add") == 1 and "Activation" in types(wider)


def test_highway_gates_between_transform_and_carry():
    model = build([{"highway": [{"type": "Conv2D", "filters": 2, "kernel_size": 3,
                                 "padding": "same"}], "gate_bias": -30.0}], shape=(8, 8, 2))
    out = keras.Model(model.input, model.get_layer("highway_1_out").output)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 2)).astype("float32")
    # T ≈ sigmoid(-30) ≈ 0: the layer carries its input through.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out(x)), x, atol=1e-5)
    gate = model.get_layer("highway_1_gate")
    assert gate.kernel_size == (3, 3)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(gate.bias), -30.0)
    with pytest.raises(KcnnError, match=r"model.layers\[0\]: a highway stack must keep the shape"):
        build([{"highway": [{"type": "conv", "filters": 5}]}])


@pytest.mark.parametrize("head, appended", [
    ("gap", ["Conv2D", "GlobalAveragePooling2D"]),
    ("dense", ["Flatten", "Dense"]),
    ("conv", ["Conv2D", "GlobalAveragePooling2D"]),
])
def test_head_is_appended_when_the_list_does_not_end_in_logits(head, appended):
    model = build([{"type": "conv", "filters": 4}], head=head)
    assert types(model)[-2:] == appended
    assert tuple(model.output.shape) == (None, 3)


def test_class_maps_get_global_average_pooling_and_vectors_a_dense_layer():
    maps = build([{"type": "Conv2D", "filters": 3, "kernel_size": 1}])
    assert types(maps)[-2:] == ["Conv2D", "GlobalAveragePooling2D"]
    flat = build(["Flatten", {"Dense": {"units": 7}}], dropout=0.5)
    assert types(flat)[-3:] == ["Dense", "Dropout", "Dense"]


def test_unknown_layer_lists_close_matches():
    with pytest.raises(KcnnError, match=r"model.layers\[1\]: unknown layer type 'MaxPoolin2D' "
                                        r"\(did you mean 'MaxPooling2D'"):
        build([{"type": "conv", "filters": 4}, {"MaxPoolin2D": {}}])
    assert build([{"conv2d": {"filters": 3, "kernel_size": 1}}])  # case-insensitive match


def test_bad_arguments_name_the_entry_and_the_layer():
    with pytest.raises(KcnnError, match=r"model.layers\[1\] \(Conv2D\): unknown argument "
                                        r"'filtres' \(did you mean 'filters'\?\)"):
        build(["ReLU", {"Conv2D": {"filtres": 4, "kernel_size": 3}}])
    with pytest.raises(KcnnError, match=r"model.layers\[0\] \(Conv2D\): bad arguments: .*padding"):
        build([{"Conv2D": {"filters": 4, "kernel_size": 3, "padding": "full"}}])
    with pytest.raises(KcnnError, match=r"model.layers\[0\].residual\[0\] \(MaxPooling2D\): "
                                        r"cannot apply"):
        build([{"residual": [{"MaxPooling2D": {"pool_size": 9}}]}])


def test_recipe_layers_without_name_and_structure_checks():
    recipe = loads("name: x\ndata: {source: {type: digits}}\n"
                   "model: {layers: [{type: conv, filters: 4}, pool]}\n")
    assert recipe.model.name == "layers"
    with pytest.raises(RecipeError, match=r"model.layers\[0\].repeat: must be a positive integer"):
        loads("name: x\ndata: {source: {type: digits}}\n"
              "model: {layers: [{repeat: 0, layers: [ReLU]}]}\n")
    with pytest.raises(RecipeError, match=r"model.layers\[0\]: unknown key 'extra' for residual"):
        loads("name: x\ndata: {source: {type: digits}}\n"
              "model: {layers: [{residual: [ReLU], extra: 1}]}\n")
    with pytest.raises(RecipeError, match=r"model.pooling: unknown pooling 'maxx' "
                                          r"\(did you mean 'max'\?\)"):
        loads("name: x\ndata: {source: {type: digits}}\nmodel: {name: vgg11, pooling: maxx}\n")
    with pytest.raises(RecipeError, match=r"model.name: required key is missing"):
        loads("name: x\ndata: {source: {type: digits}}\nmodel: {width: 2}\n")
