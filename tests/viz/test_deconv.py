"""Deconvnet projections: hand-computed reconstructions, the transposes' adjoint identities,
guided vs deconvnet, the refusals, and `kcnn visualize --deconv` end to end."""

import keras
import numpy as np
import pytest
from scipy.signal import convolve2d, correlate2d
from typer.testing import CliRunner

from kcnn.cli.main import app
from kcnn.errors import KcnnError
from kcnn.models import create_model
from kcnn.recipes import dump, loads
from kcnn.viz import deconv as D
from tests.viz.conftest import png_shape

# An asymmetric kernel: a flip in the wrong place would show.
KERNEL = np.array([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0], [-2.0, 0.0, 1.0]], "float32")
IMAGE = np.random.default_rng(3).uniform(0, 5, (6, 6)).round(2).astype("float32")  # no ties


def conv(name, filters, kernel, **kw):
    layer = keras.layers.Conv2D(filters, 3, use_bias=False, name=name, **kw)
    layer.build((None, None, None, kernel.shape[2]))
    layer.set_weights([kernel])
    return layer


def conv_relu_pool(rescale=None, bn=None):
    """6×6×1 → [Rescaling] → Conv2D(KERNEL, valid, no bias) → [BN] → ReLU → MaxPool 2×2."""
    inputs = keras.Input((6, 6, 1), name="image")
    x = keras.layers.Rescaling(rescale, name="rescale")(inputs) if rescale else inputs
    x = conv("conv", 1, KERNEL[:, :, None, None])(x)
    if bn:
        norm = keras.layers.BatchNormalization(epsilon=bn["eps"], name="bn")
        x = norm(x)
        norm.set_weights([np.float32([bn[k]]) for k in ("gamma", "beta", "mean", "var")])
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    return keras.Model(inputs, x)


def by_hand(pre_relu):
    """The paper's three steps for the strongest pooled unit of a 4×4 pre-ReLU map:
    unpool to the switch, rectify, then the transposed filter (a full convolution with
    KERNEL, i.e. KERNEL placed — as convolution-transpose flips it back — over the
    3×3 input window the unit saw)."""
    act = np.maximum(pre_relu, 0)
    windows = act.reshape(2, 2, 2, 2).transpose(0, 2, 1, 3).reshape(2, 2, 4)
    pooled = windows.max(axis=-1)
    p, q = np.unravel_index(np.argmax(pooled), pooled.shape)
    assert np.sum(windows[p, q] == pooled[p, q]) == 1 and np.sum(pooled == pooled.max()) == 1
    si, sj = 2 * p + np.argmax(windows[p, q]) // 2, 2 * q + np.argmax(windows[p, q]) % 2
    unpooled = np.zeros((4, 4), "float32")
    unpooled[si, sj] = pooled[p, q]  # unpooling with switches
    rectified = np.maximum(unpooled, 0)  # ReLU
    projection = convolve2d(rectified, KERNEL, mode="full")  # transposed filters
    placed = np.zeros((6, 6))
    placed[si:si + 3, sj:sj + 3] = pooled[p, q] * KERNEL
    np.testing.assert_allclose(projection, placed)  # the same thing, said two ways
    return (p, q), pooled[p, q], projection


def test_conv_relu_pool_reconstruction_equals_the_hand_computation():
    model = conv_relu_pool()
    (p, q), value, expected = by_hand(correlate2d(IMAGE, KERNEL, mode="valid"))
    found = D.strongest(model, "pool", IMAGE[None, :, :, None], channels=1, top=1)
    assert found["channels"].tolist() == [0] and found["images"].tolist() == [[0]]
    assert found["positions"][0, 0].tolist() == [p, q]
    assert found["activations"][0, 0] == pytest.approx(value)
    np.testing.assert_allclose(found["projections"][0, 0, :, :, 0], expected, atol=1e-5)
    # One ReLU, fed a positive value where the forward pass was positive: guided agrees.
    guided, _ = D.project(model, "pool", IMAGE[None, :, :, None], [[p, q, 0]], mode="guided")
    np.testing.assert_allclose(guided[0, :, :, 0], expected, atol=1e-5)


def test_batch_norm_runs_back_by_its_scale_and_the_input_rescaling_is_undone():
    bn = {"gamma": 2.0, "beta": 0.3, "mean": 1.5, "var": 3.0, "eps": 1e-3}
    model = conv_relu_pool(rescale=0.5, bn=bn)
    scale = bn["gamma"] / np.sqrt(bn["var"] + bn["eps"])
    pre = (correlate2d(0.5 * IMAGE, KERNEL, mode="valid") - bn["mean"]) * scale + bn["beta"]
    (p, q), value, unit = by_hand(pre)
    found = D.strongest(model, "pool", IMAGE[None, :, :, None], channels=1, top=1)
    assert found["activations"][0, 0] == pytest.approx(value, rel=1e-5)
    # transposed filter · γ/√(σ²+ε) on the way down, then ÷ 0.5 back to raw pixel units
    np.testing.assert_allclose(found["projections"][0, 0, :, :, 0], unit * scale / 0.5,
                               rtol=1e-5, atol=1e-4)


def test_guided_backprop_differs_where_the_forward_mask_matters():
    k1 = np.stack([KERNEL, -KERNEL.T], axis=-1)[:, :, None, :]  # (3, 3, 1, 2)
    k2 = np.stack([[[1, -1, 2], [0, 1, -2], [1, 0, 1]],
                   [[-1, 2, 0], [1, 1, -1], [0, -2, 1]]], axis=-1).astype("float32")[..., None]
    inputs = keras.Input((6, 6, 1))
    x = conv("conv1", 2, k1, activation="relu")(inputs)  # a ReLU fused into the conv
    x = keras.layers.Activation("relu", name="relu2")(conv("conv2", 1, k2)(x))
    model = keras.Model(inputs, x)
    # By hand: a1 = relu(conv1), a2 = relu(conv2(a1)); keep the strongest unit of a2.
    a1 = np.stack([np.maximum(correlate2d(IMAGE, k1[:, :, 0, c], mode="valid"), 0)
                   for c in range(2)], axis=-1)
    a2 = np.maximum(sum(correlate2d(a1[..., c], k2[:, :, c, 0], mode="valid")
                        for c in range(2)), 0)
    p, q = np.unravel_index(np.argmax(a2), a2.shape)
    assert a2[p, q] > 0 and np.sum(a2 == a2[p, q]) == 1
    g1 = np.zeros((4, 4, 2), "float32")
    g1[p:p + 3, q:q + 3] = a2[p, q] * k2[:, :, :, 0]  # transposed conv2 of the kept unit
    assert ((g1 > 0) & (a1 == 0)).any()  # the forward mask has something to remove
    expected = {}
    for mode, h in (("deconvnet", np.maximum(g1, 0)), ("guided", np.maximum(g1, 0) * (a1 > 0))):
        expected[mode] = sum(convolve2d(h[..., c], k1[:, :, 0, c], mode="full") for c in range(2))
        got, value = D.project(model, "relu2", IMAGE[None, :, :, None], [[p, q, 0]], mode)
        assert value[0] == pytest.approx(a2[p, q])
        np.testing.assert_allclose(got[0, :, :, 0], expected[mode], atol=1e-4)
    assert np.abs(expected["deconvnet"] - expected["guided"]).max() > 1.0


@pytest.mark.parametrize("strides,padding,dilation,size", [
    (1, "same", 1, 3), (2, "same", 1, 3), (2, "valid", 1, 3), (3, "valid", 1, 2),
    (1, "same", 2, 3), (2, "same", 1, 2)])
def test_transposed_filters_are_the_convolutions_adjoint(strides, padding, dilation, size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 7, 3)).astype("float32")
    kernel = rng.normal(size=(size, size, 3, 4)).astype("float32")
    y = keras.ops.convert_to_numpy(keras.ops.conv(x, kernel, strides, padding,
                                                  dilation_rate=dilation))
    g = rng.normal(size=y.shape).astype("float32")
    back = D.conv_transpose(g, kernel, (7, 7), (strides,) * 2, padding, (dilation,) * 2)
    assert back.shape == x.shape
    # <conv x, g> = <x, convᵀ g>: the transpose, whatever the stride, padding or dilation
    assert np.sum(y * g) == pytest.approx(np.sum(x * back), rel=1e-4, abs=1e-3)


@pytest.mark.parametrize("pool,strides,padding", [(2, 2, "valid"), (2, 2, "same"),
                                                  (3, 2, "same"), (3, 1, "valid")])
def test_unpooling_is_the_poolings_adjoint(pool, strides, padding):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 7, 7, 3)).astype("float32")
    for op, unpool in ((keras.ops.max_pool, lambda g: D.unpool_max(g, x, (pool,) * 2,
                                                                    (strides,) * 2, padding)),
                       (keras.ops.average_pool, lambda g: D.unpool_average(
                           g, (7, 7), (pool,) * 2, (strides,) * 2, padding))):
        y = keras.ops.convert_to_numpy(op(x, pool, strides, padding))
        g = rng.normal(size=y.shape).astype("float32")
        back = unpool(g)
        assert back.shape == x.shape
        assert np.sum(y * g) == pytest.approx(np.sum(x * back), rel=1e-4, abs=1e-3)
    # Switches: without overlap each pooled value lands on exactly one input position.
    if pool == strides:
        g = np.ones(y.shape, "float32")
        back = D.unpool_max(g, x, (pool,) * 2, (strides,) * 2, padding)
        assert np.count_nonzero(back) == g.size and back.sum() == g.size


def test_layers_without_a_deconvnet_rule_are_refused_by_name():
    inputs = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(2, 3, padding="same", name="a")(inputs)
    b = keras.layers.Conv2D(2, 3, padding="same", name="b")(inputs)
    x = keras.layers.Add(name="join")([a, b])
    x = keras.layers.Activation("tanh", name="squash")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, x)
    with pytest.raises(KcnnError, match=r"layer 'squash' \(Activation \(activation 'tanh'\)\)"):
        D.deconv_path(model, "pool")
    with pytest.raises(KcnnError, match=r"layer 'join' \(Add\) takes 2 inputs"):
        D.deconv_path(model, "join")
    with pytest.raises(KcnnError, match=r"--deconv gap: the layer outputs \(2,\), not a feature"):
        D.deconv_path(model, "gap")
    with pytest.raises(KcnnError, match=r"no layer 'pool2'.*did you mean 'pool'"):
        D.deconv_path(model, "pool2")
    assert [layer.name for layer, _ in D.deconv_path(model, "a")] == ["a"]
    with pytest.raises(KcnnError, match="--channels must be a positive integer"):
        D.check_options(["a"], 0, 9, False)
    with pytest.raises(KcnnError, match="--guided goes with --deconv"):
        D.check_options([], 9, 9, True)


# ----------------------------------------------------------------------------- the command
def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"KCNN_DEBUG": "0"})


def test_visualize_deconv_writes_the_grid(trained_run, tmp_path):
    res = invoke("visualize", trained_run, "--deconv", "conv2_1", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    path = tmp_path / "deconv_conv2_1.png"
    assert res.stdout.strip().splitlines()[-1] == str(path)
    height, width, _ = png_shape(path)  # 9 channels × 9 (projection, patch) pairs
    assert 1000 < width < 2600 and 600 < height < 1600 and width > height
    res = invoke("visualize", trained_run, "--deconv", "conv1_1_relu", "--guided",
                 "--channels", "2", "--top", "3", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    path = tmp_path / "deconv_guided_conv1_1_relu.png"
    assert res.stdout.strip().splitlines()[-1] == str(path)
    height, width, _ = png_shape(path)
    assert 300 < width < 1000 and height < 600


def test_visualize_deconv_errors_are_one_line(trained_run, tmp_path):
    run = tmp_path / "lp_run"
    run.mkdir()
    (run / "recipe.yaml").write_text(dump(loads(
        "name: lp\ndata: {source: {type: digits}}\n"
        "model: {name: simple_cnn, filters: [4, 8], batch_norm: false, pooling: lp}\n")))
    create_model("simple_cnn", num_classes=10, input_shape=(8, 8, 1), filters=[4, 8],
                 batch_norm=False, pooling="lp").save(run / "model.keras")
    cases = [((trained_run, "--deconv", "conv9"), "error: no layer 'conv9'"),
             ((trained_run, "--deconv", "gap"), "error: --deconv gap: the layer outputs"),
             ((trained_run, "--guided"), "error: --guided goes with --deconv"),
             ((trained_run, "--deconv", "conv2_1", "--top", "0"), "error: --top must be"),
             ((run, "--deconv", "conv2_1"), "error: --deconv conv2_1: layer 'pool1' (LpPooling2D)")]
    for args, start in cases:
        res = invoke("visualize", *args, "--out", tmp_path)
        assert res.exit_code == 2, res.output
        assert res.stderr.startswith(start) and len(res.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.png"))
