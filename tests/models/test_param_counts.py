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


def test_vgg16_receptive_fields_and_macs(vgg16):
    info = analyze(vgg16)
    assert info.layer("conv1_1").receptive_field.size == (3, 3)
    assert info.layer("conv5_3").receptive_field.size == (196, 196)
    assert info.layer("pool5").receptive_field.size == (212, 212)
    assert info.layer("pool5").receptive_field.jump == (32, 32)
    assert info.layer("fc1").receptive_field is None  # a fully connected layer sees everything
    assert info.macs == 15_470_264_320  # the usual 15.5 G multiply-adds at 224×224
    assert info.total_params == 138_357_544


def test_alexnet_receptive_fields(alexnet):
    info = analyze(alexnet)
    assert info.layer("conv1").receptive_field.size == (11, 11)
    assert info.layer("conv1").receptive_field.jump == (4, 4)
    assert info.layer("conv5").receptive_field.size == (163, 163)
    assert info.layer("pool5").receptive_field.size == (195, 195)
    assert tuple(info.layer("pool5").output_shape) == (None, 6, 6, 256)
