"""Source-data co-training for tiny, dissimilar target sets (book ch. 11).

1. Embed the target training samples and the source samples with the
   warm-started model's (shallow) ``layer``.
2. Keep, for every target sample, its ``neighbours`` nearest source samples.
3. Train a two-head model on target + selected source samples: the target head
   is the recipe's model, the source head a new classifier on the same features.
   Each sample's loss counts only on its own head (source losses × ``weight``).

``model.keras`` (and so export and evaluation) is the target model alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kcnn.errors import KcnnError


def nearest_source(target_emb: np.ndarray, source_emb: np.ndarray, k: int) -> np.ndarray:
    """(n_target, k) indices of the k nearest source embeddings (Euclidean)."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(source_emb))
    index = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(source_emb)
    return index.kneighbors(target_emb, return_distance=False)


def embed(model, layer: str, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    import keras

    try:
        out = model.get_layer(layer).output
    except ValueError:
        names = ", ".join(layer.name for layer in model.layers)
        raise KcnnError(f"finetune.co_training.layer: no layer {layer!r} in the model ({names})") from None
    extractor = keras.Model(model.inputs, out)
    feats = extractor.predict(x.astype("float32"), batch_size=batch_size, verbose=0)
    return np.asarray(feats, dtype="float32").reshape(len(x), -1)


def prepare_cotraining(recipe, data, model, target_loss):
    import keras
    import tensorflow as tf

    from kcnn.data.dataset import Split
    from kcnn.data.pipeline import AUTOTUNE, eval_dataset, train_dataset
    from kcnn.data.sources import load_dataset
    from kcnn.engine.setup import Setup
    from kcnn.losses.basic import CrossEntropy
    from kcnn.recipes.schema import Data

    co = recipe.finetune.co_training
    if recipe.model.init is None:
        raise KcnnError("finetune.co_training needs model.init: the pretrained model embeds the data")
    source = load_dataset(Data(source=co.source, classes=co.classes, preprocess=recipe.data.preprocess))
    pool = source.train
    if pool.image_shape != data.train.image_shape:
        raise KcnnError(f"finetune.co_training.source: images {pool.image_shape} differ from the "
                        f"target's {data.train.image_shape}")
    # Co-training is for small target sets: the images are held in memory.
    target_x, pool_x = data.train.images(), pool.images()
    neighbours = nearest_source(embed(model, co.layer, target_x),
                                embed(model, co.layer, pool_x), co.neighbours)
    chosen = np.unique(neighbours.ravel())
    k_t, k_s = data.num_classes, source.num_classes

    # One label code per sample: target labels as they are, source labels shifted by k_t.
    combined = Split(np.concatenate([target_x, pool_x[chosen].astype(target_x.dtype)]),
                     np.concatenate([data.train.y, pool.y[chosen] + k_t]))

    features = model.layers[-1].input
    if len(features.shape) > 2:
        features = keras.layers.GlobalAveragePooling2D(name="source_gap")(features)
    source_logits = keras.layers.Dense(k_s, dtype="float32", name="source_logits")(features)
    fit_model = keras.Model(model.inputs, {"target": model.outputs[0], "source": source_logits},
                            name=f"{model.name}_cotrain")

    weight = float(co.weight)

    def heads(x, y, *rest):
        is_source = y >= k_t
        ys = {"target": tf.where(is_source, tf.zeros_like(y), y),
              "source": tf.where(is_source, y - k_t, tf.zeros_like(y))}
        ws = {"target": tf.cast(~is_source, tf.float32),
              "source": tf.cast(is_source, tf.float32) * weight}
        return x, ys, ws

    def val(bs):
        if not len(data.val):
            return None
        return eval_dataset(data.val, bs).map(
            lambda x, y: heads(x, y)[:2] + ({"target": tf.ones_like(y, tf.float32),
                                              "source": tf.zeros_like(y, tf.float32)},),
            num_parallel_calls=AUTOTUNE)

    report: dict[str, Any] = {"co_training": {
        "layer": co.layer, "neighbours": co.neighbours, "weight": weight,
        "source_pool": int(len(pool)), "selected": int(len(chosen)),
        "selected_per_class": np.bincount(pool.y[chosen], minlength=k_s).tolist(),
    }}
    return Setup(
        fit_model, model,
        {"target": target_loss, "source": CrossEntropy(num_classes=k_s)},
        {"target": ["accuracy"]},
        lambda feeder: train_dataset(combined, feeder, recipe.data.augment, recipe.seed).map(
            heads, num_parallel_calls=AUTOTUNE),
        val, combined.y,
        list(data.class_names) + [f"source:{name}" for name in source.class_names],
        monitor_prefix="target_", report=report,
    )
