"""Samplers and the tf.data pipeline: per-epoch reshuffling, determinism, augmentation."""

import numpy as np
import tensorflow as tf

from kcnn.data.pipeline import EpochFeeder, augment_batch, train_dataset
from kcnn.data.samplers import SAMPLERS, ShuffleSampler
from kcnn.data.sources import Split
from kcnn.recipes.schema import Augment


def test_shuffle_sampler_is_a_fresh_permutation_each_epoch():
    s = ShuffleSampler(np.arange(100) % 3, 3, seed=1)
    e0, e1 = s.epoch_indices(0), s.epoch_indices(1)
    assert sorted(e0) == list(range(100)) and sorted(e1) == list(range(100))
    assert not np.array_equal(e0, e1)
    np.testing.assert_array_equal(e0, ShuffleSampler(np.arange(100) % 3, 3, seed=1).epoch_indices(0))
    assert not np.array_equal(e0, ShuffleSampler(np.arange(100) % 3, 3, seed=2).epoch_indices(0))
    assert "shuffle" in SAMPLERS


def test_pipeline_yields_every_sample_once_per_epoch_in_sampler_order():
    x = np.arange(10, dtype="float32").reshape(10, 1, 1, 1)
    y = np.arange(10)
    sampler = ShuffleSampler(y, 10, seed=0)
    feeder = EpochFeeder(sampler, batch_size=4, start_epoch=0, epochs=2)
    batches = list(train_dataset(Split(x, y), feeder, Augment(), seed=0).as_numpy_iterator())
    assert [len(b[1]) for b in batches] == [4, 4, 2, 4, 4, 2]
    epoch0 = np.concatenate([b[1] for b in batches[:3]])
    epoch1 = np.concatenate([b[1] for b in batches[3:]])
    np.testing.assert_array_equal(epoch0, sampler.epoch_indices(0))
    np.testing.assert_array_equal(epoch1, sampler.epoch_indices(1))
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]).ravel(),
                                  np.concatenate([epoch0, epoch1]).astype("float32"))


def test_resumed_pipeline_replays_the_same_batches():
    rng = np.random.default_rng(0)
    x, y = rng.random((12, 6, 6, 1)).astype("float32"), np.arange(12) % 3
    aug = Augment(crop_padding=2, flip=True, rotate=15)

    def run(start):
        feeder = EpochFeeder(ShuffleSampler(y, 3, seed=5), 5, start, 3)
        return list(train_dataset(Split(x, y), feeder, aug, seed=5).as_numpy_iterator())

    full, resumed = run(0), run(1)
    assert len(full) == 9 and len(resumed) == 6
    for a, b in zip(full[3:], resumed):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_flip_and_crop_padding_move_pixels_exactly():
    img = np.zeros((1, 5, 5, 1), "float32")
    img[0, 1, 0, 0] = 1.0
    flipped = augment_batch(tf.constant(img), Augment(flip=True), tf.constant([0, 0], tf.int64))
    found_flip = {tuple(np.argwhere(flipped.numpy()[0, ..., 0])[0])}
    assert found_flip <= {(1, 0), (1, 4)}
    # integer crop-with-padding: the pixel moves by at most `p` in each direction, intact
    seen = set()
    for s in range(40):
        out = augment_batch(tf.constant(img), Augment(crop_padding=1), tf.constant([1, s], tf.int64))
        nz = np.argwhere(out.numpy()[0, ..., 0])
        assert out.numpy().sum() in (0.0, 1.0)
        if len(nz):
            r, c = nz[0]
            assert abs(r - 1) <= 1 and c <= 1
            seen.add((int(r), int(c)))
    assert len(seen) >= 4  # several different shifts occurred


def test_rotation_by_zero_is_identity_and_deterministic():
    rng = np.random.default_rng(1)
    img = tf.constant(rng.random((3, 7, 7, 2)).astype("float32"))
    seed = tf.constant([3, 4], tf.int64)
    a = augment_batch(img, Augment(rotate=20, translate=0.1), seed)
    b = augment_batch(img, Augment(rotate=20, translate=0.1), seed)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.allclose(a.numpy(), img.numpy())


def test_shards_of_a_global_batch_get_the_one_process_augmentation():
    """A data-parallel process feeds rows offset.. of each global batch; its random warps
    are those rows of the warps one process draws for the whole batch."""
    rng = np.random.default_rng(1)
    x, y = rng.random((24, 6, 6, 1)).astype("float32"), np.arange(24) % 3
    aug = Augment(crop_padding=1, flip=True, rotate=15, translate=0.1)

    def batches(shard):
        feeder = EpochFeeder(ShuffleSampler(y, 3, seed=2), 8, 0, 2, shard=shard)
        return list(train_dataset(Split(x, y), feeder, aug, seed=3).as_numpy_iterator())

    whole = batches(None)
    halves = [batches((p, 2, 1)) for p in (0, 1)]
    assert len(whole) == 6 and all(len(h) == 6 for h in halves)
    for b, full in enumerate(whole):
        joined = np.concatenate([halves[0][b][0], halves[1][b][0]])
        np.testing.assert_allclose(joined, full[0], atol=1e-6)
        np.testing.assert_array_equal(np.concatenate([halves[0][b][1], halves[1][b][1]]), full[1])
