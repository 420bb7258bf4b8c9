"""Weight clustering: k-means with a linear start, clustered layers whose centroids get the
summed gradient of their members, product quantization, bit packing and Huffman coding,
and ``kcnn compress cluster`` end to end."""

import json
import re

import keras
import numpy as np
import pytest
from typer.testing import CliRunner

from kcnn.cli.main import app
from kcnn.compress import cluster as C
from kcnn.errors import KcnnError
from kcnn.layers.clustered import ClusteredConv2D, ClusteredDense, ClusteredDepthwiseConv2D

RNG = np.random.default_rng(0)


def small_model():
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="logits")(x))


def numpy_of(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def distinct(a):
    return len(np.unique(numpy_of(a)))


# ----------------------------------------------------------------------------- k-means
def test_linear_init_spaces_2_to_the_bits_centroids_evenly():
    w = RNG.normal(size=(3, 3, 4, 8))
    init = C.linear_init(w, 2 ** 3)
    assert init.shape == (8,) and init[0] == w.min() and init[-1] == w.max()
    np.testing.assert_allclose(np.diff(init), (w.max() - w.min()) / 7)


def test_scalar_kmeans_starts_from_the_linear_init_once(monkeypatch):
    import sklearn.cluster

    seen = {}

    class Recording(sklearn.cluster.KMeans):
        def fit(self, x, *args, **kwargs):
            seen.update(init=np.array(self.init), n_init=self.n_init, k=self.n_clusters)
            return super().fit(x, *args, **kwargs)

    monkeypatch.setattr(sklearn.cluster, "KMeans", Recording)
    w = RNG.normal(size=(5, 7)).astype("float32")
    C.cluster_scalar(w, 2)
    assert seen["k"] == 4 and seen["n_init"] == 1
    np.testing.assert_allclose(seen["init"][:, 0], np.linspace(w.min(), w.max(), 4), rtol=1e-6)


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_scalar_clustering_shares_at_most_2_to_the_bits_values(bits):
    w = RNG.normal(size=(3, 3, 4, 8)).astype("float32")
    codebook, codes = C.cluster_scalar(w, bits)
    assert codebook.shape == (2 ** bits,) and codes.shape == w.shape and codebook.dtype == "float32"
    assert np.all(np.diff(codebook) > 0)  # sorted, no duplicates
    shared = C.reconstruct(codebook, codes, w.shape)
    assert distinct(shared) <= 2 ** bits
    # Lloyd's last step assigns every weight its nearest centroid.
    nearest = np.abs(w[..., None] - codebook).min(-1)
    np.testing.assert_allclose(np.abs(w - shared), nearest, atol=1e-6)


def test_a_kernel_with_few_values_keeps_them_exactly():
    w = np.array([[0.5, -1.0], [2.0, 0.5], [-1.0, 2.0]], "float32")
    codebook, codes = C.cluster_scalar(w, 4)
    np.testing.assert_array_equal(codebook, [-1.0, 0.5, 2.0])
    np.testing.assert_array_equal(C.reconstruct(codebook, codes, w.shape), w)


def test_product_quantization_shapes_and_bits_per_weight():
    w = RNG.normal(size=(16, 32)).astype("float32")  # a Dense kernel: 16 inputs, 32 outputs
    codebook, codes = C.cluster_product(w, bits=2, subvector=4, row_axes=1)
    assert codebook.shape == (4, 4, 4) and codes.shape == (4, 32)  # (16/4, 2^2, 4), (16/4, 32)
    shared = C.reconstruct(codebook, codes, w.shape, 4)
    for j in range(4):  # every column's sub-vector j is one of block j's 4 centroids
        assert len(np.unique(shared[4 * j:4 * j + 4].T, axis=0)) <= 4
    np.testing.assert_array_equal(shared[4:8, 7], codebook[1, codes[1, 7]])
    clusters = C.LayerClusters("fc", "Dense", w.shape, codebook, codes, subvector=4)
    _, storage = C.pack_clusters([clusters], bits=2)
    s = storage["fc"]
    # 4·4·4 float32 centroids = 256 bytes, 4·32 two-bit indices = 32 bytes, for 512 weights.
    assert s["codebook_bytes"] == 256 and s["packed_bytes"] == 288 and s["float_bytes"] == 2048
    assert s["index_bits_per_weight"] == 0.5 and s["bits_per_weight"] == pytest.approx(4.5)


def test_product_quantization_of_a_conv_kernel_and_the_scalar_fallback():
    conv = keras.layers.Conv2D(20, 3)
    conv.build((None, 8, 8, 4))  # kernel (3, 3, 4, 20): 36 rows, 20 columns
    plan = C.cluster_layer(conv, bits=3, method="product", subvector=6, seed=0)
    assert plan.codebook.shape == (6, 8, 6) and plan.codes.shape == (6, 20) and plan.note is None
    first = keras.layers.Conv2D(20, 3)
    first.build((None, 8, 8, 1))  # 9 rows: 6 does not divide them
    plan = C.cluster_layer(first, bits=3, method="product", subvector=6, seed=0)
    assert plan.subvector is None and plan.codebook.shape == (8,) and "does not divide" in plan.note


# ----------------------------------------------------------------------------- layers
def test_clustered_layers_compute_their_plain_twins():
    x = RNG.normal(size=(2, 6, 6, 4)).astype("float32")
    cases = [
        (ClusteredConv2D(3, 3, clusters=4, subvector=None, padding="same"),
         keras.layers.Conv2D(3, 3, padding="same"), x),
        (ClusteredConv2D(5, 3, clusters=4, subvector=9), keras.layers.Conv2D(5, 3), x),
        (ClusteredDepthwiseConv2D(3, clusters=4, subvector=3, depth_multiplier=2),
         keras.layers.DepthwiseConv2D(3, depth_multiplier=2), x),
        (ClusteredDense(7, clusters=8, subvector=2), keras.layers.Dense(7), x[:, 0, 0]),
    ]
    for clustered, plain, inputs in cases:
        clustered.build(inputs.shape)
        plain.build(inputs.shape)
        codebook = RNG.normal(size=clustered.codebook.shape).astype("float32")
        codes = RNG.integers(0, clustered.clusters, size=clustered.codes.shape)
        clustered.set_clusters(codebook, codes)
        clustered.bias.assign(RNG.normal(size=clustered.bias.shape).astype("float32"))
        kernel = C.reconstruct(codebook, codes, plain.kernel.shape, clustered.subvector)
        np.testing.assert_array_equal(numpy_of(clustered.kernel), kernel)
        plain.set_weights([kernel, numpy_of(clustered.bias)])
        np.testing.assert_allclose(numpy_of(clustered(inputs)), numpy_of(plain(inputs)),
                                   rtol=1e-5, atol=1e-5)


def test_clustered_layers_save_load_and_mixed_precision(tmp_path):
    inputs = keras.Input((6, 6, 4))
    x = ClusteredConv2D(6, 3, clusters=4, subvector=12, name="c")(inputs)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, ClusteredDense(3, clusters=2, name="d")(x))
    for layer in (model.get_layer("c"), model.get_layer("d")):
        layer.set_clusters(RNG.normal(size=layer.codebook.shape),
                           RNG.integers(0, layer.clusters, size=layer.codes.shape))
        assert type(layer).from_config(layer.get_config()).get_config() == layer.get_config()
    x = RNG.normal(size=(2, 6, 6, 4)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")  # no custom_objects
    assert type(loaded.get_layer("c")) is ClusteredConv2D
    np.testing.assert_array_equal(numpy_of(loaded.get_layer("c").codes),
                                  numpy_of(model.get_layer("c").codes))
    np.testing.assert_allclose(numpy_of(loaded(x)), numpy_of(model(x)), rtol=1e-6)
    with pytest.raises(ValueError, match="subvector"):
        ClusteredDense(3, subvector=0)
    with pytest.raises(ValueError, match="must divide"):
        ClusteredDense(3, subvector=5).build((None, 8))
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer = ClusteredConv2D(2, 3, clusters=4)
        y = layer(x)
        assert keras.backend.standardize_dtype(y.dtype) == "float16"
        assert layer.codebook.dtype == "float32" and layer.codes.dtype == "int32"
    finally:
        keras.config.set_dtype_policy(policy)


@pytest.mark.parametrize("subvector", [None, 2])
def test_a_centroid_gets_the_sum_of_its_members_gradients(subvector):
    import tensorflow as tf

    layer = ClusteredDense(3, clusters=4, subvector=subvector)
    layer.build((None, 6))
    codebook = RNG.normal(size=layer.codebook.shape).astype("float32")
    codes = RNG.integers(0, 4, size=layer.codes.shape)
    layer.set_clusters(codebook, codes)
    x = tf.constant(RNG.normal(size=(5, 6)).astype("float32"))
    r = tf.constant(RNG.normal(size=(5, 3)).astype("float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) * r)
    grad = numpy_of(tf.convert_to_tensor(tape.gradient(loss, layer.codebook)))
    kernel = tf.Variable(C.reconstruct(codebook, codes, (6, 3), subvector))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum((tf.matmul(x, kernel) + numpy_of(layer.bias)) * r)
    kernel_grad = tape.gradient(loss, kernel).numpy()
    if subvector is None:  # a segment sum over the weights' codes
        expected = np.bincount(codes.ravel(), weights=kernel_grad.ravel(), minlength=4)
    else:  # block j, centroid c, entry d: the sum over the columns o coded c in block j
        expected = np.zeros(codebook.shape)
        for j in range(3):
            for o in range(3):
                expected[j, codes[j, o]] += kernel_grad[2 * j:2 * j + 2, o]
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


def test_clusterize_selects_by_full_name_and_bake_gives_plain_layers():
    model = small_model()
    x = RNG.normal(size=(3, 6, 6, 2)).astype("float32")
    clustered, plans = C.clusterize(model, bits=2, pattern=re.compile("conv1|logits"))
    assert [p.layer for p in plans] == ["conv1", "logits"]
    assert type(clustered.get_layer("conv1")) is ClusteredConv2D
    assert type(clustered.get_layer("dw")) is keras.layers.DepthwiseConv2D
    plain = C.bake(clustered, C.read_clusters(clustered, plans))
    assert [type(layer) for layer in plain.layers] == [type(layer) for layer in model.layers]
    assert distinct(plain.get_layer("conv1").kernel) <= 4
    assert distinct(plain.get_layer("logits").kernel) <= 4
    np.testing.assert_array_equal(numpy_of(plain.get_layer("dw").kernel),
                                  numpy_of(model.get_layer("dw").kernel))
    np.testing.assert_allclose(numpy_of(plain(x)), numpy_of(clustered(x)), rtol=1e-5, atol=1e-6)
    _, every = C.clusterize(model, bits=2)
    assert [p.layer for p in every] == ["conv1", "dw", "logits"]
    with pytest.raises(KcnnError, match="matches none of the Conv2D"):
        C.select_layers(model, re.compile("conv"))  # a full match, not a search


# ----------------------------------------------------------------------------- packing
@pytest.mark.parametrize("bits", range(1, 9))
def test_bit_packing_round_trip(bits):
    codes = RNG.integers(0, 2 ** bits, size=37)
    packed = C.pack_codes(codes, bits)
    assert packed.dtype == np.uint8 and packed.size == -(-37 * bits // 8)
    np.testing.assert_array_equal(C.unpack_codes(packed, bits, 37), codes)


def test_huffman_lengths_codes_and_round_trip():
    assert C.huffman_lengths([4, 1, 1, 2, 0]).tolist() == [1, 3, 3, 2, 0]
    assert C.canonical_codes([1, 3, 3, 2, 0])[:4] == [0b0, 0b110, 0b111, 0b10]
    assert C.huffman_lengths([0, 9, 0]).tolist() == [0, 1, 0]  # a lone symbol: one bit each
    skewed = RNG.choice(16, size=5000, p=np.r_[0.5, np.full(15, 0.5 / 15)])
    for symbols in (skewed, RNG.integers(0, 16, 999), np.full(10, 3), np.array([], int)):
        lengths = C.huffman_lengths(np.bincount(symbols, minlength=16))
        used = lengths[lengths > 0]
        if len(used) > 1:
            assert np.sum(2.0 ** -used) == pytest.approx(1.0)  # a complete prefix code
        stream, nbits = C.huffman_encode(symbols, lengths)
        assert nbits == int(lengths[symbols].sum()) and stream.size == -(-nbits // 8)
        np.testing.assert_array_equal(C.huffman_decode(stream, nbits, len(symbols), lengths),
                                      symbols)
    lengths = C.huffman_lengths(np.bincount(skewed, minlength=16))
    assert C.huffman_encode(skewed, lengths)[1] < 0.8 * 4 * len(skewed)  # beats 4-bit codes


def test_unpacking_clustered_npz_reproduces_the_kernels(tmp_path):
    model = small_model()
    _, plans = C.clusterize(model, bits=3, method="product", subvector=2)
    assert {p.layer: p.subvector for p in plans} == {"conv1": 2, "dw": None, "logits": 2}
    arrays, storage = C.pack_clusters(plans, bits=3)
    (tmp_path / "clustered.npz").write_bytes(C.npz_bytes(arrays))
    for huffman in (False, True):
        kernels = C.unpack_kernels(tmp_path / "clustered.npz", huffman=huffman)
        for p in plans:
            np.testing.assert_array_equal(kernels[p.layer], p.kernel())
    assert "does not divide" in storage["dw"]["fallback"]
    summary = C.storage_summary(storage, model, 3)
    assert summary["packed_bytes"] == sum(s["packed_bytes"] for s in storage.values())
    assert summary["ratio"] == pytest.approx(summary["packed_bytes"] / summary["float_bytes"])


# ----------------------------------------------------------------------------- the command
RUNNER = CliRunner()


def invoke(*args):
    return RUNNER.invoke(app, ["compress", "cluster", *map(str, args)], env={"KCNN_DEBUG": "0"})


def test_cluster_cli_end_to_end(trained_run, tmp_path):
    from kcnn.engine.evaluate import evaluate
    from kcnn.export.api import export_tflite
    from kcnn.saving import load_keras_model

    out = tmp_path / "clustered"
    res = invoke(trained_run, "--bits", "4", "--finetune-epochs", "1", "--run-dir", out)
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert lines[-1] == str(out)
    assert any(line.startswith("| clustered kernels, KiB (float32 → packed) |") for line in lines)
    assert {"model.keras", "clustered.npz", "compression.json", "compress.json", "metrics.json",
            "recipe.yaml"} <= {p.name for p in out.iterdir()}
    report = json.loads((out / "compression.json").read_text())
    info = json.loads((out / "compress.json").read_text())
    assert info["method"] == "cluster-scalar" and info["ratio"] == report["ratio"]
    for key in ("bits_per_weight", "packed_bytes", "float_bytes", "ratio", "model_ratio",
                "huffman_bytes", "accuracy_before", "accuracy_clustered", "accuracy_finetuned"):
        assert key in report, key
    assert set(report["layers"]) == {"conv1_1", "conv2_1", "logits"}
    assert report["ratio"] == pytest.approx(report["packed_bytes"] / report["float_bytes"])
    assert report["ratio"] < 0.2 and 0 < report["huffman_bytes"] < report["float_bytes"]
    assert report["accuracy_finetuned"] == pytest.approx(info["after"]["accuracy"])

    model = load_keras_model(out / "model.keras")  # plain layers holding the shared values
    kernels = C.unpack_kernels(out / "clustered.npz")
    huffman = C.unpack_kernels(out / "clustered.npz", huffman=True)
    for name in report["layers"]:
        kernel = numpy_of(model.get_layer(name).kernel)
        assert type(model.get_layer(name)).__name__ in ("Conv2D", "Dense")
        assert distinct(kernel) <= 16
        np.testing.assert_array_equal(kernels[name], kernel)
        np.testing.assert_array_equal(huffman[name], kernel)
    # Fine-tuning moved the centroids and kept every weight's centroid.
    _, initial = C.clusterize(load_keras_model(trained_run / "model.keras"), bits=4)
    with np.load(out / "clustered.npz") as arrays:
        for plan in initial:
            codes = C.unpack_codes(arrays[f"{plan.layer}.codes"], 4, plan.codes.size)
            np.testing.assert_array_equal(codes, plan.codes.ravel())
            assert not np.allclose(arrays[f"{plan.layer}.codebook"], plan.codebook)

    metrics = evaluate(out, write=False)
    assert metrics["accuracy"] == pytest.approx(info["after"]["accuracy"])
    export = export_tflite(out, out=tmp_path / "clustered.tflite", latency_runs=3)
    before = info["before"]
    assert export["size_bytes"] == pytest.approx(before["tflite_bytes"], rel=0.05)
    assert export["gzip_bytes"] < 0.75 * before["tflite_gzip_bytes"]


def test_product_quantization_run_packs_and_reports(trained_run, tmp_path):
    from kcnn.saving import load_keras_model

    out, info = C.cluster_run(trained_run, bits=2, method="product", finetune_epochs=0,
                              out=tmp_path / "pq", tflite=False, log=lambda msg: None)
    assert info["method"] == "cluster-product" and info["quantization"] == "product"
    layers = info["layers"]
    assert "does not divide the kernel's 9 rows" in layers["conv1_1"]["fallback"]
    conv = layers["conv2_1"]  # kernel 3×3×8×16: 72 rows in 18 blocks of 4, 16 columns
    assert conv["method"] == "product" and conv["clusters"] == 4
    assert conv["index_bits_per_weight"] == 0.5
    # 18·4·4 float32 centroids (1152 bytes) + 18·16 two-bit indices (72 bytes), 1152 weights.
    assert conv["packed_bytes"] == 1224 and conv["bits_per_weight"] == pytest.approx(8.5)
    assert info["accuracy_finetuned"] == info["accuracy_clustered_bn_recalibrated"]
    model = load_keras_model(out / "model.keras")
    for name, kernel in C.unpack_kernels(out / "clustered.npz", huffman=True).items():
        np.testing.assert_array_equal(kernel, numpy_of(model.get_layer(name).kernel))
    assert json.loads((out / "compression.json").read_text())["layers"] == layers


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--bits", "0"], "--bits: must be an integer from 1 to 8 (got 0)"),
        (["--bits", "9"], "--bits: must be an integer from 1 to 8 (got 9)"),
        (["--method", "kmeans"], "--method: unknown method 'kmeans'; valid: scalar, product"),
        (["--subvector", "2"], "--subvector goes with --method product"),
        (["--layers", "conv"], "--layers: 'conv' matches none of the Conv2D, Dense or "
                               "DepthwiseConv2D layers (conv1_1, conv2_1, logits)"),
        (["--layers", "conv(["], "--layers: not a regular expression"),
    ],
)
def test_bad_options_exit_2_and_write_nothing(args, expected, trained_run, tmp_path):
    res = invoke(trained_run, *args, "--run-dir", tmp_path / "out")
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith(f"error: {expected}") and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
