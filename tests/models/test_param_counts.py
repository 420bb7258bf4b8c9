"""Parameter counts against the papers and reference implementations, and the
receptive fields the book quotes. Models are built (not trained) at their native
input size without the engine's preprocessing layers."""

import math

import keras
import pytest

from kcnn.models import create_model
from kcnn.models.info import analyze


def trainable(model) -> int:
    return sum(math.prod(w.shape) for w in model.trainable_weights)


@pytest.fixture(scope="module")
def vgg16():
    model = create_model("vgg16", num_classes=1000, input_shape=(224, 224, 3))
    yield model
    keras.backend.clear_session()


@pytest.fixture(scope="module")
def alexnet():
    model = create_model("alexnet", num_classes=1000, input_shape=(227, 227, 3), groups=2)
    yield model
    keras.backend.clear_session()


@pytest.mark.parametrize(
    "name, depth_params",
    [("resnet20", 269_722), ("resnet32", 464_154), ("resnet56", 853_018),
     ("resnet110", 1_727_962)],
)
def test_cifar_resnet_trainable_parameters(name, depth_params):
    model = create_model(name, num_classes=10, input_shape=(32, 32, 3))
    assert trainable(model) == depth_params
    # Option-A shortcuts add no weights: every parameter sits in a conv, BN or the classifier.
    assert not any("shortcut" in w.path for w in model.weights)


def test_vgg16_total_parameters(vgg16):
    assert vgg16.count_params() == 138_357_544


def test_vgg19_total_parameters():
    model = create_model("vgg19", num_classes=1000, input_shape=(224, 224, 3))
    assert model.count_params() == 143_667_240


def test_alexnet_two_towers(alexnet):
    assert alexnet.count_params() == 60_965_224
    assert alexnet.get_layer("conv2").groups == 2
    assert not alexnet.get_layer("lrn1").weights  # LRN has no weights


def test_alexnet_one_tower():
    model = create_model("alexnet", num_classes=1000, input_shape=(227, 227, 3), groups=1)
    assert model.count_params() == 62_378_344


def test_resnet50_parameters():
    model = create_model("resnet50", num_classes=1000, input_shape=(224, 224, 3))
    assert abs(trainable(model) - 25.6e6) / 25.6e6 < 0.005
    assert trainable(model) == 25_557_032  # torchvision's resnet50


def test_nin_cifar_parameters():
    model = create_model("nin_cifar", num_classes=10, input_shape=(32, 32, 3))
    # mlpconv 5×5 192-160-96, 5×5 192-192-192, 3×3 192-192, then the gap head's 1×1 conv
    # to the 10 classes; every convolution has a bias.
    expected = (
        (5 * 5 * 3 * 192 + 192) + (192 * 160 + 160) + (160 * 96 + 96)
        + (5 * 5 * 96 * 192 + 192) + 2 * (192 * 192 + 192)
        + (3 * 3 * 192 * 192 + 192) + (192 * 192 + 192)
        + (192 * 10 + 10)
    )
    assert trainable(model) == expected == 966_986  # "about 0.97 M"


def test_highway_cifar_parameters():
    model = create_model("highway_cifar", num_classes=10, input_shape=(32, 32, 3))
    # Depth 19: per stage (width 32, 64, 128) one plain 3×3 conv and (19 - 4) / 3 = 5
    # highway layers of two 3×3 convs (H and T) each, all with biases; then a 1×1 conv.
    def conv(c_in, c_out, k=3):
        return k * k * c_in * c_out + c_out

    expected = sum(conv(c_in, w) + 5 * 2 * conv(w, w)
                   for c_in, w in [(3, 32), (32, 64), (64, 128)]) + conv(128, 10, 1)
    assert trainable(model) == expected == 2_032_138
    assert sum(type(layer).__name__ == "HighwayConv2D" for layer in model.layers) == 15


@pytest.fixture(scope="module")
def analyses(vgg16, alexnet):
    return {"vgg16": analyze(vgg16), "alexnet": analyze(alexnet)}


@pytest.mark.parametrize(
    "model, layer, size, jump",
    [
        ("vgg16", "conv1_1", 3, 1),
        ("vgg16", "conv5_3", 196, 16),
        ("vgg16", "pool5", 212, 32),
        ("alexnet", "conv1", 11, 4),
        ("alexnet", "conv5", 163, 16),
        ("alexnet", "pool5", 195, 32),
    ],
)
def test_receptive_fields(analyses, model, layer, size, jump):
    field = analyses[model].layer(layer).receptive_field
    assert (field.size, field.jump) == ((size, size), (jump, jump))


def test_vgg16_macs(analyses):
    info = analyses["vgg16"]
    assert info.layer("fc1").receptive_field is None  # a fully connected layer sees everything
    assert info.macs == 15_470_264_320  # the usual 15.5 G multiply-adds at 224×224
    assert info.total_params == 138_357_544


def test_alexnet_pool5_output(analyses):
    assert tuple(analyses["alexnet"].layer("pool5").output_shape) == (None, 6, 6, 256)
