"""Deconvnet projections of single activations back to pixel space (``kcnn visualize --deconv``).

Zeiler & Fergus (2014), "Visualizing and Understanding Convolutional Networks": to see
what one activation of a deep layer answers to, keep only that activation (zero every
other value of the layer's output) and send it back down to the pixels through a
*deconvnet* attached to the network, layer by layer:

* max pooling → **unpooling with switches**: each value goes back to the position that
  held its window's maximum on the forward pass (the *switch*, recorded per image);
* ReLU → **ReLU**: the reconstruction is rectified;
* convolution → **transposed filters**: the same kernels flipped and with input and
  output channels swapped, biases ignored.

Read as calculus, this is back-propagation of the kept activation, except at the
ReLUs: back-propagation masks the signal by where the *forward input* was positive,
the deconvnet rectifies the *signal*, and guided back-propagation (Springenberg et al.,
2015, "Striving for Simplicity: The All Convolutional Net", ``--guided``) does both.
(Unpooling with switches is exactly max pooling's gradient; transposed filters are
exactly a convolution's input gradient.)

The backward pass is written out per layer in NumPy — one small function per step of
the paper, checked by the tests against hand computations and against the adjoint
identity ``<conv(x), g> = <x, convᵀ(g)>`` — rather than hidden in a patched
``GradientTape``: each step is visible, it runs on every Keras backend, and a layer
the deconvnet has no rule for is refused by name instead of silently
back-propagated. The forward pass calls the model's own layers in inference mode and
keeps each layer's input and output (the switches and the guided mask).

==========================  ==========================================================
layer on the path           backward map of the signal ``g``
==========================  ==========================================================
Conv2D                      transposed filters (with ``activation="relu"``: a ReLU first)
MaxPooling2D                unpooling with switches
AveragePooling2D            each value spread evenly over the cells of its window
ReLU, Activation("relu")    deconvnet ``relu(g)``; guided ``relu(g) · [forward > 0]``
BatchNormalization          ``g · γ / √(σ² + ε)`` (inference statistics)
Dropout (and its kin)       identity (inference mode)
Rescaling                   ``g / scale``          } at the input: units undone
Normalization               ``g · √σ²``            }
==========================  ==========================================================

Two choices the paper does not make for us:

* **Batch normalization** in inference mode is the per-channel affine map
  ``γ (x − μ) / √(σ² + ε) + β``. The deconvnet runs its linear part backwards,
  ``γ / √(σ² + ε)`` per channel (a diagonal map is its own transpose), and drops the
  shift as it drops a convolution's bias — the projection is what the paper's deconvnet
  gives for the same network with each batch norm folded into its convolution.
* **Input preprocessing** (``Rescaling``, ``Normalization``) is a change of units, not a
  learned feature. The reconstruction reaches the network's input in those units and is
  taken back to the raw pixel units of the image patch drawn beside it by *inverting*
  the scale (``/ scale``, ``· std``); offsets are dropped (a reconstruction is a
  pattern, not an absolute image). With one scale for all channels this changes only
  the magnitude, which the drawing normalizes away; for colour images it keeps the
  channel balance of the raw image.

Any other layer between the input and the chosen one (another activation, LRN,
stochastic or Lp pooling, a merge such as ``Add``, a nested model) raises one
:class:`~kcnn.errors.KcnnError` naming it.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import PatchCollection  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from kcnn.errors import KcnnError  # noqa: E402
from kcnn.viz.plots import save_figure  # noqa: E402

MODES = ("deconvnet", "guided")
MAX_IMAGES = 500  # test images searched for the strongest activations (as --patches)
OUTSIDE = "#4a78b5"  # colour of a patch's part that lies outside the image
SUPPORTED = ("Conv2D, MaxPooling2D, AveragePooling2D, ReLU, Activation('relu'), "
             "BatchNormalization, Dropout, Rescaling, Normalization")


# ----------------------------------------------------------------------------- the steps
def same_pad_before(length: int, window: int, stride: int, padding: str) -> int:
    """Zero padding before the first window (TensorFlow's and JAX's ``same``: the smaller
    half before); 0 for ``valid``."""
    if padding == "valid":
        return 0
    out = -(-length // stride)
    return max((out - 1) * stride + window - length, 0) // 2


def _window_offsets(out_hw, window, strides, dilation=(1, 1)):
    """For each window cell (a, b): the slices of the padded input that cell sees over
    all output positions (one strided slice per axis)."""
    (h, w), (kh, kw), (sh, sw), (dh, dw) = out_hw, window, strides, dilation
    for a in range(kh):
        for b in range(kw):
            yield a, b, (slice(a * dh, a * dh + (h - 1) * sh + 1, sh),
                         slice(b * dw, b * dw + (w - 1) * sw + 1, sw))


def _padded_size(length, out, window, stride, before):
    return max(before + length, (out - 1) * stride + window)


def conv_transpose(g: np.ndarray, kernel: np.ndarray, input_hw: Sequence[int],
                   strides=(1, 1), padding: str = "valid", dilation=(1, 1)) -> np.ndarray:
    """Transposed filters: the input gradient of a 2-D cross-correlation (what Keras'
    ``Conv2D`` computes, bias aside).

    ``g`` (B, h, w, out), ``kernel`` (kh, kw, in, out) → (B, H, W, in). Every output
    value spreads back over its window, weighted by the kernel — for one nonzero value,
    the kernel itself (each input channel's slice) placed over that value's window.
    """
    (H, W), (kh, kw) = input_hw, kernel.shape[:2]
    _, h, w, _ = g.shape
    eff = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
    top = same_pad_before(H, eff[0], strides[0], padding)
    left = same_pad_before(W, eff[1], strides[1], padding)
    out = np.zeros((g.shape[0], _padded_size(H, h, eff[0], strides[0], top),
                    _padded_size(W, w, eff[1], strides[1], left), kernel.shape[2]), "float32")
    for a, b, (rows, cols) in _window_offsets((h, w), (kh, kw), strides, dilation):
        out[:, rows, cols, :] += g @ kernel[a, b].T
    return out[:, top:top + H, left:left + W, :]


def unpool_max(g: np.ndarray, x: np.ndarray, pool_size, strides, padding: str) -> np.ndarray:
    """Unpooling with switches: each pooled value goes back to where its window's maximum
    was in the forward input ``x`` (the first one on a tie); everything else is zero."""
    (B, H, W, C), (_, h, w, _) = x.shape, g.shape
    top = same_pad_before(H, pool_size[0], strides[0], padding)
    left = same_pad_before(W, pool_size[1], strides[1], padding)
    shape = (B, _padded_size(H, h, pool_size[0], strides[0], top),
             _padded_size(W, w, pool_size[1], strides[1], left), C)
    padded = np.full(shape, -np.inf, "float32")  # padding never wins a window
    padded[:, top:top + H, left:left + W] = x
    cells = list(_window_offsets((h, w), pool_size, strides))
    switches = np.stack([padded[:, r, c] for _, _, (r, c) in cells]).argmax(axis=0)
    out = np.zeros(shape, "float32")
    for k, (_, _, (rows, cols)) in enumerate(cells):
        out[:, rows, cols] += np.where(switches == k, g, 0.0)
    return out[:, top:top + H, left:left + W]


def unpool_average(g: np.ndarray, input_hw: Sequence[int], pool_size, strides,
                   padding: str) -> np.ndarray:
    """Average pooling backwards: each value spread evenly over the image cells of its
    window (``same`` windows at the border count only their cells inside the image)."""
    (H, W), (B, h, w, C) = input_hw, g.shape
    top = same_pad_before(H, pool_size[0], strides[0], padding)
    left = same_pad_before(W, pool_size[1], strides[1], padding)
    shape = (_padded_size(H, h, pool_size[0], strides[0], top),
             _padded_size(W, w, pool_size[1], strides[1], left))
    inside = np.zeros(shape, "float32")
    inside[top:top + H, left:left + W] = 1.0
    cells = list(_window_offsets((h, w), pool_size, strides))
    counts = sum(inside[r, c] for _, _, (r, c) in cells)
    share = g / np.maximum(counts, 1.0)[None, :, :, None]
    out = np.zeros((B, *shape, C), "float32")
    for _, _, (rows, cols) in cells:
        out[:, rows, cols] += share
    return out[:, top:top + H, left:left + W]


def relu_backward(g: np.ndarray, forward: np.ndarray, mode: str) -> np.ndarray:
    """Deconvnet: rectify the signal. Guided: rectify it and keep it only where the
    forward activation was positive."""
    out = np.maximum(g, 0.0)
    return out * (forward > 0) if mode == "guided" else out


# ----------------------------------------------------------------------------- per layer
Rule = Callable[[Any, np.ndarray, np.ndarray, np.ndarray, str], np.ndarray]


def _numpy(value) -> np.ndarray:
    from keras import ops

    return np.asarray(ops.convert_to_numpy(value), dtype="float32")


def _conv(layer, x, y, g, mode):
    if _activation(layer.activation) == "relu":
        g = relu_backward(g, y, mode)
    return conv_transpose(g, _numpy(layer.kernel), x.shape[1:3], layer.strides, layer.padding,
                          layer.dilation_rate)


def _max_pool(layer, x, y, g, mode):
    return unpool_max(g, x, layer.pool_size, layer.strides, layer.padding)


def _average_pool(layer, x, y, g, mode):
    return unpool_average(g, x.shape[1:3], layer.pool_size, layer.strides, layer.padding)


def _relu(layer, x, y, g, mode):
    return relu_backward(g, y, mode)


def _identity(layer, x, y, g, mode):
    return g


def _batch_norm(layer, x, y, g, mode):
    scale = 1.0 / np.sqrt(_numpy(layer.moving_variance) + layer.epsilon)
    if layer.scale:
        scale = scale * _numpy(layer.gamma)
    return g * scale


def _rescaling(layer, x, y, g, mode):
    scale = np.asarray(layer.scale, dtype="float32").reshape(-1)
    return g / np.where(scale == 0, 1.0, scale)


def _normalization(layer, x, y, g, mode):
    import keras

    std = np.maximum(np.sqrt(_numpy(layer.variance)), keras.backend.epsilon())
    return g * std.reshape(-1)


def _activation(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__) if fn is not None else "linear"


def _rule(layer, target: str) -> Rule:
    """The deconvnet step of one layer on the path, or a KcnnError naming the layer."""
    import keras

    L, kind = keras.layers, type(layer)
    why = ""
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        why = " (only channels_last)"
    elif kind is L.Conv2D:
        if layer.groups != 1:
            why = f" (groups={layer.groups})"
        elif _activation(layer.activation) in ("linear", "relu"):
            return _conv
        else:
            why = f" (activation {_activation(layer.activation)!r})"
    elif kind is L.MaxPooling2D:
        return _max_pool
    elif kind is L.AveragePooling2D:
        return _average_pool
    elif kind is L.ReLU:
        if layer.max_value is None and not layer.negative_slope and not layer.threshold:
            return _relu
        why = " (only a plain ReLU: no max_value, negative_slope or threshold)"
    elif kind is L.Activation:
        name = _activation(layer.activation)
        if name in ("relu", "linear"):
            return _relu if name == "relu" else _identity
        why = f" (activation {name!r})"
    elif kind is L.BatchNormalization:
        if layer.axis in (-1, 3):
            return _batch_norm
        why = f" (axis={layer.axis})"
    elif isinstance(layer, L.Dropout) or kind in (L.GaussianDropout, L.GaussianNoise):
        return _identity
    elif kind is L.Rescaling:
        return _rescaling
    elif kind is L.Normalization:
        if not layer.invert and tuple(layer.axis) in ((-1,), (3,)):
            return _normalization
        why = " (only per-channel standardization)"
    raise KcnnError(f"--deconv {target}: layer {layer.name!r} ({kind.__name__}{why}) on the "
                    f"path from the input has no deconvnet rule; supported: {SUPPORTED}")


# ----------------------------------------------------------------------------- the path
def _graph(model):
    import keras

    if isinstance(model, keras.Sequential):
        model = getattr(model, "_functional", None) or model
    if not hasattr(model, "_nodes_by_depth"):
        raise KcnnError(f"{type(model).__name__}: --deconv needs a functional or Sequential "
                        f"model (a subclassed model has no layer graph)")
    return model


def _find(model, name: str):
    from kcnn.registry import did_you_mean

    names = [layer.name for layer in model.layers]
    if name not in names:
        raise KcnnError(f"no layer {name!r} in model {model.name!r}{did_you_mean(name, names)}; "
                        f"layers: {', '.join(names)}")
    return model.layers[names.index(name)]


def deconv_path(model, layer_name: str) -> list[tuple[Any, Rule]]:
    """The layers from the input up to ``layer_name`` (included) with their deconvnet
    steps; a KcnnError for an unknown layer, a vector output or a layer without a rule."""
    layer = _find(model, layer_name)
    graph = _graph(model)
    nodes = [n for level in graph._nodes_by_depth.values() for n in level if not n.is_input]
    if len(graph.inputs) != 1:
        raise KcnnError(f"--deconv needs a model with one input ({model.name!r} has "
                        f"{len(graph.inputs)})")
    mine = [n for n in nodes if n.operation is layer]
    if not mine:
        raise KcnnError(f"--deconv {layer_name}: the input layer has nothing to project")
    if len(mine[0].outputs) != 1 or len(mine[0].outputs[0].shape) != 4:
        shape = tuple(mine[0].outputs[0].shape[1:]) if mine[0].outputs else ()
        raise KcnnError(f"--deconv {layer_name}: the layer outputs {shape}, not a feature map; "
                        f"choose a convolution, activation or pooling layer")
    path, node = [], mine[0]
    while True:
        layer = node.operation
        shared = sum(n.operation is layer for n in nodes) > 1
        if shared or len(node.input_tensors) != 1:
            what = "is used more than once" if shared else f"takes {len(node.input_tensors)} inputs"
            raise KcnnError(f"--deconv {layer_name}: layer {layer.name!r} "
                            f"({type(layer).__name__}) {what}; the deconvnet follows one chain "
                            f"of layers from the input")
        path.append((layer, _rule(layer, layer_name)))
        op, index, _ = node.input_tensors[0]._keras_history
        node = op._inbound_nodes[index]
        if node.is_input:
            return path[::-1]


def _forward(path, x: np.ndarray) -> list[np.ndarray]:
    """Each layer's input and, last, the top layer's output (inference mode, float32)."""
    from keras import ops

    out = [np.asarray(x, dtype="float32")]
    for layer, _ in path:
        out.append(np.asarray(ops.convert_to_numpy(layer(out[-1], training=False)), "float32"))
    return out


def project(model, layer_name: str, images: np.ndarray, units: np.ndarray,
            mode: str = "deconvnet") -> tuple[np.ndarray, np.ndarray]:
    """Deconvnet projections of one activation per image.

    Args:
        images: (B, H, W, C) raw images (the model holds its own preprocessing).
        units: (B, 3) ints, per image the (row, column, channel) of ``layer_name``'s
            output to keep; every other value of that output is set to zero.
        mode: ``deconvnet`` (Zeiler & Fergus) or ``guided`` (Springenberg et al.).

    Returns:
        (projections (B, H, W, C) float32 in raw pixel units, the kept activations (B,)).
    """
    if mode not in MODES:
        raise KcnnError(f"unknown projection mode {mode!r}; valid: {', '.join(MODES)}")
    path = deconv_path(model, layer_name)
    acts = _forward(path, images)
    units = np.asarray(units, dtype=np.int64).reshape(-1, 3)
    batch = np.arange(len(units))
    values = acts[-1][batch, units[:, 0], units[:, 1], units[:, 2]]
    g = np.zeros_like(acts[-1])
    g[batch, units[:, 0], units[:, 1], units[:, 2]] = values
    for (layer, rule), x, y in reversed(list(zip(path, acts[:-1], acts[1:]))):
        g = rule(layer, x, y, g, mode)
    return g, values


# ----------------------------------------------------------------------------- choose and crop
def _receptive_field(model, layer_name: str):
    from kcnn.models.info import analyze

    row = next((r for r in analyze(model).layers if r.name == layer_name), None)
    if row is None or row.receptive_field is None:
        raise KcnnError(f"--deconv {layer_name}: the layer has no local receptive field")
    return row.receptive_field


def crop(arrays: np.ndarray, rf, positions: np.ndarray) -> np.ndarray:
    """The receptive-field window of each position, cut as ``--patches`` cuts it; the part
    outside the image is NaN."""
    size = rf.size
    pad = max(size) + 1
    padded = np.pad(arrays.astype("float32"), ((0, 0), (pad, pad), (pad, pad), (0, 0)),
                    constant_values=np.nan)
    out = np.zeros((len(arrays), size[0], size[1], arrays.shape[-1]), "float32")
    for k, (i, j) in enumerate(np.asarray(positions)):
        top = int(round(rf.start[0] + i * rf.jump[0] - (size[0] - 1) / 2)) + pad
        left = int(round(rf.start[1] + j * rf.jump[1] - (size[1] - 1) / 2)) + pad
        out[k] = padded[k, top:top + size[0], left:left + size[1]]
    return out


def strongest(model, layer_name: str, images: np.ndarray, channels: int = 9, top: int = 9,
              mode: str = "deconvnet", batch_size: int = 128) -> dict[str, Any]:
    """The ``channels`` most active channels of a layer (by their largest activation over
    ``images``), each one's ``top`` images (by the channel's maximum over positions), and
    the projection of that maximum, full size and cut to its receptive field."""
    path = deconv_path(model, layer_name)
    rf = _receptive_field(model, layer_name)
    images = np.asarray(images, dtype="float32")
    acts = np.concatenate([_forward(path, images[i:i + batch_size])[-1]
                           for i in range(0, len(images), batch_size)])
    n, h, w, c = acts.shape
    flat = acts.reshape(n, h * w, c)
    peak = flat.max(axis=1)  # (n, c): each image's strongest response per channel
    order = np.argsort(-peak.max(axis=0), kind="stable")[:channels]
    chosen = np.stack([np.argsort(-peak[:, ch], kind="stable")[:top] for ch in order])
    where = np.stack([flat[chosen[r], :, ch].argmax(axis=1) for r, ch in enumerate(order)])
    positions = np.stack(np.divmod(where, w), axis=-1)  # (K, N, 2)
    units = np.concatenate([positions, np.broadcast_to(order[:, None, None], where.shape + (1,))],
                           axis=-1).reshape(-1, 3)
    proj, values = project(model, layer_name, images[chosen.ravel()], units, mode)
    k, m = chosen.shape
    return {
        "layer": layer_name, "mode": mode, "channels": order, "images": chosen,
        "positions": positions, "activations": values.reshape(k, m),
        "projections": proj.reshape(k, m, *proj.shape[1:]),
        "projection_patches": crop(proj, rf, positions.reshape(-1, 2)).reshape(
            k, m, *rf.size, proj.shape[-1]),
        "image_patches": crop(images[chosen.ravel()], rf, positions.reshape(-1, 2)).reshape(
            k, m, *rf.size, images.shape[-1]),
        "receptive_field": rf, "pixel_max": float(np.nanmax(images)) if images.size else 1.0,
    }


# ----------------------------------------------------------------------------- drawing
def _rgb(patch: np.ndarray, low: float, high: float) -> np.ndarray:
    """(h, w, 3) colours in [0, 1] of a patch mapped from [low, high]; NaN (outside the
    image) in the ``OUTSIDE`` colour."""
    rgb = np.clip((patch - low) / (high - low), 0.0, 1.0)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    rgb[np.isnan(patch).any(axis=-1)] = matplotlib.colors.to_rgb(OUTSIDE)
    return rgb


def mosaic(found: dict[str, Any], tile_pixels: int = 24) -> tuple[np.ndarray, list, list, tuple]:
    """One image of the whole grid (fast to draw, however many tiles): a row per channel
    of (projection, image patch) pairs under a band for their label. Projections are
    mid-grey at 0 and scaled to their own largest |value|; image patches to the pixel
    range. Returns the canvas, [(x, y, label)] per pair (x, y: its top-left pixel),
    [(y, label)] per row and (tile height, tile width, gap inside a pair)."""
    proj, patches = found["projection_patches"], found["image_patches"]
    k, m, rh, rw = proj.shape[:4]
    f = max(1, -(-tile_pixels // min(rh, rw)))  # small fields are enlarged, nearest pixel
    th, tw = rh * f, rw * f
    inner, outer, band = max(2, tw // 10), max(2, tw // 3), max(8, th // 2)
    canvas = np.ones((k * (band + th), m * (2 * tw + inner) + (m - 1) * outer, 3), "float32")
    vmax = found["pixel_max"] or 1.0
    pairs, rows = [], []
    for r in range(k):
        y = r * (band + th) + band
        rows.append((y + th / 2, f"ch {found['channels'][r]}"))
        for i in range(m):
            x = i * (2 * tw + inner + outer)
            bound = float(np.nanmax(np.abs(proj[r, i]))) if np.isfinite(proj[r, i]).any() else 0
            left = _rgb(proj[r, i], -(bound or 1.0), bound or 1.0)
            right = _rgb(patches[r, i], 0.0, vmax)
            canvas[y:y + th, x:x + tw] = left.repeat(f, axis=0).repeat(f, axis=1)
            canvas[y:y + th, x + tw + inner:x + 2 * tw + inner] = right.repeat(f, 0).repeat(f, 1)
            pairs.append((x, y, f"#{found['images'][r, i]} · {found['activations'][r, i]:.3g}"))
    return canvas, pairs, rows, (th, tw, inner)


def plot_deconv(found: dict[str, Any], path: Path, tile: float = 0.62) -> Path:
    """One row per channel: (projection, image patch) pairs, like Zeiler & Fergus fig. 2."""
    canvas, pairs, rows, (th, tw, inner) = mosaic(found)
    k, m = found["images"].shape
    per_pixel = tile / (canvas.shape[0] / k / 1.5)  # inches per canvas pixel
    width, height = canvas.shape[1] * per_pixel, canvas.shape[0] * per_pixel
    fig = plt.figure(figsize=(width + 0.8, height + 0.2))  # the title goes on top, outside
    ax = fig.add_axes((0.6 / (width + 0.8), 0.1 / (height + 0.2), width / (width + 0.8),
                       height / (height + 0.2)))
    ax.imshow(canvas, interpolation="nearest")
    ax.axis("off")
    frames = []  # a thin frame round each tile: white ink must not melt into the page
    for x, y, text in pairs:
        ax.text(x - 0.5, y - 2, text, fontsize=6, ha="left", va="bottom")
        frames += [Rectangle((left - 0.5, y - 0.5), tw, th) for left in (x, x + tw + inner)]
    ax.add_collection(PatchCollection(frames, facecolor="none", edgecolor="0.55", linewidth=0.5,
                                      clip_on=False))
    for y, text in rows:
        ax.text(-4, y, text, fontsize=8, ha="right", va="center")
    how = ("guided backprop (Springenberg et al. 2015)" if found["mode"] == "guided"
           else "deconvnet (Zeiler & Fergus 2014)")
    size = found["receptive_field"].size
    lines = [f"{found['layer']}: {how} — {k} channels × the {m} test images where each fires "
             f"most",
             f"each pair: the projection of the channel's strongest activation (mid-grey = 0, "
             f"scaled to its own largest value), then the image patch; both cut to the "
             f"{size[0]}×{size[1]} receptive field",
             "label: #test image · activation; blue: outside the image"]
    chars = max(48, int(fig.get_figwidth() * 13))
    fig.suptitle("\n".join(textwrap.fill(line, chars) for line in lines), fontsize=8,
                 y=1.0, va="bottom")
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- entry
def check_options(layers: Sequence[str], channels: int, top: int, guided: bool) -> None:
    """The --deconv options, checked before anything is loaded."""
    for flag, value in (("--channels", channels), ("--top", top)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise KcnnError(f"{flag} must be a positive integer (got {value!r})")
    if guided and not layers:
        raise KcnnError("--guided goes with --deconv LAYER")


def first_test_images(recipe, limit: int = MAX_IMAGES) -> np.ndarray:
    """The first ``limit`` images of the run's test split (read by index: file-backed
    splits stream)."""
    from kcnn.data.sources import load_dataset

    data = load_dataset(recipe.data)
    n = min(limit, len(data.test))
    if n == 0:
        raise KcnnError("--deconv: the run's test split is empty")
    return data.test.images(np.arange(n)).astype("float32")


def deconv_run(model, recipe, layers: Sequence[str], out_dir: Path, *, channels: int = 9,
               top: int = 9, guided: bool = False) -> list[Path]:
    """``plots/deconv_<layer>.png`` (``deconv_guided_<layer>.png``) for each layer."""
    check_options(layers, channels, top, guided)
    if recipe is None:
        raise KcnnError("--deconv needs a run directory (its recipe gives the test images)")
    for name in layers:  # refuse a bad layer before reading any data
        deconv_path(model, name)
    images = first_test_images(recipe)
    mode = "guided" if guided else "deconvnet"
    written = []
    for name in layers:
        found = strongest(model, name, images, channels, top, mode)
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        prefix = "deconv_guided_" if guided else "deconv_"
        written.append(plot_deconv(found, Path(out_dir) / f"{prefix}{stem}.png"))
    return written
