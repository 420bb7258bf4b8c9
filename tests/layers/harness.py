"""Shared checks for the kcnn layers, written on public Keras APIs only.

``run_layer_checks`` is this package's version of Keras'
``run_layer_test``: config round trip, ``.keras`` save/load without
``custom_objects``, the output shape and the number of weights against what
the test expects (and ``compute_output_shape`` against the same shape), the
output dtype, one ``fit`` step, and ``mixed_float16``. ``check_tflite``
converts a model holding the layer with TFLite builtins only and compares the
interpreter with Keras.

Test modules import the few array helpers by name and use the checks as
``harness.run_layer_checks``, ``@harness.requires_tensorflow`` and so on.
"""

from __future__ import annotations

import inspect

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()

requires_tensorflow = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="needs the TensorFlow backend (TensorFlow ops or TFLite)"
)


def _channels_first_conv_available():
    if BACKEND != "tensorflow":
        return True
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


requires_channels_first_conv = pytest.mark.skipif(
    not _channels_first_conv_available(),
    reason="TensorFlow's CPU convolutions support channels_last only (as for keras Conv2D)",
)


def random_input(shape, seed=0, nonnegative=False):
    values = np.random.default_rng(seed).normal(size=shape).astype("float32")
    return np.maximum(values, 0.0) if nonnegative else values


def to_numpy(x):
    """A backend tensor (or anything array-like) as a NumPy array."""
    return np.asarray(keras.ops.convert_to_numpy(x))


def numpy_windows(x, pool, strides, padding):
    """(batch, oh, ow, C, ph*pw) windows of a channels-last array, zero padded for 'same'.

    The NumPy reference of the pooling layers' windows (row-major in each window).
    """
    _, h, w, _ = x.shape
    if padding == "same":
        oh, ow = -(-h // strides[0]), -(-w // strides[1])
        ph_total = max((oh - 1) * strides[0] + pool[0] - h, 0)
        pw_total = max((ow - 1) * strides[1] + pool[1] - w, 0)
        x = np.pad(
            x,
            [
                (0, 0),
                (ph_total // 2, ph_total - ph_total // 2),
                (pw_total // 2, pw_total - pw_total // 2),
                (0, 0),
            ],
        )
    else:
        oh, ow = (h - pool[0]) // strides[0] + 1, (w - pool[1]) // strides[1] + 1
    out = np.empty((x.shape[0], oh, ow, x.shape[3], pool[0] * pool[1]), x.dtype)
    for i in range(oh):
        for j in range(ow):
            window = x[
                :,
                i * strides[0] : i * strides[0] + pool[0],
                j * strides[1] : j * strides[1] + pool[1],
                :,
            ]
            out[:, i, j] = window.reshape(x.shape[0], -1, x.shape[3]).transpose(0, 2, 1)
    return out


# (id(layer), call kwargs) -> (layer, jitted call); emptied after each test.
_JITTED_CALLS = {}


def clear_jitted_calls():
    _JITTED_CALLS.clear()


def call_layer(layer, x, **kwargs):
    """``layer(x, **kwargs)``, compiled as one program under JAX.

    Eager JAX compiles every op separately for every new shape, which makes
    tests that call a layer on a few small tensors take seconds each; one
    ``jax.jit`` of the whole (stateless) call is much faster. The updated
    non-trainable state (batch-norm statistics, seed generators) is written
    back, so this behaves like a plain call. Other backends call directly.
    """
    if BACKEND != "jax":
        return layer(x, **kwargs)
    import jax

    if not layer.built:
        layer.build(tuple(np.shape(x)))
    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]
    key = (id(layer), tuple(sorted(kwargs.items())))
    if key not in _JITTED_CALLS:

        @jax.jit
        def run(trainable, non_trainable, inputs):
            # Like layer.stateless_call, but through __call__ (autocasting for
            # mixed precision, the `training` default, input checks).
            mapping = list(zip(layer.trainable_variables, trainable))
            mapping += list(zip(layer.non_trainable_variables, non_trainable))
            with keras.StatelessScope(state_mapping=mapping) as scope:
                outputs = layer(inputs, **kwargs)
            updated = []
            for variable, old in zip(layer.non_trainable_variables, non_trainable):
                new = scope.get_current_value(variable)
                updated.append(old if new is None else new)
            return outputs, updated

        _JITTED_CALLS[key] = (layer, run)  # the layer is kept alive with its id
    run = _JITTED_CALLS[key][1]
    outputs, non_trainable = run(trainable, non_trainable, x)
    for variable, value in zip(layer.non_trainable_variables, non_trainable):
        variable.assign(value)
    return outputs


def _is_random(layer):
    return any(isinstance(v, keras.random.SeedGenerator) for v in vars(layer).values())


def check_config_round_trip(layer_cls, init_kwargs):
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    arguments = [
        name
        for name, param in inspect.signature(layer_cls.__init__).parameters.items()
        if name != "self" and param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL)
    ]
    missing = [name for name in arguments if name not in config]
    assert not missing, f"get_config() lacks constructor arguments {missing}"
    clone = layer_cls.from_config(config)
    assert clone.get_config() == config
    # Through the Keras serializer, by registered name and without custom_objects.
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == f"kcnn>{layer_cls.__name__}"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is layer_cls
    assert restored.get_config() == config
    return config


def _check_weight_counts(layer, trainable, non_trainable):
    counts = (len(layer.trainable_weights), len(layer.non_trainable_weights))
    assert counts == (trainable, non_trainable), (
        f"{layer.name} has (trainable, non-trainable) = {counts} weights, "
        f"expected {(trainable, non_trainable)}"
    )


def run_layer_checks(
    layer_cls,
    init_kwargs,
    input_shape,
    tmp_path,
    *,
    expected_output_shape,
    expected_num_trainable_weights,
    expected_num_non_trainable_weights=0,
    input_data=None,
    nonnegative=False,
    fit=True,
    mixed_precision=True,
    atol=1e-6,
):
    """Runs the harness on ``layer_cls(**init_kwargs)`` and returns the model built.

    ``input_shape`` and ``expected_output_shape`` include the batch size (keep
    it small). The expectations come from the test, worked out by hand: the
    layer's output and its ``compute_output_shape`` must both match them.
    ``expected_num_trainable_weights`` counts weight variables (a kernel and
    its bias are two), as does ``expected_num_non_trainable_weights`` (batch
    normalization's moving statistics, for instance).
    """
    expected_output_shape = tuple(expected_output_shape)
    symbolic_output_shape = (None, *expected_output_shape[1:])
    counts = (expected_num_trainable_weights, expected_num_non_trainable_weights)
    check_config_round_trip(layer_cls, init_kwargs)
    x = random_input(input_shape, nonnegative=nonnegative) if input_data is None else input_data

    # Symbolic and eager shapes, and compute_output_shape, against the expected shape.
    layer = layer_cls(**init_kwargs)
    inputs = keras.Input(shape=input_shape[1:])
    outputs = layer(inputs)
    assert tuple(outputs.shape) == symbolic_output_shape
    assert tuple(layer.compute_output_shape((None, *input_shape[1:]))) == symbolic_output_shape
    assert tuple(layer.compute_output_shape(tuple(input_shape))) == expected_output_shape
    _check_weight_counts(layer, *counts)
    model = keras.Model(inputs, outputs)
    y = call_layer(model, x, training=False)
    assert keras.backend.standardize_dtype(y.dtype) == layer.compute_dtype
    y = to_numpy(y)
    assert y.shape == expected_output_shape
    assert np.all(np.isfinite(y))

    # .keras round trip without custom_objects: same config, weights and outputs.
    path = tmp_path / f"{layer_cls.__name__}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    restored = loaded.layers[-1]
    assert type(restored) is layer_cls
    assert restored.get_config() == layer.get_config()
    _check_weight_counts(restored, *counts)
    assert len(restored.weights) == len(layer.weights)
    for saved, weight in zip(layer.weights, restored.weights):
        np.testing.assert_array_equal(to_numpy(weight), to_numpy(saved), err_msg=weight.path)
    np.testing.assert_allclose(
        to_numpy(call_layer(loaded, x, training=False)), y, rtol=1e-6, atol=atol
    )
    if _is_random(layer):
        y_train = to_numpy(call_layer(restored, x, training=True))
        assert y_train.shape == y.shape and np.all(np.isfinite(y_train))

    if fit:
        _check_fit_step(layer_cls, init_kwargs, x, expected_output_shape)
    if mixed_precision:
        _check_mixed_precision(layer_cls, init_kwargs, x, expected_output_shape, counts)
    return model


def _check_fit_step(layer_cls, init_kwargs, x, output_shape):
    """One ``fit`` step: finite loss, and the gradient reaches the weights."""
    layer = layer_cls(**init_kwargs)
    inputs = keras.Input(shape=x.shape[1:])
    # A trainable 1x1 mixing in front, so that parameter-free layers also
    # have something for the gradient to reach through them.
    prefix = keras.layers.Dense(x.shape[-1], kernel_initializer="identity", name="prefix")
    model = keras.Model(inputs, layer(prefix(inputs)))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = [to_numpy(w) for w in model.trainable_weights]
    target = random_input(output_shape, seed=1)
    history = model.fit(x, target, batch_size=len(x), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = [to_numpy(w) for w in model.trainable_weights]
    assert all(np.all(np.isfinite(w)) for w in after)
    changed = [not np.array_equal(b, a) for b, a in zip(before, after)]

    def owned_by(sublayer):
        return [
            changed[i]
            for i, w in enumerate(model.trainable_weights)
            if any(w is v for v in sublayer.trainable_weights)
        ]

    assert any(owned_by(prefix)), "no gradient reached the layer's input"
    own = owned_by(layer)
    if own:
        assert any(own), "none of the layer's weights was updated"


def _check_mixed_precision(layer_cls, init_kwargs, x, output_shape, counts):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer = layer_cls(**init_kwargs)
        assert layer.compute_dtype == "float16"
        # Training-mode calls are covered by the fit step; in float16 they are
        # checked for the random layers, whose training path differs most.
        calls = [False, True] if _is_random(layer) else [None]
        for training in calls:
            kwargs = {} if training is None else {"training": training}
            y = call_layer(layer, x, **kwargs)
            assert keras.backend.standardize_dtype(y.dtype) == "float16"
            assert tuple(y.shape) == output_shape
            assert tuple(layer.compute_output_shape(x.shape)) == output_shape
            assert np.all(np.isfinite(to_numpy(y)))
        # The same weights as in float32, every one of them stored in float32.
        _check_weight_counts(layer, *counts)
        for weight in layer.weights:
            assert keras.backend.standardize_dtype(weight.dtype) == "float32", weight.path
    finally:
        keras.config.set_dtype_policy(previous)


def check_channels_first_matches_last(make, x, *, rtol=1e-6, atol=0.0):
    """``make(data_format)`` gives the layer; both formats must agree on ``x`` (NHWC).

    The channels-first layer gets the channels-last layer's weights; returns
    the channels-first output (NCHW) as NumPy.
    """
    last = make("channels_last")
    first = make("channels_first")
    x_first = np.transpose(x, (0, 3, 1, 2))
    last.build(x.shape)
    first.build(x_first.shape)
    first.set_weights(last.get_weights())
    got = to_numpy(call_layer(first, x_first))
    np.testing.assert_allclose(
        np.transpose(got, (0, 2, 3, 1)), to_numpy(call_layer(last, x)), rtol=rtol, atol=atol
    )
    return got


def check_tflite(layer, input_shape, *, input_data=None, nonnegative=False, atol=1e-4):
    """Converts ``Input -> layer`` with TFLite builtins only and compares outputs.

    Returns the list of TFLite operator names, for callers that check them.
    """
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    x = random_input(input_shape, nonnegative=nonnegative) if input_data is None else input_data
    inputs = keras.Input(shape=input_shape[1:])
    model = keras.Model(inputs, layer(inputs))
    expected = to_numpy(call_layer(model, x, training=False))

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    # Builtins only: conversion fails if any op would need Flex (SELECT_TF_OPS).
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    flatbuffer = converter.convert()

    interpreter = Interpreter(model_content=flatbuffer)
    input_index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(input_index, x.shape)
    interpreter.allocate_tensors()
    op_names = [op["op_name"] for op in interpreter._get_ops_details()]
    assert not any("Flex" in name or name == "CUSTOM" for name in op_names), op_names
    interpreter.set_tensor(input_index, x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=atol)
    return op_names


def gradient(fn, x):
    """d sum(fn(x)) / dx as NumPy, on the TensorFlow or JAX backend."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        xt = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            total = tf.reduce_sum(fn(xt))
        return tape.gradient(total, xt).numpy()
    if BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        def total(v):
            # Random layers advance their seed state: keep the update inside
            # the trace instead of leaking a tracer into the variable.
            with keras.StatelessScope():
                return jnp.sum(fn(v))

        return np.asarray(jax.jit(jax.grad(total))(jnp.asarray(x)))
    pytest.skip(f"no gradient helper for the {BACKEND} backend")


def assert_validation_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()
