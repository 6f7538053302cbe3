"""Behaviour of poisonbook.condense: DM, DC/DSA, the matching losses, resume, evaluation, bad input.

Everything runs on sklearn's 8x8 digits (offline, 1,438 training images) with a narrow ConvNet of
depth 2 (at depth 3 an 8x8 input reaches instance norm over 2x2 maps), so the file takes seconds.
"""

import math

import pytest
import torch

from poisonbook import augment, condense, data

SMALL = dict(width=16, depth=2)


@pytest.fixture(scope="module")
def digits():
    train, test = data.load("digits", "train+val"), data.load("digits", "test")
    return train, test


class Killed(Exception):
    pass


def kill_after(k):
    def callback(it, images, loss):
        if it == k:
            raise Killed
    return callback


# --------------------------------------------------------------------------- DM


def test_dm_loss_decreases_on_real_data(digits):
    train, _ = digits
    r = condense.dm(train.x, train.y, 1, iterations=40, batch_real=64, init="noise", strategy=None, seed=1,
                    **SMALL)
    assert r.iterations == 40 and len(r.loss) == 40
    first, last = sum(r.loss[:10]) / 10, sum(r.loss[-10:]) / 10
    assert last < 0.5 * first, (first, last)
    assert r.x.shape == (10, 1, 8, 8) and r.y.tolist() == list(range(10))
    assert r.seconds > 0 and r.seconds_per_iteration > 0


def test_condensed_set_beats_noise_by_far(digits):
    train, test = digits
    stats = condense.channel_stats(train.x)
    r = condense.dm(train.x, train.y, 1, iterations=60, batch_real=64, init="noise", strategy=None, seed=0,
                    **SMALL)
    ev = condense.evaluate_synthetic(r.x, r.y, test.x, test.y, num_models=1, epochs=60, stats=r.stats,
                                     **SMALL)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(r.x.shape, generator=g) * stats[1].view(1, -1, 1, 1) + stats[0].view(1, -1, 1, 1)
    ev_noise = condense.evaluate_synthetic(noise, r.y, test.x, test.y, num_models=1, epochs=60, stats=stats,
                                           **SMALL)
    assert ev.mean > ev_noise.mean + 0.3, (ev.mean, ev_noise.mean)
    assert ev.mean > 0.5


def test_dm_matches_the_mmd_with_a_linear_kernel():
    g = torch.Generator().manual_seed(0)
    fr, fs = torch.randn(1, 30, 7, generator=g), torch.randn(1, 4, 7, generator=g)
    k = lambda a, b: a @ b.T  # noqa: E731
    mmd2 = k(fr[0], fr[0]).mean() - 2 * k(fr[0], fs[0]).mean() + k(fs[0], fs[0]).mean()
    assert torch.allclose(condense.dm_loss(fr, fs), mmd2, atol=1e-5)


def test_another_estimator_changes_dms_target(digits):
    train, _ = digits
    g = torch.Generator().manual_seed(0)
    fr = torch.randn(3, 50, 5, generator=g).exp()  # skewed: median != mean
    fs = torch.randn(3, 2, 5, generator=g)
    median = lambda f: f.median(dim=-2).values  # noqa: E731
    assert not torch.allclose(condense.dm_loss(fr, fs), condense.dm_loss(fr, fs, median))
    # the per-class wrapper of an unbatched estimator gives the same as the batched one
    unbatched = condense.per_class(lambda f: f.median(dim=0).values)
    assert torch.equal(unbatched(fr), median(fr))
    # and through dm(): same seed, same draws, only the estimator differs
    kw = dict(iterations=2, batch_real=32, strategy=None, seed=3, **SMALL)
    a = condense.dm(train.x, train.y, 1, **kw)
    b = condense.dm(train.x, train.y, 1, estimator=median, **kw)
    c = condense.dm(train.x, train.y, 1, **kw)
    assert torch.equal(a.x, c.x), "same seed, same estimator: same synthetic set"
    assert not torch.allclose(a.x, b.x), "a different real-mean estimator must move the images differently"


def test_siamese_augmentation_through_dm_and_dsa():
    """Each class holds copies of one image, so real and synthetic batches are identical before augmentation.

    With the same transform per class on both (Siamese), they stay identical, so the DM loss is 0 and
    the DC gradients coincide, under every op of the strategy, for many draws.
    """
    g = torch.Generator().manual_seed(0)
    protos = torch.rand(3, 1, 12, 12, generator=g)
    x = protos.repeat_interleave(20, dim=0)
    y = torch.arange(3).repeat_interleave(20)
    strategy = "color_crop_cutout_flip_scale_rotate"
    r = condense.dm(x, y, 1, iterations=30, batch_real=8, strategy=strategy, width=8, depth=2, seed=0)
    assert max(r.loss) < 1e-8, max(r.loss)
    assert torch.allclose(r.x, protos, atol=1e-5), "a zero gradient leaves the images where they started"
    r = condense.dsa(x, y, 1, iterations=8, batch_real=8, strategy=strategy, width=8, depth=2, seed=0)
    rows = 8 + 8 + 3  # output channels of the two convolutions and the linear layer
    assert max(r.loss) < rows * 3 * 1e-3, max(r.loss)  # only the 1e-6 of the cosine's denominator is left
    # control: the same data with noise-initialised synthetic images does have a positive loss
    r = condense.dm(x, y, 1, iterations=3, batch_real=8, strategy=strategy, width=8, depth=2, seed=0,
                    init="noise")
    assert min(r.loss) > 1e-3


# --------------------------------------------------------------------------- DC distance


def test_match_distance_zero_for_identical_positive_otherwise_and_ignores_1d():
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(8, 3, 3, 3, generator=g), torch.randn(8, generator=g),
             torch.randn(10, 32, generator=g), torch.randn(10, generator=g)]
    assert abs(float(condense.match_distance(grads, grads, eps=0.0))) < 1e-5
    assert float(condense.match_distance(grads, grads)) < 1e-4  # the reference's eps = 1e-6
    # cosine per output channel: a positive rescaling of a layer changes nothing
    scaled = [grads[0] * 3.0, grads[1], grads[2] * 0.1, grads[3]]
    assert abs(float(condense.match_distance(scaled, grads, eps=0.0))) < 1e-5
    other = [torch.randn(t.shape, generator=g) for t in grads]
    d = float(condense.match_distance(other, grads))
    assert d > 1.0
    assert abs(float(condense.match_distance(grads, [-t for t in grads], eps=0.0)) - 2 * (8 + 10)) < 1e-3
    only_1d_changed = [grads[0], other[1], grads[2], other[3]]
    assert float(condense.match_distance(only_1d_changed, grads, eps=0.0)) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="shapes"):
        condense.match_distance(grads, [grads[0], grads[1], grads[2][:, :5], grads[3]])
    with pytest.raises(ValueError, match="gradients"):
        condense.match_distance(grads, grads[:2])


# --------------------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("method", ["dm", "dsa"])
def test_resume_equals_uninterrupted(digits, tmp_path, method):
    train, _ = digits
    if method == "dm":
        run = lambda **k: condense.dm(train.x, train.y, 2, iterations=6, batch_real=16,  # noqa: E731
                                      strategy=augment.STRATEGY_DIGITS, seed=5, **SMALL, **k)
    else:
        run = lambda **k: condense.dsa(train.x, train.y, 1, iterations=4, batch_real=16,  # noqa: E731
                                       loops=(2, 2), strategy=augment.STRATEGY_DIGITS, seed=5, **SMALL, **k)
    state = torch.random.get_rng_state()
    full = run()
    assert torch.equal(state, torch.random.get_rng_state()), "the global RNG is left alone"
    path = tmp_path / f"{method}.pt"
    with pytest.raises(Killed):
        run(checkpoint=path, checkpoint_every=1, callback=kill_after(2))
    assert path.exists()
    resumed = run(checkpoint=path, checkpoint_every=1)
    assert torch.equal(full.x, resumed.x)
    assert full.loss == resumed.loss
    again = run(checkpoint=path, checkpoint_every=1)  # a finished checkpoint returns at once
    assert torch.equal(again.x, full.x)


# --------------------------------------------------------------------------- evaluation


def test_evaluation_reports_accuracies_and_probe_predictions(digits):
    train, test = digits
    xs, ys = condense.random_subset(train.x, train.y, 3, seed=0)
    assert xs.shape == (30, 1, 8, 8) and ys.tolist() == sorted(ys.tolist())
    probe = test.x[:5]
    ev = condense.evaluate_synthetic(xs, ys, test.x, test.y, num_models=2, epochs=5, probe=probe,
                                     keep_models=True, stats=condense.channel_stats(train.x), **SMALL)
    assert len(ev.accuracies) == 2 and 0 <= ev.mean <= 1 and ev.std >= 0
    assert ev.predictions.shape == (2, 5)
    # the kept models take inputs in the caller's [0, 1] coordinates and agree with the recorded predictions
    with torch.no_grad():
        assert torch.equal(ev.models[1](probe).argmax(1), ev.predictions[1])
    assert ev.std == pytest.approx(float(torch.tensor(ev.accuracies).std(unbiased=False)), abs=1e-7)


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_useful_errors(digits):
    train, test = digits
    x, y = train.x, train.y
    with pytest.raises(ValueError, match="ipc"):
        condense.dm(x, y, 0, iterations=1, **SMALL)
    with pytest.raises(ValueError, match="unknown init 'zeros'"):
        condense.dc(x, y, 1, iterations=1, init="zeros", **SMALL)
    with pytest.raises(ValueError, match="labels"):
        condense.dm(x, y[:-1], 1, iterations=1, **SMALL)
    bad = x.clone()
    bad[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        condense.dm(bad, y, 1, iterations=1, **SMALL)
    with pytest.raises(ValueError, match="no reference"):
        condense.dc(x, y, 3, iterations=1, **SMALL)
    with pytest.raises(ValueError, match=r"\(C, d\)"):
        condense.dm(x, y, 1, iterations=1, estimator=lambda f: f.mean(), strategy=None, **SMALL)
    with pytest.raises(ValueError, match="strategy"):
        condense.dsa(x, y, 1, iterations=1, strategy=None, **SMALL)
    with pytest.raises(ValueError, match="unknown DSA op"):
        condense.dm(x, y, 1, iterations=1, strategy="blur", **SMALL)
    with pytest.raises(ValueError, match="lr"):
        condense.dm(x, y, 1, iterations=1, lr=0.0, **SMALL)
    few = data.balanced_subset(train, 2)
    with pytest.raises(ValueError, match="init='real' needs 3 images of every class but one class has 2"):
        condense.dm(few.x, few.y, 3, iterations=1, **SMALL)
    with pytest.raises(ValueError, match="stats"):
        condense.dm(x, y, 1, iterations=1, stats=(torch.zeros(3), torch.ones(3)), **SMALL)
    with pytest.raises(ValueError, match="differ in shape"):
        condense.evaluate_synthetic(x[:10], y[:10], torch.rand(5, 1, 9, 9), test.y[:5], num_models=1,
                                    epochs=1)
    with pytest.raises(ValueError, match="dm_loss"):
        condense.dm_loss(torch.zeros(2, 3), torch.zeros(2, 1, 3))
    with pytest.raises(FloatingPointError, match="learning rate"):
        condense.dm(x, y, 1, iterations=5, lr=1e38, init="noise", strategy=None, **SMALL)
