"""Index samplers: statistics, caps, exact counts, determinism, resume continuity, speed."""

import json
import time

import numpy as np
import pytest
from scipy.stats import chi2

from kcnn.data.samplers import (
    SAMPLERS,
    BatchDownsampleSampler,
    ClassBalancedSampler,
    ClassStreams,
    LabelShufflingSampler,
    make_sampler,
)
from kcnn.errors import DataError, RecipeError
from kcnn.recipes import schema as S

# The digits-LT training counts (exp profile, ratio 20).
LT_COUNTS = [120, 88, 63, 45, 32, 23, 17, 12, 9, 6]


def lt_labels(counts=LT_COUNTS, seed=0):
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)), counts))


def draw(sampler, epochs, batch_size=32, start=0):
    return [sampler.batches(e, batch_size) for e in range(start, start + epochs)]


SAMPLER_KWARGS = {
    "shuffle": {},
    "batch_downsample": {"max_per_class": 4},
    "class_balanced": {},
    "class_balanced_progressive": {"progressive": True, "epochs": 6},
    "label_shuffling": {},
}


def build(name, labels, seed=0, **extra):
    kwargs = dict(SAMPLER_KWARGS[name])
    kwargs.update(extra)
    cls = SAMPLERS.get(name.replace("_progressive", ""))
    return cls(labels, 10, seed=seed, **kwargs)


# ----------------------------------------------------------------------------- class_balanced
def test_class_balanced_frequencies_are_uniform_within_a_chi_square_bound():
    labels = lt_labels()
    s = ClassBalancedSampler(labels, 10, seed=3)
    idx = np.concatenate([np.concatenate(b) for b in draw(s, 20)])
    assert len(idx) == 20 * len(labels)
    freq = np.bincount(labels[idx], minlength=10)
    expected = len(idx) / 10
    stat = ((freq - expected) ** 2 / expected).sum()
    assert stat < chi2.ppf(0.999, df=9), (freq, stat)
    # ... while plain shuffling keeps the 20:1 imbalance
    assert freq.min() > 0.8 * expected and freq.max() < 1.2 * expected


def test_class_balanced_per_batch_class_counts_are_multinomial():
    labels = lt_labels()
    s = ClassBalancedSampler(labels, 10, seed=0)
    batches = [b for epoch in draw(s, 30, batch_size=40) for b in epoch if len(b) == 40]
    counts = np.stack([np.bincount(labels[b], minlength=10) for b in batches])
    # per batch a class count is Binomial(40, 0.1): mean 4, variance 3.6
    assert abs(counts.mean() - 4.0) < 0.1
    assert 3.0 < counts.var() < 4.3


def test_class_probs_override_sets_the_class_frequencies():
    labels = lt_labels()
    probs = [0, 0, 0, 0, 0, 0, 0, 1, 1, 2]
    s = ClassBalancedSampler(labels, 10, seed=1, class_probs=probs, epoch_size=4000)
    freq = np.bincount(labels[s.epoch_indices(0)], minlength=10) / 4000
    np.testing.assert_allclose(freq, np.array(probs) / 4, atol=0.03)
    assert freq[:7].sum() == 0


def test_class_balanced_walks_each_class_list_and_reshuffles_when_exhausted():
    labels = lt_labels()
    s = ClassBalancedSampler(labels, 10, seed=2)
    idx = np.concatenate([s.epoch_indices(e) for e in range(4)])
    members = np.flatnonzero(labels == 9)  # 6 samples, drawn ~166 times
    seq = idx[labels[idx] == 9]
    full = len(seq) // 6 * 6
    passes = seq[:full].reshape(-1, 6)
    for p in passes:  # every pass is a permutation of the class's samples
        np.testing.assert_array_equal(np.sort(p), members)
    assert len({tuple(p) for p in passes}) > len(passes) // 2  # and reshuffled between passes


def test_progressive_goes_from_instance_to_class_balanced():
    labels = lt_labels()
    s = ClassBalancedSampler(labels, 10, seed=0, progressive=True, epochs=5)
    n = np.array(LT_COUNTS, float)
    np.testing.assert_allclose(s.class_probabilities(0), n / n.sum())
    np.testing.assert_allclose(s.class_probabilities(2), np.sqrt(n) / np.sqrt(n).sum())
    np.testing.assert_allclose(s.class_probabilities(4), np.full(10, 0.1))
    rare_share = [np.isin(labels[s.epoch_indices(e)], [7, 8, 9]).mean() for e in range(5)]
    assert rare_share[0] < 0.12 and rare_share[-1] > 0.22 and rare_share == sorted(rare_share)
    with pytest.raises(RecipeError, match="epochs"):
        ClassBalancedSampler(labels, 10, progressive=True)


# ----------------------------------------------------------------------------- label_shuffling
def test_label_shuffling_exact_counts():
    labels = lt_labels()
    s = LabelShufflingSampler(labels, 10, seed=4)
    m = max(LT_COUNTS)
    for epoch in range(3):
        idx = s.epoch_indices(epoch)
        assert len(idx) == 10 * m == s.epoch_size()
        np.testing.assert_array_equal(np.bincount(labels[idx], minlength=10), np.full(10, m))
        per_sample = np.bincount(idx, minlength=len(labels))
        for c, n in enumerate(LT_COUNTS):
            seen = per_sample[labels == c]
            assert set(np.unique(seen)) <= {m // n, -(-m // n)}, c
            assert seen.sum() == m
    assert s.num_batches(32) == len(s.batches(0, 32)) == -(-10 * m // 32)
    # the extra copies (M mod n_c of them) go to different samples in different epochs
    extra = [set(np.flatnonzero(np.bincount(s.epoch_indices(e), minlength=len(labels))
                                == -(-m // 9))) for e in range(3)]
    assert extra[0] != extra[1] or extra[1] != extra[2]


# ----------------------------------------------------------------------------- batch_downsample
def test_batch_downsample_caps_every_batch_and_keeps_batches_full():
    labels = lt_labels()
    s = BatchDownsampleSampler(labels, 10, seed=0, max_per_class=4)
    k = s.num_batches(32)
    assert k == 5  # the largest K with Σ min(n_c, 4K) ≥ 32K
    for epoch in draw(s, 6):
        assert len(epoch) == k
        for b in epoch:
            assert len(b) == 32
            assert np.bincount(labels[b], minlength=10).max() <= 4
        idx = np.concatenate(epoch)
        assert len(np.unique(idx)) == len(idx)  # no sample twice in an epoch
        # the rare classes give all their samples every epoch
        for c in (7, 8, 9):
            assert np.isin(np.flatnonzero(labels == c), idx).all()


def test_batch_downsample_sees_every_sample_within_the_promised_epochs():
    labels = lt_labels()
    for kwargs in ({"max_per_class": 4}, {"max_fraction": 0.25}, {}):
        s = BatchDownsampleSampler(labels, 10, seed=1, **kwargs)
        promised = s.epochs_to_cover(32)
        seen = np.zeros(len(labels), bool)
        for e, epoch in enumerate(draw(s, promised)):
            for b in epoch:
                seen[b] = True
            if e < promised - 1:
                assert not seen.all(), kwargs  # the promise is tight: the head class needs them all
        assert seen.all(), kwargs
    # 5 batches of 32: the level that fills 160 slots is 19 (Σ min(n_c, 19) = 158, +2 extra)
    s = BatchDownsampleSampler(labels, 10, max_per_class=4)
    assert s.plan(32) == (5, 19, 160)
    assert s.epochs_to_cover(32) == 7  # ⌈120 / 19⌉


def test_batch_downsample_max_fraction_and_default_cap():
    labels = lt_labels()
    assert BatchDownsampleSampler(labels, 10, max_fraction=0.25).cap(32) == 8
    assert BatchDownsampleSampler(labels, 10, max_fraction=0.01).cap(32) == 1
    assert BatchDownsampleSampler(labels, 10).cap(32) == 4  # ⌈32 / 10⌉
    s = BatchDownsampleSampler(labels, 10, seed=0, max_fraction=0.25)
    for b in s.batches(0, 32):
        assert len(b) == 32 and np.bincount(labels[b]).max() <= 8


def test_batch_downsample_cap_too_small_for_a_full_batch_uses_everything():
    labels = np.repeat([0, 1], [30, 3])
    s = BatchDownsampleSampler(labels, 2, seed=0, max_per_class=2)  # at most 4 per batch of 16
    epoch = s.batches(0, 16)
    assert len(epoch) == s.num_batches(16) == 15  # ⌈30 / 2⌉
    assert s.num_full_batches(16) == 0
    assert sorted(np.concatenate(epoch)) == list(range(33))
    assert max(np.bincount(labels[b], minlength=2).max() for b in epoch) <= 2


# ----------------------------------------------------------------------------- all samplers
@pytest.mark.parametrize("name", sorted(SAMPLER_KWARGS))
def test_same_seed_same_indices_other_seed_other_indices(name):
    labels = lt_labels()
    a = draw(build(name, labels, seed=5), 3)
    b = draw(build(name, labels, seed=5), 3)
    c = draw(build(name, labels, seed=6), 3)
    for ea, eb in zip(a, b):
        np.testing.assert_array_equal(np.concatenate(ea), np.concatenate(eb))
    assert not np.array_equal(np.concatenate(a[0]), np.concatenate(c[0]))
    assert not np.array_equal(np.concatenate(a[0]), np.concatenate(a[1]))  # redrawn every epoch


@pytest.mark.parametrize("name", sorted(SAMPLER_KWARGS))
def test_resume_continues_the_uninterrupted_sequence(name):
    from kcnn.data.pipeline import EpochFeeder

    labels = lt_labels()
    full_feeder = EpochFeeder(build(name, labels, seed=7), 32, start_epoch=0, epochs=6)
    full = [(int(e), int(b), idx) for e, b, idx, *_ in full_feeder()]
    # interrupted after epoch 2: the checkpoint holds the state recorded after drawing epoch 2
    first = EpochFeeder(build(name, labels, seed=7), 32, start_epoch=0, epochs=3)
    list(first())
    saved = json.loads(json.dumps(first.states[2]))  # what state.json stores
    resumed_sampler = build(name, labels, seed=7)
    resumed_sampler.load_state_dict(saved)
    resumed = [(int(e), int(b), idx) for e, b, idx, *_ in EpochFeeder(resumed_sampler, 32, 3, 6)()]
    tail = [t for t in full if t[0] >= 3]
    assert [t[:2] for t in resumed] == [t[:2] for t in tail]
    for (_, _, x), (_, _, y) in zip(resumed, tail):
        np.testing.assert_array_equal(x, y)
    if name in ("batch_downsample", "class_balanced", "class_balanced_progressive"):
        assert saved["cursor"] != [0] * 10 or saved["pass"] != [0] * 10  # the state matters


@pytest.mark.parametrize("name", sorted(SAMPLER_KWARGS))
def test_num_batches_matches_batches(name):
    labels = lt_labels()
    s = build(name, labels)
    for bs in (7, 32, 64):
        batches = s.batches(0, bs)
        assert s.num_batches(bs) == len(batches), bs
        assert s.num_full_batches(bs) == sum(len(b) == bs for b in batches), bs


@pytest.mark.parametrize("name", ["class_balanced", "label_shuffling"])
def test_balancing_a_split_with_an_empty_class_names_it(name):
    labels = lt_labels()  # classes 0..9; class 10 ("ten") has no sample
    names = [str(c) for c in range(10)] + ["ten"]
    with pytest.raises(DataError, match="class 'ten' has no samples"):
        SAMPLERS.get(name)(labels, 11, class_names=names)


def test_class_probs_zero_for_an_empty_class_is_fine_and_length_is_checked():
    labels = lt_labels()
    s = ClassBalancedSampler(labels, 11, class_probs=[1] * 10 + [0])
    assert np.bincount(labels[s.epoch_indices(0)], minlength=11)[10] == 0
    with pytest.raises(RecipeError, match="data.sampler.class_probs: has 3 entries but the data has 10"):
        ClassBalancedSampler(labels, 10, class_probs=[1, 1, 1])


def test_make_sampler_from_recipe_sections():
    labels = lt_labels()
    s = make_sampler(S.ClassBalancedSampler(type="class_balanced", progressive=True), labels, 10, 0,
                     epochs=4)
    assert s.epochs == 4 and s.progressive
    s = make_sampler(S.BatchDownsampleSampler(type="batch_downsample", max_fraction=0.5), labels, 10, 0,
                     epochs=4)
    assert s.cap(32) == 16
    s = make_sampler(S.LabelShufflingSampler(type="label_shuffling"), labels, 10, 0, epochs=4)
    assert isinstance(s, LabelShufflingSampler)


def test_class_streams_state_is_small_and_validated():
    labels = lt_labels()
    streams = ClassStreams(labels, 10, seed=0, tag=1)
    streams.take(9, 20)
    assert streams.state_dict() == {"cursor": [0] * 9 + [2], "pass": [0] * 9 + [3]}
    with pytest.raises(DataError, match="does not match 10 classes"):
        streams.load_state_dict({"cursor": [0], "pass": [0]}, "class_balanced")


def test_one_million_labels_one_epoch_under_a_second():
    # CPU time of this process: NumPy runs these single-threaded, so it is the work done,
    # not the time spent waiting for a core on a busy machine.
    rng = np.random.default_rng(0)
    counts = np.round(294_000 * 20.0 ** (-np.arange(10) / 9)).astype(int)
    labels = rng.permutation(np.repeat(np.arange(10), counts))[:1_000_000]
    for name in ("shuffle", "batch_downsample", "class_balanced", "label_shuffling"):
        s = SAMPLERS.get(name)(labels, 10, seed=0)
        best = np.inf
        for epoch in range(2):
            t = time.process_time()
            batches = s.batches(epoch, 256)
            best = min(best, time.process_time() - t)
        assert len(batches) == s.num_batches(256)
        assert best < 1.0, (name, best)


@pytest.mark.parametrize("name", sorted(SAMPLER_KWARGS))
def test_a_feeder_iterated_twice_gives_the_same_batches(name):
    """Keras' JAX trainer reads a first batch to build the model, then iterates again: a
    stateful sampler must replay, not move on."""
    from kcnn.data.pipeline import EpochFeeder

    feeder = EpochFeeder(build(name, lt_labels(), seed=3), 32, start_epoch=1, epochs=3)
    next(iter(feeder()))  # the peek
    first = [idx for _, _, idx, *_ in feeder()]
    again = [idx for _, _, idx, *_ in feeder()]
    assert len(first) == len(again) > 0
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
