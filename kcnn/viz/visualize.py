"""What a trained network has learned, as PNG files (``kcnn visualize``).

* :func:`plot_filters` — the kernels of a convolution: the first layer's as
  images (colours for RGB input), a deeper layer's as the mean over its input
  channels (blue negative, red positive).
* :func:`plot_feature_maps` — a layer's activation maps for one image.
* :func:`plot_saliency` — |∂ score / ∂ pixel| for the predicted class
  (Simonyan et al., 2014), through :func:`kcnn.backend.class_score_gradient`.
* :func:`plot_top_patches` — for a layer's channels, the image patches (cut
  by the layer's receptive field) that excite each channel most: shallow
  layers answer to short edges and strokes, deep ones to larger parts (loops,
  corners, whole strokes), the book's point about feature hierarchies.

Images are fed raw: the model holds its own rescaling and standardization.
For a digits run, whose pixels are 0–16, an 8-bit image's 0–255 is mapped
onto 0–16 first (bright = ink, as in the data set).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kcnn.errors import KcnnError  # noqa: E402
from kcnn.viz.plots import save_figure as _save  # noqa: E402


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


# ----------------------------------------------------------------------------- layers
def find_layer(model, name: str):
    """A layer by name, with a did-you-mean error."""
    from kcnn.registry import did_you_mean

    for layer in model.layers:
        if layer.name == name:
            return layer
    names = [layer.name for layer in model.layers]
    raise KcnnError(f"no layer {name!r} in model {model.name!r}{did_you_mean(name, names)}; "
                    f"layers: {', '.join(names)}")


def conv_kernel(layer) -> np.ndarray | None:
    """The (kh, kw, in, out) kernel of a convolution-like layer, else ``None``.

    Composite kcnn layers give their first convolution's kernel (MLPConv2D,
    ResidualBlock) or their transform kernel (HighwayConv2D).
    """
    from keras import ops

    convs = getattr(layer, "convs", None)
    if convs:
        return conv_kernel(convs[0])
    kernel = getattr(layer, "kernel", None)
    if kernel is None or len(kernel.shape) != 4:
        return None
    return np.asarray(ops.convert_to_numpy(kernel), dtype="float32")


def conv_layers(model) -> list:
    return [layer for layer in model.layers if conv_kernel(layer) is not None]


def first_conv(model):
    layers = conv_layers(model)
    if not layers:
        raise KcnnError(f"model {model.name!r} has no convolution layer")
    return layers[0]


def _grid(n: int) -> tuple[int, int]:
    cols = max(1, math.ceil(math.sqrt(n)))
    return math.ceil(n / cols), cols


def _figure(n: int, tile: float = 0.9):
    rows, cols = _grid(n)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * tile + 0.4, rows * tile + 0.8),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    return fig, axes.ravel()


# ----------------------------------------------------------------------------- filters
def filter_images(kernel: np.ndarray, first: bool) -> tuple[np.ndarray, str]:
    """Tiles (out, kh, kw[, 3]) to draw and the mode: ``rgb``, ``gray`` or ``mean``."""
    k = np.moveaxis(kernel, -1, 0)  # (out, kh, kw, in)
    if first and k.shape[-1] == 3:
        lo = k.min(axis=(1, 2, 3), keepdims=True)
        hi = k.max(axis=(1, 2, 3), keepdims=True)
        return (k - lo) / np.maximum(hi - lo, 1e-12), "rgb"
    if first and k.shape[-1] == 1:
        return k[..., 0], "gray"
    return k.mean(axis=-1), "mean"


def plot_filters(model, layer_name: str | None, path: Path, max_filters: int = 256
                 ) -> dict[str, Any]:
    """A grid of a convolution's kernels (``layer_name`` None or ``first``: the first one)."""
    layer = first_conv(model) if layer_name in (None, "first") else find_layer(model, layer_name)
    kernel = conv_kernel(layer)
    if kernel is None:
        raise KcnnError(f"layer {layer.name!r} ({type(layer).__name__}) has no convolution "
                        f"kernel to draw")
    is_first = layer is first_conv(model)
    tiles, mode = filter_images(kernel, is_first)
    tiles = tiles[:max_filters]
    fig, axes = _figure(len(tiles))
    bound = float(np.abs(tiles).max()) or 1.0
    for ax, tile in zip(axes, tiles):
        if mode == "rgb":
            ax.imshow(tile, interpolation="nearest")
        elif mode == "gray":
            ax.imshow(tile, cmap="gray", interpolation="nearest")
        else:
            ax.imshow(tile, cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest")
    kh, kw, cin, cout = kernel.shape
    what = {"rgb": "RGB", "gray": "grey levels",
            "mean": f"mean over {cin} input channels (blue < 0 < red)"}[mode]
    fig.suptitle(f"{layer.name}: {cout} filters {kh}×{kw}×{cin} — {what}", fontsize=9)
    _save(fig, path)
    return {"path": path, "layer": layer.name, "mode": mode, "tiles": tiles}


# ----------------------------------------------------------------------------- images
def load_image(path: str | Path, input_shape: Sequence[int], scale: float = 1.0) -> np.ndarray:
    """An image file as a (1, H, W, C) float32 batch at the model's input size."""
    import keras

    path = Path(path)
    if not path.is_file():
        raise KcnnError(f"{path}: image not found")
    h, w, c = input_shape
    try:
        img = keras.utils.load_img(path, color_mode="grayscale" if c == 1 else "rgb",
                                   target_size=(h, w), interpolation="bilinear")
    except Exception as err:
        raise KcnnError(f"{path}: unreadable image ({type(err).__name__}: {err})") from None
    x = np.asarray(keras.utils.img_to_array(img), dtype="float32")
    return (x * scale)[None]


def _show(ax, image: np.ndarray):
    img = image[..., 0] if image.shape[-1] == 1 else image / max(float(image.max()), 1e-12)
    ax.imshow(img, cmap="gray" if image.shape[-1] == 1 else None, interpolation="nearest")


def layer_output(model, layer_name: str, x: np.ndarray) -> np.ndarray:
    import keras

    layer = find_layer(model, layer_name)
    sub = keras.Model(model.inputs[0] if len(model.inputs) == 1 else model.inputs, layer.output)
    return np.asarray(sub.predict(x, verbose=0))


def plot_feature_maps(model, image: np.ndarray, layer_name: str, path: Path,
                      max_maps: int = 64) -> dict[str, Any]:
    """The input image and up to ``max_maps`` activation maps of ``layer_name``."""
    maps = layer_output(model, layer_name, image)
    if maps.ndim != 4:
        raise KcnnError(f"layer {layer_name!r} outputs shape {maps.shape[1:]}, not a feature map")
    maps = maps[0]
    shown = np.moveaxis(maps, -1, 0)[:max_maps]
    fig, axes = _figure(len(shown) + 1)
    _show(axes[0], image[0])
    axes[0].set_title("input", fontsize=7)
    # One colour scale for every map, so maps compare with each other and the bar reads.
    lo, hi = float(np.min(shown)), float(np.max(shown))
    hi = hi if hi > lo else lo + 1.0
    im = None
    for i, (ax, fmap) in enumerate(zip(axes[1:], shown)):
        im = ax.imshow(fmap, cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(str(i), fontsize=6)
    _colorbar(fig, im, axes, "activation")
    fig.suptitle(f"{layer_name}: {maps.shape[-1]} maps {maps.shape[0]}×{maps.shape[1]}"
                 + (f" (first {max_maps})" if maps.shape[-1] > max_maps else "")
                 + ", one colour scale", fontsize=9)
    _save(fig, path)
    return {"path": path, "layer": layer_name, "maps": maps}


def _colorbar(fig, image, axes, label: str) -> None:
    """A slim colour bar for ``image``'s scale, beside ``axes``."""
    if image is None:
        return
    bar = fig.colorbar(image, ax=list(np.ravel(axes)), fraction=0.035, pad=0.03, shrink=0.9)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=6)


# ----------------------------------------------------------------------------- saliency
def saliency(model, image: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(predicted class, |gradient| max over channels (H, W), logits) for one image."""
    from kcnn.backend import class_score_gradient

    scores, grad = class_score_gradient(model, image)
    predicted = int(np.argmax(scores[0]))
    return predicted, np.abs(grad[0]).max(axis=-1), scores[0]


def plot_saliency(model, image: np.ndarray, path: Path, class_names: Sequence[str] | None = None
                  ) -> dict[str, Any]:
    predicted, sal, scores = saliency(model, image)
    label = class_names[predicted] if class_names and predicted < len(class_names) else predicted
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8))
    for ax in axes:
        ax.axis("off")
    _show(axes[0], image[0])
    axes[0].set_title("input", fontsize=8)
    vmax = float(sal.max()) or 1.0
    im = axes[1].imshow(sal, cmap="hot", vmin=0, vmax=vmax, interpolation="nearest")
    axes[1].set_title("|∂ score / ∂ pixel|", fontsize=8)
    _show(axes[2], image[0])
    axes[2].imshow(sal, cmap="hot", vmin=0, vmax=vmax, alpha=0.55, interpolation="bilinear")
    axes[2].set_title("overlay", fontsize=8)
    _colorbar(fig, im, axes, "|gradient| (max over channels)")
    fig.suptitle(f"saliency for the predicted class {label}", fontsize=9)
    _save(fig, path)
    return {"path": path, "predicted": predicted, "saliency": sal, "scores": scores}


# ----------------------------------------------------------------------------- top patches
_OUTSIDE = "#4a78b5"  # colour of a patch's part that lies outside the image

def top_patches(model, layer_name: str, images: np.ndarray, per_channel: int = 8,
                channels: int = 16) -> dict[str, Any]:
    """For the ``channels`` most active channels of a layer, the ``per_channel`` image
    patches (one per image, cut by the receptive field) where each fires most."""
    from kcnn.models.info import analyze

    row = next((r for r in analyze(model).layers if r.name == layer_name), None)
    if row is None:
        find_layer(model, layer_name)  # raises with a did-you-mean
    rf = row.receptive_field
    if rf is None:
        raise KcnnError(f"layer {layer_name!r} has no local receptive field (it sees the "
                        f"whole image)")
    acts = layer_output(model, layer_name, images)  # (N, h, w, c)
    n, h, w, c = acts.shape
    peak = acts.reshape(n, -1, c).max(axis=1)  # (N, c): each image's strongest response
    order = np.argsort(-peak.max(axis=0))[:channels]
    size = rf.size
    pad = max(size) + 1
    # Outside the image is NaN, drawn in its own colour (it is the zero padding).
    padded = np.pad(images.astype("float32"), ((0, 0), (pad, pad), (pad, pad), (0, 0)),
                    constant_values=np.nan)
    patches = np.zeros((len(order), per_channel, size[0], size[1], images.shape[-1]), "float32")
    for row_i, ch in enumerate(order):
        best_images = np.argsort(-peak[:, ch])[:per_channel]
        for col, img in enumerate(best_images):
            pos = int(np.argmax(acts[img, :, :, ch]))
            i, j = divmod(pos, w)
            top = int(round(rf.start[0] + i * rf.jump[0] - (size[0] - 1) / 2)) + pad
            left = int(round(rf.start[1] + j * rf.jump[1] - (size[1] - 1) / 2)) + pad
            patches[row_i, col] = padded[img, top:top + size[0], left:left + size[1]]
    return {"channels": order, "patches": patches, "receptive_field": rf, "num_channels": c,
            "num_images": n}


def plot_top_patches(model, layer_name: str, images: np.ndarray, path: Path,
                     per_channel: int = 8, channels: int = 16) -> dict[str, Any]:
    found = top_patches(model, layer_name, images, per_channel, channels)
    patches = found["patches"]
    rows, cols = patches.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.75 + 0.8, rows * 0.75 + 0.8),
                             squeeze=False)
    vmax = float(images.max()) or 1.0
    gray = matplotlib.colormaps["gray"].with_extremes(bad=_OUTSIDE)
    for r in range(rows):
        for col in range(cols):
            ax = axes[r, col]
            ax.axis("off")
            patch = patches[r, col]
            if patch.shape[-1] == 1:
                ax.imshow(np.ma.masked_invalid(patch[..., 0]), cmap=gray, vmin=0, vmax=vmax,
                          interpolation="nearest")
            else:
                rgb = np.clip(patch / vmax, 0, 1)
                rgb[np.isnan(patch).any(axis=-1)] = matplotlib.colors.to_rgb(_OUTSIDE)
                ax.imshow(rgb, interpolation="nearest")
        axes[r, 0].text(-0.15, 0.5, f"ch {found['channels'][r]}", transform=axes[r, 0].transAxes,
                        ha="right", va="center", fontsize=7)
    size = found["receptive_field"].size
    total = found["num_channels"]
    picked = (f"all {total} channels" if rows == total else
              f"{rows} of {total} channels: the strongest peak responses")
    height = fig.get_size_inches()[1]
    fig.subplots_adjust(top=1 - 0.75 / height)
    fig.suptitle(f"{layer_name}: the image patches ({size[0]}×{size[1]}, the receptive field) "
                 f"that excite a channel most\n{picked} over {found['num_images']} test images, "
                 f"strongest first\neach row: the channel's {cols} best images "
                 f"(blue: outside the image)", fontsize=8)
    _save(fig, path)
    return {"path": path, **found}


# ----------------------------------------------------------------------------- run dirs
def _run_context(target: Path):
    """(model, run dir or None, recipe or None, class names or None)."""
    from kcnn.saving import read_class_names, resolve

    ref = resolve(target, kinds=("run", "keras"))
    if ref.kind != "run":
        return ref.load_model(), None, None, None
    return ref.load_model(), ref.run, ref.load_recipe(), read_class_names(ref.run)


def pixel_scale(recipe) -> float:
    """Factor from an 8-bit image to the training data's raw range (digits: 0–16)."""
    if recipe is not None and recipe.data.source.type == "digits":
        return 16.0 / 255.0
    return 1.0


def visualize(target: str | Path, *, filters: Sequence[str] = (), feature_maps: str | None = None,
              layers: Sequence[str] = (), saliency_image: str | None = None,
              patches: Sequence[str] = (), deconv: Sequence[str] = (), channels: int = 9,
              top: int = 9, guided: bool = False, out: str | Path | None = None) -> list[Path]:
    """Write the requested PNGs for a run (or a ``.keras`` file); returns their paths.

    ``deconv``: deconvnet projections (:mod:`kcnn.viz.deconv`) of the ``top`` strongest
    activations of each layer's ``channels`` most active channels (``guided``: guided
    backprop instead).

    With no request at all, draws the first convolution's filters.
    """
    target = Path(target)
    if feature_maps and not layers:
        raise KcnnError("--feature-maps needs --layer LAYER (one or more)")
    if layers and not feature_maps:
        raise KcnnError("--layer goes with --feature-maps IMAGE")
    from kcnn.viz.deconv import check_options as check_deconv
    check_deconv(deconv, channels, top, guided)
    model, run, recipe, names = _run_context(target)
    out_dir = Path(out) if out else (run.plots if run else target.parent / "plots")
    if not (filters or feature_maps or saliency_image or patches or deconv):
        filters = ["first"]
    written = []
    for name in filters:
        layer = first_conv(model).name if name == "first" else name
        written.append(plot_filters(model, layer, out_dir / f"filters_{_safe(layer)}.png")["path"])
    shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        if feature_maps or saliency_image or patches:
            raise KcnnError(f"model input {shape} has no fixed size to resize images to")
    scale = pixel_scale(recipe)
    if feature_maps:
        image = load_image(feature_maps, shape, scale)
        stem = _safe(Path(feature_maps).stem)
        for name in layers:
            written.append(plot_feature_maps(
                model, image, name, out_dir / f"feature_maps_{_safe(name)}_{stem}.png")["path"])
    if saliency_image:
        image = load_image(saliency_image, shape, scale)
        stem = _safe(Path(saliency_image).stem)
        written.append(plot_saliency(model, image, out_dir / f"saliency_{stem}.png",
                                     names)["path"])
    if patches:
        if recipe is None:
            raise KcnnError("--patches needs a run directory (its recipe gives the images)")
        from kcnn.data.sources import load_dataset

        data = load_dataset(recipe.data)
        images = data.test.images(np.arange(min(500, len(data.test)))).astype("float32")
        for name in patches:
            written.append(plot_top_patches(model, name, images,
                                            out_dir / f"patches_{_safe(name)}.png")["path"])
    if deconv:
        from kcnn.viz.deconv import deconv_run
        written += deconv_run(model, recipe, deconv, out_dir, channels=channels, top=top,
                              guided=guided)
    return written
