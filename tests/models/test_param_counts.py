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


@pytest.fixture(scope="module")
def resnet50():
    return create_model("resnet50", num_classes=1000, input_shape=(224, 224, 3))


def test_resnet50_parameters(resnet50):
    assert abs(trainable(resnet50) - 25.6e6) / 25.6e6 < 0.005
    assert trainable(resnet50) == 25_557_032  # torchvision's resnet50


def test_resnet50_macs_with_the_papers_head(resnet50):
    # Global average pooling, then FC (the paper's head, `pool_fc`): torchvision's
    # resnet50 lists 4.09 GFLOPS (multiply-adds). The 1×1-convolution `gap` head would
    # add 48 × 2048 × 1000 multiply-adds (4.19 G), with the same parameters.
    info = analyze(resnet50)
    assert info.macs == 4_089_184_256
    assert abs(info.macs - 4.09e9) / 4.09e9 < 0.01
    assert [type(layer).__name__ for layer in resnet50.layers[-2:]] == [
        "GlobalAveragePooling2D", "Dense"]
    assert info.layer("logits").macs == 2048 * 1000


def test_cifar_resnet_head_is_pool_then_fc_and_gap_costs_more_macs():
    # He et al. 2015, Section 4.2: "global average pooling, a 10-way fully-connected layer".
    fc = create_model("resnet20", num_classes=10, input_shape=(32, 32, 3))
    gap = create_model("resnet20", num_classes=10, input_shape=(32, 32, 3), head="gap")
    assert trainable(fc) == trainable(gap) == 269_722
    fc_macs, gap_macs = analyze(fc).macs, analyze(gap).macs
    assert fc_macs == 40_551_040  # 3×3 convolutions 40,550,400 + FC 64 × 10
    assert gap_macs - fc_macs == (8 * 8 - 1) * 64 * 10


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


# ----------------------------------------------------------------------------- compact families
# At 224×224×3 and 1000 classes. Parameter conventions: Keras' count_params() counts four
# numbers per batch-normalization channel (γ, β, moving mean and variance) and
# keras.applications' summaries print that total; torchvision's count (the numel of
# model.parameters()) has γ and β only, which is Keras' *trainable* count. SqueezeNet has
# no batch normalization, so both counts agree.
#
# name, kwargs, trainable (reference), total (Keras), MACs (exact), reference MACs
COMPACT = {
    # torchvision squeezenet1_0: 1,248,424 parameters, 0.82 GFLOPS (= multiply-adds);
    # the paper's Table 1 totals 1,248,424 too.
    "squeezenet1_0": ({}, 1_248_424, 1_248_424, 818_924_576, 0.82e9),
    # torchvision squeezenet1_1: 1,235,496 parameters, 0.35 GFLOPS.
    "squeezenet1_1": ({}, 1_235_496, 1_235_496, 349_151_936, 0.35e9),
    # keras.applications.MobileNet(alpha=1.0): 4,253,864 total, 4,231,976 trainable;
    # Howard et al. 2017, Table 8: 569 million mult-adds, 4.2 million parameters.
    "mobilenet_v1": ({}, 4_231_976, 4_253_864, 568_740_352, 569e6),
    # torchvision mobilenet_v2: 3,504,872 parameters, 0.30 GFLOPS; keras.applications
    # MobileNetV2: 3,538,984 total; Sandler et al. 2018, Table 4: 3.4 M, 300 M MAdds.
    "mobilenet_v2": ({}, 3_504_872, 3_538_984, 300_774_272, 300e6),
}
# torchvision shufflenet_v2_x*: parameters and GFLOPS (multiply-adds, printed to 2 decimals).
SHUFFLENET = {
    "shufflenet_v2_x0_5": (1_366_792, 40_476_448, 0.04),
    "shufflenet_v2_x1_0": (2_278_604, 144_907_992, 0.14),
    "shufflenet_v2_x1_5": (3_503_624, 295_759_392, 0.30),
    "shufflenet_v2_x2_0": (7_393_996, 583_253_464, 0.58),
}
# Ma et al. 2018, Table 5 (MFLOPs = multiply-adds), matched by the authors' layout
# (downsample_widths="official") and rounded up: 40.48, 145.81, 298.97, 590.78 M.
SHUFFLENET_PAPER = {
    "shufflenet_v2_x1_0": (145_814_296, 146),
    "shufflenet_v2_x1_5": (298_970_656, 299),
    "shufflenet_v2_x2_0": (590_783_000, 591),
}


def imagenet_info(name, **kwargs):
    model = create_model(name, num_classes=1000, input_shape=(224, 224, 3), **kwargs)
    return model, analyze(model)


@pytest.mark.parametrize("name", COMPACT)
def test_compact_parameters_and_macs(name):
    kwargs, params, total, macs, reference = COMPACT[name]
    model, info = imagenet_info(name, **kwargs)
    assert info.trainable_params == trainable(model) == params
    assert info.total_params == total
    assert info.macs == macs
    assert abs(macs - reference) / reference < 0.01
    if name.startswith("squeezenet"):
        # Caffe's ceil-mode pooling: 13×13 maps at the end (109/111 → 54/55 → 27 → 13).
        assert tuple(info.layer("fire9_concat").output_shape) == (None, 13, 13, 512)
        assert info.layer("classifier").macs == 13 * 13 * 512 * 1000
    else:
        assert tuple(model.get_layer("avg_pool").input.shape)[1:3] == (7, 7)  # 32× downsampling


@pytest.mark.parametrize("name", SHUFFLENET)
def test_shufflenet_v2_parameters_and_macs(name):
    params, macs, gflops = SHUFFLENET[name]
    model, info = imagenet_info(name)
    assert info.trainable_params == params
    assert info.macs == macs
    assert round(macs / 1e9, 2) == gflops
    assert tuple(info.layer("conv5").output_shape)[1:3] == (7, 7)


@pytest.mark.parametrize("name", SHUFFLENET_PAPER)
def test_shufflenet_v2_official_layout_gives_the_papers_flops(name):
    macs, mflops = SHUFFLENET_PAPER[name]
    _, info = imagenet_info(name, downsample_widths="official")
    assert info.macs == macs
    assert math.ceil(macs / 1e6) == mflops
    assert abs(macs - mflops * 1e6) / (mflops * 1e6) < 0.01
