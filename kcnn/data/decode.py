"""Decoding a file-backed split's images in TensorFlow's graph.

One function, :func:`file_decoder`, serves the training and evaluation pipelines
(:mod:`kcnn.data.pipeline`), the decoded caches and the statistics pass
(:meth:`kcnn.data.dataset.FileSplit.iter_images`), so they all see the same
pixels. Splits are duck-typed (``files``, ``native``, ``channels``,
``image_shape``): this module imports nothing else of kcnn's data layer.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def file_decoder(split):
    """``index → uint8 (H, W, C)`` image of ``split.files[index]``, as a graph function.

    Files TensorFlow decodes exactly (``split.native``: JPEG, PNG, BMP, GIF without EXIF
    rotation, CMYK or 16-bit data) go through ``tf.io.decode_image``; the others through
    Pillow (:func:`kcnn.data.images.decode_native`, in a ``tf.numpy_function``). Both are
    resized by ``tf.image.resize`` (bilinear, as Keras' ``image_dataset_from_directory``)
    and rounded to uint8, so streaming, the decoded caches and the statistics pass all see
    the same pixels.
    """
    from kcnn.data.images import decode_native, register_split

    register_split(split)
    height, width, channels = split.image_shape
    paths = tf.constant(np.asarray(split.files, dtype=str))
    native = np.ones(len(split), bool) if split.native is None else split.native
    pillow = tf.constant(~np.asarray(native, bool))

    def by_pillow(i):
        img = tf.numpy_function(lambda j: decode_native(split.files[int(j)], channels), [i],
                                tf.uint8, stateful=False)
        img.set_shape((None, None, channels))
        return img

    def by_tensorflow(i):
        img = tf.io.decode_image(tf.io.read_file(paths[i]), channels=channels,
                                 expand_animations=False, dtype=tf.uint8)
        img.set_shape((None, None, channels))
        return img

    def one(i):
        img = tf.cond(pillow[i], lambda: by_pillow(i), lambda: by_tensorflow(i))
        img = tf.image.resize(img, (height, width), method="bilinear")
        return tf.cast(tf.round(tf.clip_by_value(img, 0.0, 255.0)), tf.uint8)

    return one


def decode_files(split, idx: np.ndarray, batch_size: int = 64):
    """uint8 batches of ``split``'s images at ``idx``, decoded in parallel (tf.data)."""
    one = file_decoder(split)
    ds = tf.data.Dataset.from_tensor_slices(np.asarray(idx, dtype=np.int64))
    ds = ds.map(one, num_parallel_calls=AUTOTUNE, deterministic=True).batch(batch_size)
    for batch in ds.prefetch(AUTOTUNE):
        yield batch.numpy()
