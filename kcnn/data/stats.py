"""Per-channel statistics of a training split in one streaming pass (``preprocess.standardize``).

Images are read a chunk at a time (decoded, for a file-backed split, in
parallel by tf.data), and the chunks' means and squared deviations are combined
with Chan et al.'s pairwise update, so no float64 copy of the data set is ever
made. A split larger than ``max_samples`` contributes a fixed seeded sample of
that many images, which bounds the pass however large the folder is.
"""

from __future__ import annotations

import numpy as np

from kcnn.data.dataset import FileSplit, Split
from kcnn.data.images import bad_images_as_errors, progress

CHUNK = 64


def sample_indices(n: int, max_samples: int, seed: int) -> np.ndarray:
    """All of ``range(n)``, or a sorted seeded sample of ``max_samples`` of them."""
    if n <= max_samples:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))


def channel_stats(split: Split | FileSplit, max_samples: int, seed: int = 0,
                  scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(mean, variance) per channel of ``split``'s images × ``scale``."""
    idx = sample_indices(len(split), max_samples, seed)
    chunks = [idx[i:i + CHUNK] for i in range(0, len(idx), CHUNK)]
    channels = split.image_shape[-1]
    if isinstance(split, FileSplit):  # decoded in parallel by tf.data
        batches = split.iter_images(idx, CHUNK)
    else:
        batches = (split.images(chunk) for chunk in chunks)
    with bad_images_as_errors("while computing the standardization statistics", [split]):
        return _combine(progress(batches, len(chunks), "image statistics", min_total=16),
                        channels, scale)


def _combine(batches, channels: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Chan et al.'s pairwise update of (mean, M2) over batches of images."""
    count, mean, m2 = 0, np.zeros(channels), np.zeros(channels)
    for images in batches:
        x = images.reshape(-1, channels).astype(np.float64) * scale
        n_b = len(x)
        mean_b = x.mean(axis=0)
        m2_b = ((x - mean_b) ** 2).sum(axis=0)
        delta = mean_b - mean
        total = count + n_b
        mean = mean + delta * n_b / total
        m2 = m2 + m2_b + delta**2 * count * n_b / total
        count = total
    return mean, m2 / max(count, 1)
