"""ShuffleNet V2 (Ma, Zhang, Zheng & Sun, 2018): channel split and channel shuffle.

The paper measures speed rather than FLOPs and derives four guidelines: equal
input and output widths minimise memory access (G1), group convolutions cost
memory access (G2), fragmented branches hurt parallelism (G3), element-wise
operations are not free (G4). Its unit follows them:

* stride 1 (Fig. 3c): *channel split* into two halves; one half passes
  unchanged, the other goes through 1×1 conv → 3×3 depthwise conv → 1×1 conv
  (same width throughout, batch normalization after each, ReLU after the 1×1
  ones); the halves are concatenated (no addition) and the channels
  *shuffled* so the next unit's split mixes both branches;
* stride 2 (Fig. 3d): no split; a 3×3/2 depthwise → 1×1 branch and a
  1×1 → 3×3/2 depthwise → 1×1 branch, concatenated (the width doubles),
  shuffled.

Table 5: conv1 3×3/2 (24), 3×3/2 max pooling, stages of 4, 8 and 4 units,
conv5 1×1 (1024; 2048 for 2×), global average pooling, FC. Stage widths:
0.5× 48-96-192, 1× 116-232-464, 1.5× 176-352-704, 2× 244-488-976.

Numbers at 224×224 and 1000 classes (trainable parameters: torchvision counts
batch normalization's γ and β, not its moving statistics):

======  ==============  ================  ==========================
model   trainable       multiply-adds     references
======  ==============  ================  ==========================
x0_5    1,366,792       40.48 M           torchvision 1,366,792 / 0.04 GFLOPS; paper 1.4 M / 41 M
x1_0    2,278,604       144.91 M          torchvision 2,278,604 / 0.14 GFLOPS; paper 2.3 M / 146 M
x1_5    3,503,624       295.76 M          torchvision 3,503,624 / 0.30 GFLOPS; paper 3.5 M / 299 M
x2_0    7,393,996       583.25 M          torchvision 7,393,996 / 0.58 GFLOPS; paper 7.4 M / 591 M
======  ==============  ================  ==========================

The default layout is torchvision's: in a stride-2 unit each branch makes half
the output width. The authors' code (github.com/megvii-model/ShuffleNet-Series)
keeps the input width on the depthwise branch and gives the other branch the
rest; ``downsample_widths="official"`` builds that, whose multiply-adds are the
paper's Table 5 rounded up to the megaflop: 40.48, 145.81, 298.97 and
590.78 M.

Channel shuffle with g groups is a reshape to (h·w, g, c/g), a transpose of
the last two axes and a reshape back; the split is a reshape to (h·w, 2, c/2)
and two croppings. Only Keras ``Reshape``, ``Permute`` and ``Cropping2D``
layers: the model saves and loads as ``.keras`` without custom objects, and
converts to TFLite with builtin ops only (RESHAPE, TRANSPOSE, STRIDED_SLICE,
CONCATENATION), integer kernels included.

Small inputs (``small_input``; auto below 64 px): conv1 at stride 1 and no max
pooling, so the network downsamples 8× instead of 32×.

Reference: N. Ma, X. Zhang, H.-T. Zheng & J. Sun, "ShuffleNet V2: Practical
Guidelines for Efficient CNN Architecture Design", ECCV 2018,
arXiv:1807.11164 (Fig. 3, Table 5).
"""

from __future__ import annotations

from collections.abc import Sequence

from kcnn.models.common import (
    check_choice,
    check_common,
    classifier_model,
    compact_kwargs_check,
    conv_bn_relu,
    depthwise_bn_relu,
    model_inputs,
    pool2d,
    require_batch_norm,
    small_input_mode,
)
from kcnn.models.registry import register_variant

STAGE_REPEATS = (4, 8, 4)
# conv1, the three stages, conv5 (Table 5).
WIDTHS = {
    "x0_5": (24, 48, 96, 192, 1024),
    "x1_0": (24, 116, 232, 464, 1024),
    "x1_5": (24, 176, 352, 704, 1024),
    "x2_0": (24, 244, 488, 976, 2048),
}
DOWNSAMPLE_WIDTHS = ("halves", "official")


def channel_shuffle(x, groups: int, *, name: str):
    """Shuffle the channels of ``x`` (b, h, w, c) across ``groups``: channel ``g·(c/groups) + i``
    moves to ``i·groups + g``. Reshape (h·w, groups, c/groups) → transpose → reshape back."""
    import keras

    h, w, c = x.shape[1:]
    x = keras.layers.Reshape((h * w, groups, c // groups), name=f"{name}_group")(x)
    x = keras.layers.Permute((1, 3, 2), name=f"{name}_transpose")(x)
    return keras.layers.Reshape((h, w, c), name=f"{name}_ungroup")(x)


def channel_split(x, *, name: str):
    """The first and second half of the channels of ``x`` (b, h, w, c), c even."""
    import keras

    h, w, c = x.shape[1:]
    pairs = keras.layers.Reshape((h * w, 2, c // 2), name=f"{name}_halves")(x)
    halves = []
    for part, crop in (("first", (0, 1)), ("second", (1, 0))):
        y = keras.layers.Cropping2D(((0, 0), crop), data_format="channels_last",
                                    name=f"{name}_{part}")(pairs)
        halves.append(keras.layers.Reshape((h, w, c // 2), name=f"{name}_{part}_map")(y))
    return halves


def _branch(x, width: int, out: int, strides: int, *, name: str):
    """1×1 (ReLU) → 3×3 depthwise (``strides``, linear) → 1×1 to ``out`` (ReLU)."""
    x = conv_bn_relu(x, width, 1, batch_norm=True, name=f"{name}_pw1")
    x = depthwise_bn_relu(x, 3, strides=strides, batch_norm=True, activation=None,
                          name=f"{name}_dw")
    return conv_bn_relu(x, out, 1, batch_norm=True, name=f"{name}_pw2")


def shuffle_unit(x, out_channels: int, strides: int, *, name: str,
                 downsample_widths: str = "halves"):
    """One ShuffleNet V2 unit (Fig. 3c for ``strides`` 1, Fig. 3d for 2), shuffle included."""
    import keras

    half = out_channels // 2
    if strides == 1:
        kept, x2 = channel_split(x, name=f"{name}_split")
        parts = [kept, _branch(x2, half, half, 1, name=f"{name}_main")]
    else:
        c_in = x.shape[-1]
        proj = half if downsample_widths == "halves" else c_in
        y = depthwise_bn_relu(x, 3, strides=2, batch_norm=True, activation=None,
                              name=f"{name}_proj_dw")
        y = conv_bn_relu(y, proj, 1, batch_norm=True, name=f"{name}_proj_pw")
        parts = [y, _branch(x, half, out_channels - proj, 2, name=f"{name}_main")]
    x = keras.layers.Concatenate(name=f"{name}_concat")(parts)
    return channel_shuffle(x, 2, name=f"{name}_shuffle")


def _build(variant, *, num_classes, input_shape, downsample_widths, dropout, batch_norm, pooling,
           head, small_input, preprocessing):
    check_common(pooling, head, dropout)
    check_choice(downsample_widths, DOWNSAMPLE_WIDTHS, "downsample_widths")
    require_batch_norm(batch_norm, "shufflenet_v2")
    small = small_input_mode(small_input, input_shape)
    stem, *stages, last = WIDTHS[variant]
    inputs, x = model_inputs(input_shape, preprocessing)
    x = conv_bn_relu(x, stem, 3, strides=1 if small else 2, batch_norm=True, name="conv1")
    if not small:
        x = pool2d(pooling, 3, 2, name="pool1", padding="same")(x)
    for s, (width, repeats) in enumerate(zip(stages, STAGE_REPEATS), start=2):
        for u in range(1, repeats + 1):
            x = shuffle_unit(x, width, 2 if u == 1 else 1, name=f"stage{s}_unit{u}",
                             downsample_widths=downsample_widths)
    x = conv_bn_relu(x, last, 1, batch_norm=True, name="conv5")
    return classifier_model(inputs, x, num_classes, head, name=f"shufflenet_v2_{variant}",
                            dropout=dropout)


_DOC = """ShuffleNet V2 {title}: stage widths {widths}, conv5 {last}.

    {numbers} ``downsample_widths``:
    ``halves`` (torchvision, default) or ``official`` (the authors' code: the
    depthwise branch of a stride-2 unit keeps the input width; Table 5's
    FLOPs). ``small_input`` (``None``: auto, on below 64 px) runs conv1 at
    stride 1 without the max pooling (8× downsampling instead of 32×).
    ``pooling`` swaps the max pooling; ``dropout`` (0) comes before the
    classifier.
    """


def _entrypoint(variant: str, numbers: str):
    def builder(
        num_classes: int = 1000,
        input_shape: Sequence[int] = (224, 224, 3),
        downsample_widths: str = "halves",
        dropout: float = 0.0,
        batch_norm: bool = True,
        pooling: str = "max",
        head: str = "pool_fc",
        small_input: bool | None = None,
        preprocessing=(),
    ):
        return _build(variant, num_classes=num_classes, input_shape=input_shape,
                      downsample_widths=downsample_widths, dropout=dropout,
                      batch_norm=batch_norm, pooling=pooling, head=head,
                      small_input=small_input, preprocessing=preprocessing)

    stem, *stages, last = WIDTHS[variant]
    doc = _DOC.format(title=variant[1:].replace("_", ".") + "×",
                      widths="-".join(map(str, stages)), last=last, numbers=numbers)
    builder.check_kwargs = compact_kwargs_check(
        "shufflenet_v2", batch_norm_required=True,
        choices={"downsample_widths": DOWNSAMPLE_WIDTHS})
    return register_variant(builder, f"shufflenet_v2_{variant}", doc)


shufflenet_v2_x0_5 = _entrypoint(
    "x0_5", "At 224×224 and 1000 classes: 1,366,792 trainable parameters, 40.5 M "
    "multiply-adds (torchvision 1,366,792, 0.04 GFLOPS; paper 1.4 M, 41 M).")
shufflenet_v2_x1_0 = _entrypoint(
    "x1_0", "At 224×224 and 1000 classes: 2,278,604 trainable parameters, 144.9 M "
    "multiply-adds (torchvision 2,278,604, 0.14 GFLOPS; paper 2.3 M, 146 M).")
shufflenet_v2_x1_5 = _entrypoint(
    "x1_5", "At 224×224 and 1000 classes: 3,503,624 trainable parameters, 295.8 M "
    "multiply-adds (torchvision 3,503,624, 0.30 GFLOPS; paper 3.5 M, 299 M).")
shufflenet_v2_x2_0 = _entrypoint(
    "x2_0", "At 224×224 and 1000 classes: 7,393,996 trainable parameters, 583.3 M "
    "multiply-adds (torchvision 7,393,996, 0.58 GFLOPS; paper 7.4 M, 591 M).")
