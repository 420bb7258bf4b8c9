"""StochasticPooling2D: harness, expectation and sampling against NumPy, gradients, TFLite."""

import keras
import numpy as np
import pytest
from scipy import stats

from kcnn.layers import LAYERS, StochasticPooling2D

from . import harness
from .harness import assert_validation_error, call_layer, numpy_windows, random_input, to_numpy


def numpy_expectation(x, pool, strides, padding):
    windows = numpy_windows(np.maximum(x, 0).astype("float64"), pool, strides, padding)
    total = windows.sum(-1)
    return np.where(total > 0, (windows**2).sum(-1) / np.where(total > 0, total, 1), 0.0)


@pytest.mark.parametrize(
    "kwargs, full",
    [
        ({"pool_size": 2, "seed": 1}, True),  # 8 -> (8 - 2) // 2 + 1 = 4
        ({"pool_size": 3, "strides": 2, "padding": "same", "seed": 2}, False),  # ceil(8 / 2)
    ],
)
def test_harness(tmp_path, kwargs, full):
    # The fit step and mixed precision run once per layer class (slow under JAX).
    # No weights: the seed generator's state is not one.
    harness.run_layer_checks(
        StochasticPooling2D,
        kwargs,
        (2, 8, 8, 3),
        tmp_path,
        expected_output_shape=(2, 4, 4, 3),
        expected_num_trainable_weights=0,
        nonnegative=True,
        fit=full,
        mixed_precision=full,
    )


def test_registered_alias():
    assert LAYERS["stochastic_pooling2d"] is StochasticPooling2D


@pytest.mark.parametrize(
    "pool, strides, padding, shape",
    [
        ((2, 2), (2, 2), "valid", (2, 8, 8, 3)),
        ((3, 3), (2, 2), "same", (2, 7, 8, 3)),
        ((2, 3), (1, 2), "valid", (2, 5, 7, 2)),
        ((3, 3), (3, 3), "valid", (2, 8, 8, 2)),  # drops the last 2 rows/cols
    ],
)
def test_inference_is_probability_weighted_average(pool, strides, padding, shape):
    x = random_input(shape, seed=7)  # half negative: clamped to 0
    layer = StochasticPooling2D(pool, strides, padding)
    got = to_numpy(call_layer(layer, x, training=False))
    np.testing.assert_allclose(
        got, numpy_expectation(x, pool, strides, padding), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    "pool, strides, padding",
    [((2, 2), (2, 2), "valid"), ((3, 3), (2, 2), "same"), ((2, 3), (1, 2), "valid")],
)
def test_training_output_is_an_element_of_its_window(pool, strides, padding):
    x = random_input((3, 7, 8, 2), seed=8)
    y = to_numpy(call_layer(StochasticPooling2D(pool, strides, padding, seed=3), x, training=True))
    windows = numpy_windows(np.maximum(x, 0), pool, strides, padding)
    hits = np.isclose(windows, y[..., None], rtol=0, atol=1e-7)
    assert np.all(hits.any(-1))
    # A window with a positive element never outputs 0.
    positive = windows.max(-1) > 0
    assert np.all(y[positive] > 0)


@pytest.mark.parametrize(
    "pool, strides, height, width",
    [((2, 2), (2, 2), 2, 2), ((3, 3), (1, 1), 3, 3), ((2, 3), (2, 3), 2, 3)],
)
def test_draws_follow_p_equals_a_over_sum(pool, strides, height, width):
    """2000 draws of one window: frequencies match a_i / sum(a) (chi-square)."""
    values = np.array([0.5, 3.0, 0.0, 1.5, 2.0, 0.25, 4.0, 1.0, 0.75])[: height * width]
    values = values.astype("float32")
    draws = 2000
    x = np.broadcast_to(values.reshape(1, height, width, 1), (draws, height, width, 1)).copy()
    layer = StochasticPooling2D(pool, strides, seed=11)
    y = to_numpy(call_layer(layer, x, training=True)).reshape(draws)
    picked = np.argmin(np.abs(y[:, None] - values[None, :]), axis=1)
    assert np.allclose(y, values[picked])
    counts = np.bincount(picked, minlength=values.size)
    p = values.astype("float64") / values.astype("float64").sum()
    assert counts[p == 0].sum() == 0, "a zero activation was drawn"
    result = stats.chisquare(counts[p > 0], draws * p[p > 0])
    assert result.pvalue > 1e-3, (counts, draws * p)


def test_overlapping_windows_draw_independently():
    # Two overlapping windows over the same row: both distributions must hold.
    values = np.array([[1.0, 2.0, 5.0]], dtype="float32")  # windows [1,2] and [2,5]
    draws = 2000
    x = np.broadcast_to(values.reshape(1, 1, 3, 1), (draws, 1, 3, 1)).copy()
    y = to_numpy(call_layer(StochasticPooling2D((1, 2), (1, 1), seed=5), x, training=True))
    first = np.isclose(y[:, 0, 0, 0], 2.0).mean()
    second = np.isclose(y[:, 0, 1, 0], 5.0).mean()
    assert abs(first - 2 / 3) < 0.04 and abs(second - 5 / 7) < 0.04


def test_seed_makes_draws_reproducible():
    x = random_input((2, 8, 8, 3), seed=9, nonnegative=True)
    a = to_numpy(call_layer(StochasticPooling2D(2, seed=42), x, training=True))
    b = to_numpy(call_layer(StochasticPooling2D(2, seed=42), x, training=True))
    np.testing.assert_array_equal(a, b)
    layer = StochasticPooling2D(2, seed=42)
    first, second = (
        to_numpy(call_layer(layer, x, training=True)),
        to_numpy(call_layer(layer, x, training=True)),
    )
    assert not np.array_equal(first, second), "the seed generator did not advance"


def test_restored_seed_state_replays_the_draws():
    # Resume contract: the draws depend only on the seed generator's state,
    # which advances once per call (as keras.random's would).
    x = random_input((4, 8, 8, 3), seed=16, nonnegative=True)
    layer = StochasticPooling2D(2, seed=7)
    state = to_numpy(layer.seed_generator.state)
    first = to_numpy(call_layer(layer, x, training=True))
    np.testing.assert_array_equal(to_numpy(layer.seed_generator.state), state + [0, 1])
    second = to_numpy(call_layer(layer, x, training=True))
    layer.seed_generator.state.assign(state)
    np.testing.assert_array_equal(to_numpy(call_layer(layer, x, training=True)), first)
    np.testing.assert_array_equal(to_numpy(call_layer(layer, x, training=True)), second)


def test_uniform_generator_is_uniform_and_fresh_per_call():
    from kcnn.layers.stochastic_pooling import _hash_uniform

    seed_generator = keras.random.SeedGenerator(3)
    size = 1 << 16
    a = to_numpy(_hash_uniform((size,), size, seed_generator.next())).astype("float64")
    b = to_numpy(_hash_uniform((size,), size, seed_generator.next())).astype("float64")
    assert 0.0 <= a.min() and a.max() < 1.0
    assert stats.kstest(a, "uniform").pvalue > 1e-3
    # Neighbouring counters, and the same counter in two calls: no dependence.
    for first, second in ((a[:-1], a[1:]), (a, b)):
        cells = (first * 16).astype(int) * 16 + (second * 16).astype(int)
        assert stats.chisquare(np.bincount(cells, minlength=256)).pvalue > 1e-3


@harness.requires_tensorflow
def test_xla_draws_equal_graph_draws():
    import tensorflow as tf

    x = random_input((2, 8, 8, 3), seed=17, nonnegative=True)
    layer = StochasticPooling2D(2, seed=4)
    state = to_numpy(layer.seed_generator.state)
    graph = tf.function(lambda v: layer(v, training=True))(x).numpy()
    layer.seed_generator.state.assign(state)
    xla = tf.function(lambda v: layer(v, training=True), jit_compile=True)(x).numpy()
    np.testing.assert_array_equal(graph, xla)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("strides", [2, 1])
def test_all_zero_window_outputs_zero_without_nan(training, strides):
    x = np.zeros((1, 4, 4, 2), "float32")
    x[0, 0, 0, 0] = 2.0  # one non-zero window in channel 0; channel 1 all zero
    x[0, 3, 3, 1] = -1.0  # negative: clamped, still a zero window
    layer = StochasticPooling2D(2, strides, seed=0)

    def fn(v):
        return layer(v, training=training)

    y = to_numpy(call_layer(layer, x, training=training))
    assert np.all(np.isfinite(y))
    assert np.all(y[..., 1] == 0)
    assert y[0, 0, 0, 0] == 2.0
    grad = harness.gradient(fn, x)
    assert np.all(np.isfinite(grad))
    assert np.all(grad[..., 1] == 0)


@pytest.mark.skipif(harness.BACKEND not in ("tensorflow", "jax"), reason="gradient helper: tf or jax")
@pytest.mark.parametrize("strides", [2, 1])
def test_gradient_reaches_only_the_drawn_elements(strides):
    shape = (4, 6, 6, 3)
    size = int(np.prod(shape))
    x = ((np.random.default_rng(12).permutation(size) + 1.0) / size).astype("float32")
    x = x.reshape(shape)  # distinct and positive
    layer = StochasticPooling2D(2, strides, seed=13)
    # Fix the draw by reusing the same seed state for the forward and gradient passes.
    state = to_numpy(layer.seed_generator.state)
    y = to_numpy(call_layer(layer, x, training=True))
    layer.seed_generator.state.assign(state)
    grad = harness.gradient(lambda v: layer(v, training=True), x)
    windows = numpy_windows(x, (2, 2), (strides, strides), "valid")
    grad_windows = numpy_windows(grad, (2, 2), (strides, strides), "valid")
    if strides == 2:
        # Exactly one element per window gets gradient 1: the drawn one.
        assert np.all((grad_windows == 1).sum(-1) == 1)
        assert np.all(grad_windows[grad_windows != 1] == 0)
        np.testing.assert_array_equal((grad_windows * windows).sum(-1), y)
    else:
        # Each output adds 1 to the gradient of its drawn element.
        assert grad.sum() == pytest.approx(y.size)
        drawn = np.isclose(windows, y[..., None], rtol=0, atol=0)
        assert np.all(drawn.sum(-1) == 1)
        expected = np.zeros_like(x)
        for i in range(y.shape[1]):
            for j in range(y.shape[2]):
                k = drawn[:, i, j].argmax(-1)  # (batch, C)
                r, c = i * strides + k // 2, j * strides + k % 2
                for b in range(x.shape[0]):
                    for ch in range(x.shape[3]):
                        expected[b, r[b, ch], c[b, ch], ch] += 1
        np.testing.assert_array_equal(grad, expected)


def test_channels_first_matches_channels_last():
    x = random_input((2, 6, 6, 3), seed=14)
    harness.check_channels_first_matches_last(
        lambda data_format: StochasticPooling2D(2, data_format=data_format), x
    )
    y = call_layer(
        StochasticPooling2D(2, data_format="channels_first", seed=1),
        np.transpose(x, (0, 3, 1, 2)),
        training=True,
    )
    assert tuple(y.shape) == (2, 3, 3, 3)


@harness.requires_tensorflow
def test_unknown_spatial_size_in_a_graph():
    import tensorflow as tf

    layer = StochasticPooling2D(3, strides=2, padding="same", seed=0)
    spec = [tf.TensorSpec((None, None, None, 2))]
    infer = tf.function(lambda v: layer(v, training=False), input_signature=spec)
    train = tf.function(lambda v: layer(v, training=True), input_signature=spec)
    x = random_input((2, 7, 5, 2), seed=15)
    np.testing.assert_allclose(
        infer(x).numpy(), numpy_expectation(x, (3, 3), (2, 2), "same"), rtol=1e-5, atol=1e-6
    )
    assert train(x).shape == (2, 4, 3, 2)


@pytest.mark.parametrize("pool_size", [0, (2,), (2, -1), "2", 1.5, True, (2, True)])
def test_rejects_bad_pool_size(pool_size):
    assert_validation_error(lambda: StochasticPooling2D(pool_size), r"Received: pool_size=")


def test_rejects_bad_strides():
    assert_validation_error(lambda: StochasticPooling2D(2, strides=0), r"Received: strides=0")


def test_rejects_bad_padding():
    assert_validation_error(
        lambda: StochasticPooling2D(2, padding="full"), r"Received: padding='full'"
    )


def test_rejects_bad_data_format():
    assert_validation_error(
        lambda: StochasticPooling2D(2, data_format="nhwc"), r"Received: data_format='nhwc'"
    )


def test_rejects_bad_seed():
    assert_validation_error(lambda: StochasticPooling2D(2, seed="a"), r"Received: seed='a'")


def test_rejects_input_smaller_than_pool_in_build():
    layer = StochasticPooling2D(4)
    assert_validation_error(lambda: layer.build((1, 3, 8, 2)), r"at least the pool size")


@harness.requires_tensorflow
@pytest.mark.parametrize(
    "kwargs", [{"pool_size": 2}, {"pool_size": 3, "strides": 2, "padding": "same"}]
)
def test_tflite_builtins_inference(kwargs):
    ops = harness.check_tflite(StochasticPooling2D(**kwargs), (2, 8, 8, 3), nonnegative=False)
    assert "AVERAGE_POOL_2D" in ops
