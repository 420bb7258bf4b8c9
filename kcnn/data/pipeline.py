"""tf.data pipelines: sampler indices → gathered batches → augmentation → prefetch.

Training batches are produced from the sampler's per-epoch index lists, so
every epoch is reshuffled (or re-sampled) from a seeded RNG. Augmentation is a
single fused affine warp per batch, whose random numbers are keyed by
(seed, epoch, batch): a resumed run sees exactly the batches the uninterrupted
run would have seen. (Keras' RandomTranslation/RandomRotation layers keep a
running RNG state instead, which a resume cannot replay.)
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import tensorflow as tf

from kcnn.data.dataset import FileSplit, Split
from kcnn.data.decode import file_decoder
from kcnn.data.samplers import IndexSampler
from kcnn.recipes import schema as S

AUTOTUNE = tf.data.AUTOTUNE


def affine_params(augment: S.Augment, batch: int, height: int, width: int, seed) -> tf.Tensor:
    """(batch, 8) projective transforms mapping output → input pixel coordinates.

    Composes, per image: a shift (integer crop-with-padding plus fractional
    translation), a rotation about the centre, and an optional horizontal flip.
    """
    u = tf.random.stateless_uniform([batch, 5], seed=seed, dtype=tf.float32)
    zeros = tf.zeros([batch])
    dx, dy = zeros, zeros
    if augment.crop_padding:
        p = float(augment.crop_padding)
        dx += tf.floor(u[:, 0] * (2 * p + 1)) - p
        dy += tf.floor(u[:, 1] * (2 * p + 1)) - p
    if augment.translate:
        dx += (u[:, 2] * 2 - 1) * augment.translate * width
        dy += (u[:, 3] * 2 - 1) * augment.translate * height
    theta = (u[:, 4] * 2 - 1) * (augment.rotate * math.pi / 180.0) if augment.rotate else zeros
    if augment.flip:
        flip_u = tf.random.stateless_uniform([batch], seed=seed + tf.constant([0, 7], seed.dtype))
        sign = tf.where(flip_u < 0.5, -1.0, 1.0)
    else:
        sign = tf.ones([batch])
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    cos, sin = tf.cos(theta), tf.sin(theta)
    a0, a1 = sign * cos, -sign * sin
    a2 = sign * (-cos * (dx + cx) + sin * (dy + cy)) + cx
    b0, b1 = sin, cos
    b2 = -sin * (dx + cx) - cos * (dy + cy) + cy
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def augment_batch(images: tf.Tensor, augment: S.Augment, seed: tf.Tensor,
                  offset=None, total=None) -> tf.Tensor:
    """Warp a batch; with ``offset``/``total`` it is rows ``offset..`` of a global batch of
    ``total`` images whose random parameters are drawn together."""
    shape = tf.shape(images)
    height, width = int(images.shape[1]), int(images.shape[2])
    if offset is None:
        transforms = affine_params(augment, shape[0], height, width, seed)
    else:
        start = tf.cast(offset, tf.int32)
        transforms = affine_params(augment, tf.cast(total, tf.int32), height, width,
                                   seed)[start:start + shape[0]]
    exact = not (augment.translate or augment.rotate)  # integer shifts and flips only
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.stack([height, width]),
        fill_value=0.0,
        interpolation="NEAREST" if exact else "BILINEAR",
        fill_mode="CONSTANT",
    )


class EpochFeeder:
    """Feeds sampler batches to tf.data and remembers the sampler state after each epoch.

    Yields ``(epoch, batch, indices, offset, global size)``: ``offset`` is where the
    indices start within the global batch of that step (augmentation is drawn for the
    global batch, so a shard gets the same random warps as the one-process run).

    Under a ``tf.distribute`` strategy, ``shard=(pipeline, pipelines, replicas)``
    cuts every global batch into ``pipelines × replicas`` equal per-replica
    chunks and yields this input pipeline's ``replicas`` chunks, in order (the
    strategy hands consecutive elements to the worker's replicas); a
    ``data_parallel`` process is one pipeline with one chunk. Together the
    pipelines see every index of every epoch exactly once. Only full global
    batches are used then (the epoch's last partial batch is dropped).
    """

    def __init__(self, sampler: IndexSampler, batch_size: int, start_epoch: int, epochs: int,
                 shard: tuple[int, int, int] | None = None):
        self.sampler = sampler
        self.batch_size = batch_size
        self.start_epoch = start_epoch
        self.epochs = epochs
        self.shard = shard
        self.states: dict[int, dict[str, Any]] = {}
        # Every iteration starts from the sampler's state at ``start_epoch``: Keras may read a
        # first batch to build the model and then iterate again (the JAX trainer does), and a
        # stateful sampler must not move on between the two.
        self.initial_state = copy.deepcopy(sampler.state_dict())

    @property
    def steps_per_epoch(self) -> int:
        if self.shard is not None:
            return self.sampler.num_full_batches(self.batch_size)
        return self.sampler.num_batches(self.batch_size)

    def __call__(self):
        if self.initial_state:
            self.sampler.load_state_dict(copy.deepcopy(self.initial_state))
        for epoch in range(self.start_epoch, self.epochs):
            batches = self.sampler.batches(epoch, self.batch_size)
            self.states[epoch] = self.sampler.state_dict()
            for b, idx in enumerate(batches):
                if self.shard is None:
                    yield np.int64(epoch), np.int64(b), idx.astype(np.int64), np.int64(0), np.int64(len(idx))
                    continue
                if len(idx) < self.batch_size:
                    continue  # drop_remainder: every replica needs an equal share
                pipeline, pipelines, replicas = self.shard
                chunks = shard_batch(idx, pipelines * replicas)
                size = len(chunks[0])
                for c in range(pipeline * replicas, (pipeline + 1) * replicas):
                    # (epoch, batch) key the augmentation of the whole global batch; a chunk
                    # takes its rows from c * size on, as one process would have drawn them.
                    yield (np.int64(epoch), np.int64(b), chunks[c].astype(np.int64),
                           np.int64(c * size), np.int64(len(idx)))


def shard_batch(idx: np.ndarray, pieces: int) -> list[np.ndarray]:
    """Cut a global batch into ``pieces`` contiguous, equal per-replica chunks."""
    if len(idx) % pieces:
        raise ValueError(f"a batch of {len(idx)} does not split into {pieces} equal parts")
    return np.split(idx, pieces)


def image_loader(split: Split | FileSplit):
    """``idx → float32 images`` for a batch of indices, as a tf.data map function.

    An array split gathers from a constant; a file-backed split reads its decoded cache
    (``tf.numpy_function``) or decodes the files in the graph (:func:`file_decoder`).
    """
    if isinstance(split, Split):
        images = tf.constant(split.x)
        return lambda idx: tf.cast(tf.gather(images, idx), tf.float32)
    shape = split.image_shape
    if split.cache is not None:
        def from_cache(idx):
            batch = tf.numpy_function(split.cache.read, [idx], tf.uint8, stateful=False)
            batch.set_shape((None, *shape))
            return tf.cast(batch, tf.float32)

        return from_cache
    one = file_decoder(split)
    signature = tf.TensorSpec(shape, tf.uint8)
    return lambda idx: tf.cast(tf.map_fn(one, idx, fn_output_signature=signature,
                                         parallel_iterations=16), tf.float32)


def train_dataset(
    split: Split | FileSplit,
    feeder: EpochFeeder,
    augment: S.Augment,
    seed: int,
) -> tf.data.Dataset:
    """Batches for epochs ``feeder.start_epoch .. feeder.epochs - 1``, in order.

    Yields ``(x, y)``, or ``(x, y, w)`` when the split carries per-sample weights
    (Keras ``fit`` then multiplies each sample's loss by its weight).
    """
    images = image_loader(split)
    labels = tf.constant(split.y)
    weights = None if split.w is None else tf.constant(split.w, tf.float32)
    signature = (
        tf.TensorSpec((), tf.int64),
        tf.TensorSpec((), tf.int64),
        tf.TensorSpec((None,), tf.int64),
        tf.TensorSpec((), tf.int64),
        tf.TensorSpec((), tf.int64),
    )
    ds = tf.data.Dataset.from_generator(feeder, output_signature=signature)

    def load(epoch, batch, idx, offset, total):
        x = images(idx)
        y = tf.gather(labels, idx)
        if augment.enabled:
            key = tf.stack([tf.constant(seed, tf.int64), epoch * 100_003 + batch])
            x = augment_batch(x, augment, key, offset, total)
        if weights is not None:
            return x, y, tf.gather(weights, idx)
        return x, y

    return ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=True).prefetch(AUTOTUNE)


def eval_dataset(split: Split | FileSplit, batch_size: int) -> tf.data.Dataset:
    """Unshuffled batches of a split, for validation and evaluation."""
    if isinstance(split, Split):
        ds = tf.data.Dataset.from_tensor_slices((split.x, split.y)).batch(batch_size)
        return ds.map(lambda x, y: (tf.cast(x, tf.float32), y),
                      num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
    images, labels, n = image_loader(split), tf.constant(split.y), len(split)
    starts = tf.data.Dataset.range(0, n, batch_size)

    def load(start):
        idx = tf.range(start, tf.minimum(start + batch_size, n))
        return images(idx), tf.gather(labels, idx)

    return starts.map(load, num_parallel_calls=AUTOTUNE, deterministic=True).prefetch(AUTOTUNE)
