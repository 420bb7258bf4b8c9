"""Index samplers: which training samples make up each epoch, in which order.

Samplers work on label arrays only (NumPy, O(N) memory, no image copies) and
plug into :mod:`kcnn.data.pipeline`, which gathers the images for each batch.

Determinism contract: the indices of epoch ``e`` depend only on the seed, the
labels and the sampler's state *before* epoch ``e``. ``state_dict()`` after an
epoch is saved in the run's checkpoint, so ``--resume`` continues the same
sequence. Stateless samplers (``shuffle``) derive everything from (seed, epoch).

Written with NumPy because imbalanced-learn resamples 2-D arrays once, not a
fresh index stream every epoch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kcnn.registry import Registry

SAMPLERS: Registry[type[IndexSampler]] = Registry("sampler")


class IndexSampler:
    """Base class. Subclasses implement :meth:`epoch_indices`."""

    def __init__(self, labels: np.ndarray, num_classes: int, seed: int = 0):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = int(num_classes)
        self.seed = int(seed)

    def rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(epoch)])

    def epoch_size(self) -> int:
        return len(self.labels)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        raise NotImplementedError

    def batches(self, epoch: int, batch_size: int) -> list[np.ndarray]:
        """The epoch's indices cut into batches (the last one may be smaller)."""
        idx = self.epoch_indices(epoch)
        return [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]

    def num_batches(self, batch_size: int) -> int:
        return -(-self.epoch_size() // batch_size)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


@SAMPLERS.register("shuffle")
class ShuffleSampler(IndexSampler):
    """A fresh permutation of all training samples every epoch."""

    def epoch_indices(self, epoch: int) -> np.ndarray:
        return self.rng(epoch).permutation(len(self.labels))


def make_sampler(config: Any, labels: np.ndarray, num_classes: int, seed: int) -> IndexSampler:
    """Build the sampler a recipe's ``data.sampler`` section names."""
    options = config.model_dump(exclude={"type"})
    return SAMPLERS.get(config.type)(labels, num_classes, seed=seed, **options)
