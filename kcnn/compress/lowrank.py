"""Low-rank factorization by truncated SVD (book: 低秩近似).

* **Dense** ``y = x W + b`` with ``W`` (n × m): ``W ≈ U_r S_r V_rᵀ`` becomes two
  Dense layers, ``x → r`` with kernel ``U_r √S_r`` (no bias, linear) and
  ``r → m`` with kernel ``√S_r V_rᵀ``, the bias and the activation.
* **Conv2D, ``spatial``** (Tai et al., 2016): a kh×kw kernel ``W[i, j, c, o]``
  read as the matrix ``M[(i, c), (j, o)]`` (kh·cin × kw·cout) is factorized as
  ``M ≈ A B``; ``A`` becomes a kh×1 convolution into ``r`` channels, ``B`` a 1×kw
  convolution out of them. Strides, dilation and padding split per axis, so at
  full rank (``r = min(kh·cin, kw·cout)``) the pair computes exactly the
  original convolution, ``same`` padding included.
* **Conv2D, ``channel``** (Zhang et al., 2015): ``W`` read as the matrix
  (kh·kw·cin × cout) is factorized; the first factor is a kh×kw convolution
  into ``r`` channels, the second a 1×1 convolution.

The rank is chosen per layer as the smallest ``r`` whose singular values keep
``energy`` of the squared total (Σ_{i≤r} σ_i² ≥ energy · Σ σ_i²), or fixed with
``rank``. A layer is factorized only when the pair has fewer parameters than
the original (``require_saving``), so e.g. 1×1 convolutions, grouped
convolutions and the small classifier usually stay.

After the factorization (and after fine-tuning) the BatchNormalization
statistics are re-estimated on one epoch of training batches.

The factor layers are named ``<name>_lowrank`` (first) and ``<name>`` (second,
with the original's bias and activation), so the rest of the model keeps its names.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from kcnn.choices import LowrankMode, values
from kcnn.compress import common
from kcnn.errors import KcnnError

MODES = values(LowrankMode)


def rank_for_energy(singular_values: np.ndarray, energy: float) -> int:
    """The smallest ``r`` with ``Σ_{i<r} σ_i² >= energy · Σ σ_i²`` (at least 1)."""
    s2 = np.asarray(singular_values, dtype="float64") ** 2
    total = s2.sum()
    if total <= 0:
        return 1
    cumulative = np.cumsum(s2) / total
    return int(min(len(s2), np.searchsorted(cumulative, energy - 1e-12) + 1))


def _svd(matrix: np.ndarray, energy: float | None, rank: int | None):
    u, s, vt = np.linalg.svd(matrix.astype("float64"), full_matrices=False)
    full = len(s)
    r = min(full, rank) if rank is not None else rank_for_energy(s, energy)
    root = np.sqrt(s[:r])
    return u[:, :r] * root, root[:, None] * vt[:r], r, full, s


def _retained(s: np.ndarray, r: int) -> float:
    s2 = np.asarray(s, "float64") ** 2
    return float(s2[:r].sum() / s2.sum()) if s2.sum() > 0 else 1.0


def _factor_dense(layer, energy, rank):
    import keras

    w = {v.name: np.asarray(v.numpy()) for v in layer.weights}
    kernel = w["kernel"]
    n, m = kernel.shape
    a, b, r, full, s = _svd(kernel, energy, rank)
    cfg = layer.get_config()
    first = keras.layers.Dense(r, use_bias=False, name=f"{layer.name}_lowrank",
                               dtype=layer.dtype_policy)
    second_cfg = {**cfg, "units": m}
    second = keras.layers.Dense.from_config(second_cfg)
    weights = [[a.astype("float32")], [b.astype("float32")] + ([w["bias"]] if "bias" in w else [])]
    report = {"type": "Dense", "rank": r, "full_rank": full, "energy": _retained(s, r),
              "params_before": int(kernel.size), "params_after": int(r * (n + m))}
    return first, second, weights, report


def _factor_conv(layer, energy, rank, mode):
    import keras

    w = {v.name: np.asarray(v.numpy()) for v in layer.weights}
    kernel = w["kernel"]  # (kh, kw, cin, cout)
    kh, kw, cin, cout = kernel.shape
    cfg = layer.get_config()
    sh, sw = cfg["strides"]
    dh, dw = cfg["dilation_rate"]
    common_cfg = {"padding": cfg["padding"], "data_format": cfg["data_format"],
                  "dtype": layer.dtype_policy}
    if mode == "spatial":
        matrix = kernel.transpose(0, 2, 1, 3).reshape(kh * cin, kw * cout)
        a, b, r, full, s = _svd(matrix, energy, rank)
        k1 = a.reshape(kh, cin, r)[:, None, :, :]  # (kh, 1, cin, r)
        k2 = b.reshape(r, kw, cout).transpose(1, 0, 2)[None]  # (1, kw, r, cout)
        first = keras.layers.Conv2D(r, (kh, 1), strides=(sh, 1), dilation_rate=(dh, 1),
                                    use_bias=False, name=f"{layer.name}_lowrank", **common_cfg)
        second_cfg = {**cfg, "kernel_size": (1, kw), "strides": (1, sw), "dilation_rate": (1, dw)}
        after = r * (kh * cin + kw * cout)
    else:
        matrix = kernel.reshape(kh * kw * cin, cout)
        a, b, r, full, s = _svd(matrix, energy, rank)
        k1 = a.reshape(kh, kw, cin, r)
        k2 = b.reshape(1, 1, r, cout)
        first = keras.layers.Conv2D(r, (kh, kw), strides=(sh, sw), dilation_rate=(dh, dw),
                                    use_bias=False, name=f"{layer.name}_lowrank", **common_cfg)
        second_cfg = {**cfg, "kernel_size": (1, 1), "strides": (1, 1), "dilation_rate": (1, 1),
                      "padding": "valid"}
        after = r * (kh * kw * cin + cout)
    second = keras.layers.Conv2D.from_config(second_cfg)
    weights = [[k1.astype("float32")], [k2.astype("float32")] + ([w["bias"]] if "bias" in w else [])]
    report = {"type": f"Conv2D/{mode}", "rank": r, "full_rank": full, "energy": _retained(s, r),
              "params_before": int(kernel.size), "params_after": int(after)}
    return first, second, weights, report


def _candidate(layer, mode) -> str | None:
    """Why ``layer`` cannot be factorized, or None when it can."""
    name = type(layer).__name__
    if name == "Dense":
        return None if len(layer.kernel.shape) == 2 else "kernel is not a matrix"
    if name != "Conv2D":
        return "not a Dense or Conv2D layer"
    if layer.groups != 1:
        return "grouped convolution"
    if layer.data_format != "channels_last":
        return "channels_first"
    kh, kw = layer.kernel_size
    if mode == "spatial" and (kh == 1 or kw == 1):
        return f"{kh}×{kw} kernel has no k×1 / 1×k split"
    if mode == "channel" and kh == kw == 1:
        return "1×1 kernel (a channel factorization would be two 1×1 convolutions)"
    return None


def factorize(model, *, energy: float | None = None, rank: int | None = None,
              mode: str = "spatial", layers: list[str] | None = None,
              require_saving: bool = True) -> tuple[Any, dict[str, Any]]:
    """A new model whose Dense/Conv2D layers are replaced by low-rank pairs.

    Returns ``(model, report)`` with, per layer, the chosen rank, the retained
    energy and the parameters before/after (or why it was left alone).
    """
    import keras

    if (energy is None) == (rank is None):
        raise KcnnError("give --energy or --rank (one of them)")
    if energy is not None and not 0 < energy <= 1:
        raise KcnnError(f"--energy: must be in (0, 1] (got {energy})")
    if rank is not None and (not isinstance(rank, int) or rank < 1):
        raise KcnnError(f"--rank: must be a positive integer (got {rank})")
    if mode not in MODES:
        raise KcnnError(f"--mode: unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if not hasattr(model, "_nodes_by_depth"):
        raise KcnnError(f"low-rank factorization needs a functional model "
                        f"(got {type(model).__name__})")

    plans: dict[str, tuple] = {}
    report: dict[str, Any] = {"layers": {}, "skipped": {}}
    for layer in model.layers:
        if layers is not None and layer.name not in layers:
            continue
        why = _candidate(layer, mode)
        if why is not None:
            if type(layer).__name__ in ("Dense", "Conv2D"):
                report["skipped"][layer.name] = why
            continue
        if type(layer).__name__ == "Dense":
            plan = _factor_dense(layer, energy, rank)
        else:
            plan = _factor_conv(layer, energy, rank, mode)
        info = plan[3]
        if require_saving and info["params_after"] >= info["params_before"]:
            report["skipped"][layer.name] = (f"rank {info['rank']} would not save parameters "
                                             f"({info['params_after']} ≥ {info['params_before']})")
            continue
        plans[layer.name] = plan
        report["layers"][layer.name] = info

    replaced: dict[str, tuple] = {}

    def clone(layer):
        if layer.name in plans:
            first, second, weights, _ = plans[layer.name]
            replaced[second.name] = (first, second, weights)
            return second
        return layer.__class__.from_config(layer.get_config())

    def call(layer, *args, **kwargs):
        pair = replaced.get(layer.name)
        if pair is not None and layer is pair[1]:
            first = pair[0]
            return layer(first(args[0]), *args[1:], **kwargs)
        return layer(*args, **kwargs)

    new = keras.models.clone_model(model, clone_function=clone, call_function=call)
    by_name = {layer.name: layer for layer in new.layers}
    for layer in model.layers:
        if layer.name in plans:
            first, second, weights, _ = plans[layer.name]
            by_name[first.name].set_weights(weights[0])
            by_name[second.name].set_weights(weights[1])
        elif layer.weights:
            by_name[layer.name].set_weights(layer.get_weights())
    return new, report


def lowrank_run(run_dir: str | Path, *, energy: float | None = None, rank: int | None = None,
                mode: str = "spatial", finetune_epochs: int = 0, lr: float | None = None,
                out: str | Path | None = None, runs_root: str | Path = "runs",
                tflite: bool = True, latency_runs: int = 100, verbose: int | None = None,
                log=None) -> tuple[Path, dict[str, Any]]:
    """Factorize a trained run into a new run dir; returns ``(run_dir, compress.json content)``."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if (energy is None) == (rank is None):
        raise KcnnError("give --energy or --rank (one of them)")
    if energy is not None and not 0 < energy <= 1:
        raise KcnnError(f"--energy: must be in (0, 1] (got {energy})")
    if rank is not None and rank < 1:
        raise KcnnError(f"--rank: must be a positive integer (got {rank})")
    if mode not in MODES:
        raise KcnnError(f"--mode: unknown mode {mode!r}; valid: {', '.join(MODES)}")
    common.check_finetune(finetune_epochs, lr)
    source, before = common.open_and_measure(run_dir, out, tflite=tflite,
                                             latency_runs=latency_runs, log=log)
    model, report = factorize(source.model, energy=energy, rank=rank, mode=mode)
    if not report["layers"]:
        raise KcnnError("no layer was factorized: at this energy/rank no factorization saves "
                        "parameters (try a lower --energy or --rank)")
    raw = common.measure(model, source, tflite=False)["accuracy"]
    common.recalibrate_batchnorm(model, source)
    acc = common.measure(model, source, tflite=False)["accuracy"]
    log(f"factorized {len(report['layers'])} layers; accuracy {raw:.4f}, {acc:.4f} with BN "
        f"statistics re-estimated")
    history = common.finetune(model, source, finetune_epochs, lr=lr, verbose=verbose)
    if history:
        common.recalibrate_batchnorm(model, source, seed_offset=1)
        model = common.plain_copy(model)
    after = common.measure(model, source, tflite=tflite, latency_runs=latency_runs)
    settings = {"energy": energy, "rank": rank, "mode": mode, "finetune_epochs": finetune_epochs,
                "bn_recalibration": True,
                "lr": lr if lr is not None else common.default_lr(source.recipe)}
    info = common.base_info("lowrank", source, settings)
    info.update({"layers": report["layers"], "skipped": report["skipped"],
                 "accuracy_factorized_raw": raw, "accuracy_factorized": acc, "before": before, "after": after,
                 "ratios": common.ratios(before, after), "epochs": len(history)})
    out = Path(out) if out is not None else common.default_out(source.recipe.name, "lowrank",
                                                               runs_root)
    path = common.write_run(out, source, model, info=info, history=history)
    return path, info
