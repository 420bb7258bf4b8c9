"""SqueezeNet (Iandola, Han, Moskewicz, Ashraf, Dally & Keutzer, 2016): AlexNet-level accuracy
with 50× fewer parameters.

The building block is the Fire module: a 1×1 "squeeze" convolution to few
channels (s), then an "expand" layer of 1×1 and 3×3 convolutions (e each)
whose outputs are concatenated (2e channels), all followed by ReLU. Three
design strategies: replace 3×3 filters by 1×1 ones, cut the input channels
of the 3×3 filters (the squeeze layer), and downsample late so the
convolutions work on large maps. There is no fully connected layer: after
dropout 0.5 a 1×1 convolution (conv10) with ReLU maps to the classes and
global average pooling gives the scores (``head: gap``).

* ``squeezenet1_0``: the paper's Table 1. conv1 7×7/2 (96), 3×3/2 max pooling
  after conv1, fire4 and fire8. 1,248,424 parameters at 1000 classes (Table 1
  total; torchvision ``squeezenet1_0``: 1,248,424) and 818.9 M multiply-adds
  at 224×224 (torchvision lists 0.82 GFLOPS, its FLOPs being multiply-adds).
* ``squeezenet1_1``: the authors' v1.1 (github.com/forresti/SqueezeNet,
  "2.4x less computation than SqueezeNet 1.0, without sacrificing
  accuracy"): conv1 3×3/2 (64), pooling after conv1, fire3 and fire5.
  1,235,496 parameters and 349.2 M multiply-adds (torchvision: 1,235,496,
  0.35 GFLOPS).

The max poolings use Caffe's (and torchvision's) ``ceil_mode``: at 224×224 the
maps are 109 → 54 → 27 → 13 (1.0) or 111 → 55 → 27 → 13 (1.1). A 3×3/2 window
with ceil mode is ``same`` padding on an even side and ``valid`` on an odd one
(exact for square maps; a non-square map with one odd and one even side uses
``valid``).

Small inputs (``small_input``; auto below 64 px): conv1 runs at stride 1 with
``same`` padding and the pooling after it is left out, so the network
downsamples 4× instead of 16× (16×16 digits end on 4×4 maps). The weights are
the same, so are the parameter counts.

Reference: F. N. Iandola et al., "SqueezeNet: AlexNet-level accuracy with 50x
fewer parameters and <0.5MB model size", arXiv:1602.07360, 2016 (Table 1,
Fig. 2).
"""

from __future__ import annotations

from collections.abc import Sequence

from kcnn.models.common import (
    check_common,
    check_positive,
    classifier_model,
    compact_kwargs_check,
    conv_bn_relu,
    model_inputs,
    pool2d,
    scaled,
    small_input_mode,
    spatial_size,
)
from kcnn.models.registry import register_variant

# conv1 (filters, kernel); then the Fire modules (squeeze, expand) in order, "pool" marking
# a 3×3/2 max pooling. conv1 is always followed by a pooling layer.
CONFIGS = {
    "1_0": ((96, 7), [(16, 64), (16, 64), (32, 128), "pool", (32, 128), (48, 192), (48, 192),
                      (64, 256), "pool", (64, 256)]),
    "1_1": ((64, 3), [(16, 64), (16, 64), "pool", (32, 128), (32, 128), "pool", (48, 192),
                      (48, 192), (64, 256), (64, 256)]),
}


def fire(x, squeeze: int, expand: int, *, batch_norm: bool, name: str):
    """Fire module: 1×1 squeeze (``squeeze``) → [1×1 expand, 3×3 expand] (``expand`` each),
    concatenated to ``2·expand`` channels; ReLU after every convolution."""
    import keras

    s = conv_bn_relu(x, squeeze, 1, batch_norm=batch_norm, name=f"{name}_squeeze")
    e1 = conv_bn_relu(s, expand, 1, batch_norm=batch_norm, name=f"{name}_expand1x1")
    e3 = conv_bn_relu(s, expand, 3, batch_norm=batch_norm, name=f"{name}_expand3x3")
    return keras.layers.Concatenate(name=f"{name}_concat")([e1, e3])


def ceil_mode_pool(x, kind: str, *, name: str):
    """3×3/2 pooling with ``ceil_mode`` output sizes: ``same`` on even sides, else ``valid``."""
    h, w = spatial_size(x)
    even = h is not None and w is not None and h % 2 == 0 and w % 2 == 0
    if not even and any(d is not None and d < 3 for d in (h, w)):
        return x  # a valid 3×3 window no longer fits: leave the pooling out
    return pool2d(kind, 3, 2, name=name, padding="same" if even else "valid")(x)


def _build(version, *, num_classes, input_shape, width, dropout, batch_norm, pooling, head,
           small_input, preprocessing):
    check_common(pooling, head, dropout)
    check_positive(width, "width")
    small = small_input_mode(small_input, input_shape)
    (stem_filters, stem_kernel), plan = CONFIGS[version]
    inputs, x = model_inputs(input_shape, preprocessing)
    x = conv_bn_relu(x, scaled(stem_filters, width), stem_kernel, strides=1 if small else 2,
                     padding="same" if small else "valid", batch_norm=batch_norm, name="conv1")
    if not small:
        x = ceil_mode_pool(x, pooling, name="pool1")
    index, pools = 2, 1
    for item in plan:
        if item == "pool":
            pools += 1
            x = ceil_mode_pool(x, pooling, name=f"pool{pools}")
            continue
        squeeze, expand = item
        x = fire(x, scaled(squeeze, width), scaled(expand, width), batch_norm=batch_norm,
                 name=f"fire{index}")
        index += 1
    return classifier_model(inputs, x, num_classes, head, name=f"squeezenet{version}",
                            dropout=dropout, gap_activation="relu" if head == "gap" else None)


_DOC = """SqueezeNet {title}: {summary}

    {numbers}

    ``width`` multiplies every convolution's width (1.0: the paper's).
    ``dropout`` (0.5) comes before the classifier. ``batch_norm`` (not in the
    paper) adds batch normalization after every convolution, which then has no
    bias. ``head: gap`` (default) is the paper's conv10 (1×1 to the classes,
    ReLU) and global average pooling; the other heads replace it.
    ``small_input`` (``None``: auto, on below 64 px) keeps conv1 at stride 1
    and leaves out the pooling after it. ``pooling`` swaps the max poolings.
    """


def _entrypoint(version: str, title: str, summary: str, numbers: str):
    def builder(
        num_classes: int = 1000,
        input_shape: Sequence[int] = (224, 224, 3),
        width: float = 1.0,
        dropout: float = 0.5,
        batch_norm: bool = False,
        pooling: str = "max",
        head: str = "gap",
        small_input: bool | None = None,
        preprocessing=(),
    ):
        return _build(version, num_classes=num_classes, input_shape=input_shape, width=width,
                      dropout=dropout, batch_norm=batch_norm, pooling=pooling, head=head,
                      small_input=small_input, preprocessing=preprocessing)

    doc = _DOC.format(title=title, summary=summary, numbers=numbers)
    builder.check_kwargs = compact_kwargs_check(f"squeezenet{version}", positive=("width",))
    return register_variant(builder, f"squeezenet{version}", doc)


squeezenet1_0 = _entrypoint(
    "1_0", "1.0", "conv1 7×7/2 (96) and eight Fire modules, pooling after conv1, fire4, fire8.",
    "1,248,424 parameters and 818.9 M multiply-adds at 224×224, 1000 classes (paper Table 1; "
    "torchvision 1,248,424 / 0.82 GFLOPS).")
squeezenet1_1 = _entrypoint(
    "1_1", "1.1", "conv1 3×3/2 (64), pooling after conv1, fire3, fire5 (2.4× less computation).",
    "1,235,496 parameters and 349.2 M multiply-adds at 224×224, 1000 classes (torchvision "
    "1,235,496 / 0.35 GFLOPS).")
