"""``kcnn compress cluster``: weight sharing by k-means (book: 标量量化 and 乘积量化).

* **Scalar quantization** (Gong et al., 2014; Han et al., 2016, "Deep
  Compression"): per selected Conv2D / Dense / DepthwiseConv2D kernel, k-means
  with ``2^bits`` centroids over the kernel's values, initialised linearly
  (evenly spaced between the kernel's minimum and maximum, one run, as Deep
  Compression recommends: it keeps the rare large weights their own
  centroids). Each weight stores the index of its centroid: ``bits`` bits.
* **Product quantization** (Gong et al., 2014): the kernel read as a matrix
  ``(rows, cols)`` (Conv2D ``kh·kw·cin × cout``, Dense ``in × out``,
  DepthwiseConv2D ``kh·kw × cin·m``) is cut along its rows into sub-vectors of
  length ``D``; per block of ``D`` rows, k-means with ``2^bits`` centroids over
  the ``cols`` sub-vectors. One index per sub-vector: ``bits / D`` bits per
  weight, plus a codebook of ``rows × 2^bits`` floats per layer, so it pays
  when a layer has many more output channels than centroids. A layer whose
  rows ``D`` does not divide falls back to scalar quantization (reported).

Fine-tuning keeps the sharing: the selected layers become
:mod:`kcnn.layers.clustered` layers whose kernel is ``codebook[codes]``, so the
gradient of a centroid is the sum of its members' gradients and only the
codebooks (and the unclustered weights, biases, BN) train. BatchNormalization
statistics are re-estimated after clustering and after fine-tuning, as in
:mod:`kcnn.compress.prune`. The result is baked back into plain Keras layers
whose kernels hold the shared values (``model.keras``: at most ``2^bits``
distinct values per scalar-clustered kernel), and packed into
``clustered.npz``: the codebooks, the indices bit-packed at ``bits`` bits each
(``numpy.packbits``) and, as in Deep Compression, a canonical Huffman code of
each layer's index stream. :func:`unpack_kernels` restores the kernels from it
exactly.

Written for Keras 3 here: the TensorFlow Model Optimization Toolkit's weight
clustering (``tfmot.clustering``) supports only Keras 2 models, and no
maintained library does this for Keras 3. The k-means itself is
scikit-learn's ``KMeans``.
"""

from __future__ import annotations

import heapq
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kcnn.choices import ClusterMethod, values
from kcnn.compress import common
from kcnn.errors import KcnnError

METHODS = values(ClusterMethod)
MAX_BITS = 8
DEFAULT_SUBVECTOR = 4
CLUSTERABLE = ("Conv2D", "Dense", "DepthwiseConv2D")
NPZ_FORMAT = 1


# ----------------------------------------------------------------------------- options
def check_options(bits: int, method: str, subvector: int | None, layers: str | None,
                  finetune_epochs: int, lr: float | None) -> re.Pattern | None:
    """One line per bad option, before anything heavy is loaded; the compiled ``--layers``."""
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= MAX_BITS:
        raise KcnnError(f"--bits: must be an integer from 1 to {MAX_BITS} (got {bits})")
    if method not in METHODS:
        raise KcnnError(f"--method: unknown method {method!r}; valid: {', '.join(METHODS)}")
    if subvector is not None:
        if method != "product":
            raise KcnnError("--subvector goes with --method product")
        if not isinstance(subvector, int) or isinstance(subvector, bool) or subvector < 1:
            raise KcnnError(f"--subvector: must be a positive integer (got {subvector})")
    common.check_finetune(finetune_epochs, lr)
    if layers is None:
        return None
    try:
        return re.compile(layers)
    except re.error as err:
        raise KcnnError(f"--layers: not a regular expression ({err}): {layers!r}") from None


def select_layers(model, pattern: re.Pattern | None) -> list:
    """The model's top-level Conv2D, Dense and DepthwiseConv2D layers (those exact
    classes) whose names ``pattern`` matches in full (all of them without one)."""
    candidates = [layer for layer in model.layers if type(layer).__name__ in CLUSTERABLE
                  and type(layer).__module__.startswith("keras.")]
    if not candidates:
        raise KcnnError("found no Conv2D, Dense or DepthwiseConv2D layer to cluster "
                        "at the top level of the model")
    chosen = [layer for layer in candidates if pattern is None or pattern.fullmatch(layer.name)]
    if not chosen:
        names = ", ".join(layer.name for layer in candidates)
        raise KcnnError(f"--layers: {pattern.pattern!r} matches none of the Conv2D, Dense or "
                        f"DepthwiseConv2D layers ({names})")
    return chosen


# ----------------------------------------------------------------------------- k-means
def linear_init(values: np.ndarray, clusters: int) -> np.ndarray:
    """Deep Compression's linear initialisation: ``clusters`` centroids evenly spaced
    between the smallest and the largest value."""
    v = np.asarray(values, dtype="float64")
    return np.linspace(v.min(), v.max(), clusters)


def _kmeans(points: np.ndarray, clusters: int, init, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=clusters, init=init, n_init=1, random_state=seed).fit(points)
    return km.cluster_centers_, km.labels_


def cluster_scalar(kernel: np.ndarray, bits: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(codebook, codes)``: k-means over the kernel's values with ``2^bits`` linearly
    initialised centroids (fewer when the kernel has fewer distinct values). The
    codebook is sorted (float32); ``codes`` has the kernel's shape."""
    w = np.asarray(kernel, dtype="float64")
    flat = w.ravel()
    clusters = min(2 ** bits, len(np.unique(flat)))
    init = linear_init(flat, clusters)[:, None]
    centers, labels = _kmeans(flat[:, None], clusters, init, seed)
    order = np.argsort(centers[:, 0], kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    codes = rank[labels].reshape(w.shape).astype("int32")
    return centers[order, 0].astype("float32"), codes


def cluster_product(kernel: np.ndarray, bits: int, subvector: int, row_axes: int,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(codebook (rows/D, k, D), codes (rows/D, cols))``: the kernel as a matrix whose
    rows are its first ``row_axes`` axes, cut into sub-vectors of length ``subvector``
    along the rows; k-means (k-means++ start, ``k = min(2^bits, cols)``) per block."""
    w = np.asarray(kernel, dtype="float64")
    rows = int(np.prod(w.shape[:row_axes]))
    cols = w.size // rows
    if rows % subvector:
        raise KcnnError(f"--subvector: {subvector} does not divide the kernel's {rows} rows")
    parts = rows // subvector
    blocks = w.reshape(parts, subvector, cols).transpose(0, 2, 1)  # (parts, cols, D)
    clusters = min(2 ** bits, cols)
    codebook = np.empty((parts, clusters, subvector), dtype="float32")
    codes = np.empty((parts, cols), dtype="int32")
    for j, points in enumerate(blocks):
        k = min(clusters, len(np.unique(points, axis=0)))
        centers, labels = _kmeans(points, k, "k-means++", seed + j)
        codebook[j, :k] = centers
        codebook[j, k:] = centers[-1]  # unused padding: every block has ``clusters`` rows
        codes[j] = labels
    return codebook, codes


def reconstruct(codebook: np.ndarray, codes: np.ndarray, shape, subvector: int | None = None):
    """The kernel that a codebook and its codes describe (NumPy twin of
    :func:`kcnn.layers.clustered.shared_kernel`)."""
    codebook, codes = np.asarray(codebook), np.asarray(codes)
    if subvector is None:
        return codebook[codes].reshape(shape)
    parts, _, length = codebook.shape
    sub = codebook[np.arange(parts)[:, None], codes]  # (parts, cols, D)
    return sub.transpose(0, 2, 1).reshape(parts * length, -1).reshape(shape)


@dataclass
class LayerClusters:
    """One clustered kernel: ``kind`` is the plain layer class name."""

    layer: str
    kind: str
    shape: tuple[int, ...]
    codebook: np.ndarray
    codes: np.ndarray
    subvector: int | None = None
    note: str | None = None

    @property
    def clusters(self) -> int:
        return int(self.codebook.shape[0] if self.subvector is None else self.codebook.shape[1])

    def kernel(self) -> np.ndarray:
        return reconstruct(self.codebook, self.codes, self.shape, self.subvector)


def cluster_layer(layer, bits: int, method: str, subvector: int, seed: int) -> LayerClusters:
    """k-means on one plain layer's kernel (product quantization falls back to scalar
    when ``subvector`` does not divide the kernel's rows)."""
    from kcnn.layers.clustered import CLUSTERED_LAYERS

    kind = type(layer).__name__
    kernel = np.asarray(layer.kernel.numpy())
    note = None
    if method == "product":
        row_axes = CLUSTERED_LAYERS[kind].ROW_AXES
        rows = int(np.prod(kernel.shape[:row_axes]))
        if rows % subvector == 0:
            codebook, codes = cluster_product(kernel, bits, subvector, row_axes, seed)
            return LayerClusters(layer.name, kind, kernel.shape, codebook, codes, subvector)
        note = f"scalar: --subvector {subvector} does not divide the kernel's {rows} rows"
    codebook, codes = cluster_scalar(kernel, bits, seed)
    return LayerClusters(layer.name, kind, kernel.shape, codebook, codes, None, note)


# ----------------------------------------------------------------------------- models
def _copy_weights(source_model, target_model, skip=()) -> dict[str, Any]:
    by_name = {layer.name: layer for layer in target_model.layers}
    for layer in source_model.layers:
        if layer.name not in skip and layer.weights:
            by_name[layer.name].set_weights(layer.get_weights())
    return by_name


def clusterize(model, *, bits: int = 4, method: str = "scalar", subvector: int | None = None,
               pattern: re.Pattern | None = None, seed: int = 0):
    """``(model, [LayerClusters])``: a copy of ``model`` whose selected layers are
    :mod:`kcnn.layers.clustered` layers holding the k-means codebooks and codes."""
    import keras

    from kcnn.layers.clustered import CLUSTERED_LAYERS

    subvector = subvector or DEFAULT_SUBVECTOR
    plans = {layer.name: cluster_layer(layer, bits, method, subvector, seed)
             for layer in select_layers(model, pattern)}

    def clone(layer):
        config = layer.get_config()
        plan = plans.get(layer.name)
        if plan is None:
            return layer.__class__.from_config(config)
        return CLUSTERED_LAYERS[plan.kind].from_config(
            {**config, "clusters": plan.clusters, "subvector": plan.subvector})

    new = keras.models.clone_model(model, clone_function=clone)
    by_name = _copy_weights(model, new, skip=plans)
    for name, plan in plans.items():
        target, original = by_name[name], model.get_layer(name)
        target.set_clusters(plan.codebook, plan.codes)
        if original.bias is not None:
            target.bias.assign(original.bias.numpy())
    return new, list(plans.values())


def read_clusters(model, previous: list[LayerClusters]) -> list[LayerClusters]:
    """The clustered layers' codebooks and codes now (after fine-tuning)."""
    out = []
    for plan in previous:
        layer = model.get_layer(plan.layer)
        out.append(LayerClusters(plan.layer, plan.kind, plan.shape,
                                 np.asarray(layer.codebook.numpy(), dtype="float32"),
                                 np.asarray(layer.codes.numpy(), dtype="int32"),
                                 plan.subvector, plan.note))
    return out


def bake(model, clusters: list[LayerClusters]):
    """A plain model (Conv2D / Dense / DepthwiseConv2D again, no optimizer) whose
    clustered kernels hold the shared values, copied from the codebooks."""
    import keras

    plans = {c.layer: c for c in clusters}

    def clone(layer):
        config = layer.get_config()
        plan = plans.get(layer.name)
        if plan is None:
            return layer.__class__.from_config(config)
        config = {k: v for k, v in config.items() if k not in ("clusters", "subvector")}
        return getattr(keras.layers, plan.kind).from_config(config)

    new = keras.models.clone_model(model, clone_function=clone)
    by_name = _copy_weights(model, new, skip=plans)
    for name, plan in plans.items():
        bias = model.get_layer(name).bias
        by_name[name].set_weights([plan.kernel()] + ([bias.numpy()] if bias is not None else []))
    return new


# ----------------------------------------------------------------------------- packing
def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """The codes (C order) written ``bits`` bits each, most significant bit first, packed
    8 bits to a byte (``numpy.packbits``; the last byte zero-padded)."""
    flat = np.asarray(codes, dtype="int64").ravel()
    shifts = np.arange(bits - 1, -1, -1)
    return np.packbits(((flat[:, None] >> shifts) & 1).astype("uint8").ravel())


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``count`` codes as int64."""
    raw = np.unpackbits(np.asarray(packed, dtype="uint8"))[: count * bits].reshape(count, bits)
    return raw.astype("int64") @ (1 << np.arange(bits - 1, -1, -1))


def huffman_lengths(counts) -> np.ndarray:
    """Huffman code lengths for symbols with these counts (0 for unused symbols; a lone
    used symbol gets length 1). Ties break towards the smaller symbol."""
    counts = np.asarray(counts, dtype="int64")
    lengths = np.zeros(len(counts), dtype="int64")
    used = np.flatnonzero(counts)
    if len(used) == 1:
        lengths[used] = 1
    heap = [(int(counts[s]), int(s), [int(s)]) for s in used]
    heapq.heapify(heap)
    while len(heap) > 1:
        c1, t1, s1 = heapq.heappop(heap)
        c2, t2, s2 = heapq.heappop(heap)
        lengths[s1 + s2] += 1
        heapq.heappush(heap, (c1 + c2, min(t1, t2), s1 + s2))
    return lengths


def canonical_codes(lengths) -> list[int]:
    """Canonical Huffman codes: by (length, symbol), each code the previous plus one,
    shifted left when the length grows."""
    lengths = [int(n) for n in lengths]
    codes = [0] * len(lengths)
    code, previous = 0, 0
    for s in sorted((s for s, n in enumerate(lengths) if n), key=lambda s: (lengths[s], s)):
        code <<= lengths[s] - previous
        codes[s], previous, code = code, lengths[s], code + 1
    return codes


def huffman_encode(symbols: np.ndarray, lengths) -> tuple[np.ndarray, int]:
    """``(packed bits, number of bits)`` of ``symbols`` in the canonical code of ``lengths``."""
    symbols = np.asarray(symbols, dtype="int64").ravel()
    lengths = np.asarray(lengths, dtype="int64")
    if symbols.size == 0:
        return np.zeros(0, dtype="uint8"), 0
    codes = np.array(canonical_codes(lengths), dtype="int64")
    shift = lengths[:, None] - 1 - np.arange(int(lengths.max()))  # MSB first
    valid = shift >= 0
    table = ((codes[:, None] >> np.maximum(shift, 0)) & 1).astype("uint8")
    bits = table[symbols][valid[symbols]]
    return np.packbits(bits), int(bits.size)


def huffman_decode(packed: np.ndarray, nbits: int, count: int, lengths) -> np.ndarray:
    """Inverse of :func:`huffman_encode` (canonical decoding, one bit at a time)."""
    lengths = [int(n) for n in lengths]
    bits = np.unpackbits(np.asarray(packed, dtype="uint8"))[:nbits].tolist()
    order = sorted((s for s, n in enumerate(lengths) if n), key=lambda s: (lengths[s], s))
    longest = max(lengths, default=0)
    per_length = [0] * (longest + 1)
    for s in order:
        per_length[lengths[s]] += 1
    out = np.empty(count, dtype="int64")
    pos = 0
    for i in range(count):
        code = first = index = 0
        for n in range(1, longest + 1):
            code |= bits[pos]
            pos += 1
            if code < first + per_length[n]:
                out[i] = order[index + code - first]
                break
            index += per_length[n]
            first = (first + per_length[n]) << 1
            code <<= 1
        else:
            raise ValueError("corrupt Huffman stream")
    return out


def pack_clusters(clusters: list[LayerClusters], bits: int) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays of ``clustered.npz`` and, per layer, what they cost in bytes."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {"format": NPZ_FORMAT, "bits": bits, "layers": []}
    storage: dict[str, Any] = {}
    for c in clusters:
        codes = np.asarray(c.codes).ravel()
        k = int(c.codebook.shape[0] if c.subvector is None else c.codebook.shape[1])
        packed = pack_codes(codes, bits)
        lengths = huffman_lengths(np.bincount(codes, minlength=k))
        stream, nbits = huffman_encode(codes, lengths)
        codebook = np.asarray(c.codebook, dtype="float32")
        arrays.update({f"{c.layer}.codebook": codebook, f"{c.layer}.codes": packed,
                       f"{c.layer}.huffman_lengths": lengths.astype("uint8"),
                       f"{c.layer}.huffman": stream})
        meta["layers"].append({"layer": c.layer, "kind": c.kind, "shape": list(c.shape),
                               "codes_shape": list(np.shape(c.codes)), "subvector": c.subvector,
                               "clusters": k, "huffman_bits": nbits})
        weights = int(np.prod(c.shape))
        packed_bytes = codebook.nbytes + packed.nbytes
        huffman_bytes = codebook.nbytes + k + stream.nbytes  # + one length byte per symbol
        storage[c.layer] = {
            "method": "scalar" if c.subvector is None else "product", "subvector": c.subvector,
            "clusters": k, "weights": weights, "float_bytes": 4 * weights,
            "codebook_bytes": int(codebook.nbytes), "packed_bytes": int(packed_bytes),
            "huffman_bytes": int(huffman_bytes),
            "index_bits_per_weight": bits / (c.subvector or 1),
            "bits_per_weight": 8 * packed_bytes / weights,
            "ratio": packed_bytes / (4 * weights),
            **({"fallback": c.note} if c.note else {}),
        }
    arrays["__meta__"] = np.array(json.dumps(meta))
    return arrays, storage


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # not compressed: the packing is the compression
    return buf.getvalue()


def unpack_kernels(source, huffman: bool = False) -> dict[str, np.ndarray]:
    """Kernels by layer name from ``clustered.npz`` (a path, or its loaded arrays), decoded
    from the bit-packed indices or, with ``huffman=True``, from the Huffman streams."""
    if isinstance(source, (str, Path)):
        with np.load(source) as arrays:
            return unpack_kernels(dict(arrays), huffman)
    arrays = source
    meta = json.loads(str(arrays["__meta__"]))
    kernels = {}
    for entry in meta["layers"]:
        name = entry["layer"]
        count = int(np.prod(entry["codes_shape"]))
        if huffman:
            codes = huffman_decode(arrays[f"{name}.huffman"], entry["huffman_bits"], count,
                                   arrays[f"{name}.huffman_lengths"])
        else:
            codes = unpack_codes(arrays[f"{name}.codes"], meta["bits"], count)
        codes = codes.reshape(entry["codes_shape"])
        kernels[name] = reconstruct(arrays[f"{name}.codebook"], codes, tuple(entry["shape"]),
                                    entry["subvector"])
    return kernels


def storage_summary(storage: dict[str, Any], model, bits: int) -> dict[str, Any]:
    """Totals over the clustered kernels, and over all the model's weights (the rest
    counted as float32)."""
    clustered = sum(s["weights"] for s in storage.values())
    float_bytes = 4 * clustered
    packed = sum(s["packed_bytes"] for s in storage.values())
    huffman = sum(s["huffman_bytes"] for s in storage.values())
    model_float = 4 * sum(int(np.prod(w.shape)) for w in model.weights)
    rest = model_float - float_bytes
    return {
        "bits": bits, "clustered_weights": clustered,
        "bits_per_weight": 8 * packed / clustered, "huffman_bits_per_weight": 8 * huffman / clustered,
        "float_bytes": float_bytes, "packed_bytes": packed, "huffman_bytes": huffman,
        "ratio": packed / float_bytes, "huffman_ratio": huffman / float_bytes,
        "model_float_bytes": model_float, "model_packed_bytes": rest + packed,
        "model_huffman_bytes": rest + huffman,
        "model_ratio": (rest + packed) / model_float, "model_huffman_ratio": (rest + huffman) / model_float,
    }


# ----------------------------------------------------------------------------- the command
def cluster_run(run_dir: str | Path, *, bits: int = 4, method: str = "scalar",
                subvector: int | None = None, layers: str | None = None,
                finetune_epochs: int = 3, lr: float | None = None,
                out: str | Path | None = None, runs_root: str | Path = "runs",
                tflite: bool = True, latency_runs: int = 100, verbose: int | None = None,
                log=None) -> tuple[Path, dict[str, Any]]:
    """Cluster a trained run's kernels into a new run dir; returns ``(run_dir,
    compress.json content)``. The run holds ``model.keras`` (plain layers, shared
    values), ``clustered.npz`` and ``compression.json``."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    pattern = check_options(bits, method, subvector, layers, finetune_epochs, lr)
    run = common.open_source_run(run_dir)
    if out is not None:
        common.check_out(out)
    source = common.load_source(run.path)
    select_layers(source.model, pattern)  # a --layers that matches nothing fails here
    log(f"measuring the source model {source.run.model}")
    before = common.measure(source.model, source, tflite=tflite, latency_runs=latency_runs)
    before["accuracy_bn_recalibrated"] = common.source_accuracy_recalibrated(source)
    subvector = (subvector or DEFAULT_SUBVECTOR) if method == "product" else None
    model, clusters = clusterize(source.model, bits=bits, method=method, subvector=subvector,
                                 pattern=pattern, seed=source.recipe.seed)
    for c in clusters:
        if c.note:
            log(f"{c.layer}: {c.note}")
    raw = common.measure(model, source, tflite=False)["accuracy"]
    history, acc, tuned = common.recalibrate_and_finetune(
        model, source, finetune_epochs, lr=lr, round_=1, first_epoch=0, verbose=verbose, log=log,
        what=f"{len(clusters)} layers clustered ({method}, {bits} bits): accuracy {raw:.4f} "
             f"clustered, ")
    clusters = read_clusters(model, clusters)
    plain = bake(model, clusters)
    after = common.measure(plain, source, tflite=tflite, latency_runs=latency_runs)
    arrays, storage = pack_clusters(clusters, bits)
    compression = {
        "quantization": method, "subvector": subvector, **storage_summary(storage, plain, bits),
        "accuracy_before": before["accuracy"], "accuracy_clustered": raw,
        "accuracy_clustered_bn_recalibrated": acc, "accuracy_finetuned": tuned,
        "finetune_epochs": finetune_epochs, "layers": storage,
    }
    settings = {"bits": bits, "method": method, "subvector": subvector, "layers": layers,
                "finetune_epochs": finetune_epochs, "bn_recalibration": True,
                "kmeans_init": "linear" if method == "scalar" else "k-means++",
                "lr": lr if lr is not None else common.default_lr(source.recipe)}
    info = common.base_info(f"cluster-{method}", source, settings)
    info.update({**compression, "before": before, "after": after,
                 "ratios": common.ratios(before, after), "epochs": len(history)})
    out = Path(out) if out is not None else common.default_out(source.recipe.name, "cluster",
                                                               runs_root)
    extra = {"clustered.npz": npz_bytes(arrays),
             "compression.json": (json.dumps(compression, indent=2) + "\n").encode()}
    path = common.write_run(out, source, plain, info=info, history=history, extra=extra)
    return path, info


def cluster_table(info: dict[str, Any]) -> str:
    """:func:`~kcnn.compress.common.comparison_table` plus the storage of the clustered
    kernels (float32 → packed, → Huffman), of all weights, and the accuracy right after
    clustering."""
    def kib(n):
        return f"{n / 1024:.1f}"

    f, p, h = info["float_bytes"], info["packed_bytes"], info["huffman_bytes"]
    mf, mp = info["model_float_bytes"], info["model_packed_bytes"]
    src, raw = info["accuracy_before"], info["accuracy_clustered"]
    src_bn = info["before"].get("accuracy_bn_recalibrated")
    bn = info["accuracy_clustered_bn_recalibrated"]
    lines = [
        common.comparison_table(info["before"], info["after"]),
        f"| clustered kernels, KiB (float32 → packed) | {kib(f)} | {kib(p)} | {p / f:.3f} |",
        f"| clustered kernels, KiB (float32 → Huffman) | {kib(f)} | {kib(h)} | {h / f:.3f} |",
        f"| all weights, KiB (float32 → packed) | {kib(mf)} | {kib(mp)} | {mp / mf:.3f} |",
        f"| bits per clustered weight | 32 | {info['bits_per_weight']:.2f} | "
        f"{info['bits_per_weight'] / 32:.3f} |",
        f"| accuracy right after clustering | {src:.4f} | {raw:.4f} | "
        f"{100 * (raw - src):+.2f} points |",
    ]
    if src_bn is not None:  # the fair reference: the same BN re-estimation on both sides
        lines.append(f"| accuracy right after clustering, BN statistics re-estimated | "
                     f"{src_bn:.4f} | {bn:.4f} | {100 * (bn - src_bn):+.2f} points |")
    return "\n".join(lines)
