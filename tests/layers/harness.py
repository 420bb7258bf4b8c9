"""Shared checks for the kcnn layers, written on public Keras APIs only.

``run_layer_checks`` is this package's version of Keras'
``run_layer_test``: config round trip, ``.keras`` save/load without
``custom_objects``, output shape and dtype against ``compute_output_shape``,
one ``fit`` step, and ``mixed_float16``. ``check_tflite`` converts a model
holding the layer with TFLite builtins only and compares the interpreter with
Keras.
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


def _as_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


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


def run_layer_checks(
    layer_cls,
    init_kwargs,
    input_shape,
    tmp_path,
    *,
    input_data=None,
    nonnegative=False,
    fit=True,
    mixed_precision=True,
    atol=1e-6,
):
    """Runs the harness on ``layer_cls(**init_kwargs)`` and returns the model built.

    ``input_shape`` includes the batch size (keep it small).
    """
    check_config_round_trip(layer_cls, init_kwargs)
    x = random_input(input_shape, nonnegative=nonnegative) if input_data is None else input_data

    # Symbolic and eager shapes and dtype against compute_output_shape.
    layer = layer_cls(**init_kwargs)
    inputs = keras.Input(shape=input_shape[1:])
    outputs = layer(inputs)
    symbolic_shape = layer.compute_output_shape((None, *input_shape[1:]))
    assert tuple(outputs.shape) == tuple(symbolic_shape)
    model = keras.Model(inputs, outputs)
    y = call_layer(model, x, training=False)
    assert keras.backend.standardize_dtype(y.dtype) == layer.compute_dtype
    y = _as_numpy(y)
    assert y.shape == tuple(layer.compute_output_shape(x.shape))
    assert np.all(np.isfinite(y))

    # .keras round trip without custom_objects.
    path = tmp_path / f"{layer_cls.__name__}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.layers[-1]) is layer_cls
    assert loaded.layers[-1].get_config() == layer.get_config()
    np.testing.assert_allclose(
        _as_numpy(call_layer(loaded, x, training=False)), y, rtol=1e-6, atol=atol
    )
    if _is_random(layer):
        y_train = _as_numpy(call_layer(loaded.layers[-1], x, training=True))
        assert y_train.shape == y.shape and np.all(np.isfinite(y_train))

    if fit:
        _check_fit_step(layer_cls, init_kwargs, x, y.shape)
    if mixed_precision:
        _check_mixed_precision(layer_cls, init_kwargs, x)
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
    before = [_as_numpy(w) for w in model.trainable_weights]
    target = random_input(output_shape, seed=1)
    history = model.fit(x, target, batch_size=len(x), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = [_as_numpy(w) for w in model.trainable_weights]
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


def _check_mixed_precision(layer_cls, init_kwargs, x):
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
            assert tuple(y.shape) == tuple(layer.compute_output_shape(x.shape))
            assert np.all(np.isfinite(_as_numpy(y)))
        assert layer.weights is not None
        for weight in layer.weights:
            assert keras.backend.standardize_dtype(weight.dtype) == "float32", weight.path
    finally:
        keras.config.set_dtype_policy(previous)


def check_tflite(layer, input_shape, *, input_data=None, nonnegative=False, atol=1e-4):
    """Converts ``Input -> layer`` with TFLite builtins only and compares outputs.

    Returns the list of TFLite operator names, for callers that check them.
    """
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    x = random_input(input_shape, nonnegative=nonnegative) if input_data is None else input_data
    inputs = keras.Input(shape=input_shape[1:])
    model = keras.Model(inputs, layer(inputs))
    expected = _as_numpy(call_layer(model, x, training=False))

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
