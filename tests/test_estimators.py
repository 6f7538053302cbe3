"""The robust mean estimators of RDM-DC (papers/000, Sec. 4.3-4.5, Algorithms 4-5) and their plug-in to DM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from poisonbook import checks, condense, estimators
from poisonbook.cache import CheckpointMismatch
from poisonbook.data import load

# ---------------------------------------------------------------- naive references (one class, loops)


def naive_median(f):
    return np.array([np.median(f[:, j]) for j in range(f.shape[1])])


def naive_trimmed(f, k):
    h = math.ceil(k / 2)
    return np.array([np.mean(sorted(f[:, j])[h:len(f) - h]) for j in range(f.shape[1])])


def _drop_by(f, scores, k):
    order = sorted(range(len(f)), key=lambda i: -scores[i])  # stable: ties drop the lower position first
    keep = [i for i in range(len(f)) if i not in set(order[:k])]
    return f[keep].mean(0)


def naive_truncated(f, k):
    m = f.mean(0)
    return _drop_by(f, [np.linalg.norm(r - m) for r in f], k)


def naive_calibrated(f, k, v):
    """Algorithm 4 with the exact top eigenvector ``v`` of the (formed) covariance."""
    m = f.mean(0)
    return _drop_by(f, [abs(float((r - m) @ v)) for r in f], k)


def _features(seed=0, c=4, n=37, d=6, ties=True):
    g = torch.Generator().manual_seed(seed)
    f = torch.randint(-5, 6, (c, n, d), generator=g).double()  # integer values: many ties per coordinate
    if ties:
        f[:, 1] = f[:, 0]  # duplicated rows: tied scores for the row-dropping estimators
        f[:, 5] = f[:, 3]
    f[:, -3:] += 40.0  # three far points per class
    return f


@pytest.mark.parametrize("n", [37, 38])  # odd and even n (median of an even count: mean of the two middles)
def test_median_and_trimmed_equal_naive_loops(n):
    f = _features(n=n)
    for c in range(f.shape[0]):
        fc = f[c].numpy()
        assert np.allclose(estimators.median(f)[c].numpy(), naive_median(fc), atol=1e-6)
        for k in (0, 1, 4, 7):
            assert np.allclose(estimators.trimmed_mean(k)(f)[c].numpy(), naive_trimmed(fc, k), atol=1e-6)


def test_median_and_trimmed_keep_float32_precision_next_to_huge_outliers():
    """float32 features as DM gives them (ReLU zeros: ties at 0) with poisons 1e7 away: the trimmed mean must
    not be a difference of sums that hold the outliers (their rounding, ~1 here, would swamp the clean mean)."""
    g = torch.Generator().manual_seed(3)
    f = torch.relu(torch.randn(3, 64, 50, generator=g))
    f[:, :5] += 1e7  # 5 far rows per class; k = 12 drops 6 from each end
    for c in range(3):
        fc = f[c].double().numpy()
        assert np.allclose(estimators.median(f)[c].numpy(), naive_median(fc), rtol=1e-6, atol=1e-6)
        assert np.allclose(estimators.trimmed_mean(12)(f)[c].numpy(), naive_trimmed(fc, 12), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("threads", [1, 2, 3, 8])  # classes split over threads: fewer, more, uneven
@pytest.mark.parametrize("c", [1, 3, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])  # numpy's sort and torch's
def test_median_and_trimmed_on_every_class_split_and_dtype(threads, c, dtype):
    """The per-coordinate sort runs numpy on the classes split over torch's threads (torch.sort for other
    dtypes): every class, however the split falls, must equal its own naive loop; a strided input too."""
    g = torch.Generator().manual_seed(c)
    f = torch.relu(torch.randn(c, 9, 41, generator=g)).to(dtype)  # (C, d, n): rows transposed below
    f = f.transpose(1, 2)  # (C, 41, 9) features, not contiguous
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        med, trim = estimators.median(f), estimators.trimmed_mean(6)(f)
    finally:
        torch.set_num_threads(old)
    assert med.dtype == dtype and trim.dtype == dtype
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-6
    for k in range(c):
        fc = f[k].double().numpy()
        assert np.allclose(med[k].double().numpy(), naive_median(fc), rtol=tol, atol=tol)
        assert np.allclose(trim[k].double().numpy(), naive_trimmed(fc, 6), rtol=tol, atol=tol)


def test_truncated_equals_naive_loop_and_removes_far_points():
    f = _features()
    for k in (0, 2, 3, 6):
        got = estimators.truncated_mean(k).estimate(f)
        for c in range(f.shape[0]):
            assert np.allclose(got.mean[c].numpy(), naive_truncated(f[c].numpy(), k), atol=1e-6)
    dropped = estimators.truncated_mean(3).estimate(f).dropped
    assert (dropped.sort(dim=1).values == torch.tensor([34, 35, 36])).all(), "the three far points go first"


def test_calibrated_equals_naive_with_exact_eigenvector():
    f = _features(ties=False) + torch.randn(4, 37, 6, generator=torch.Generator().manual_seed(1)).double()
    est = estimators.calibrated_mean(eps=0.05, power_iterations=300)
    k = math.floor(3 * 0.05 * 37)
    assert est.check_n(37) == k == 5
    got = est.estimate(f, torch.Generator().manual_seed(0))
    for c in range(f.shape[0]):
        fc = f[c].numpy()
        cov = np.cov(fc, rowvar=False)  # the naive way: form Sigma, eigh
        v = np.linalg.eigh(cov)[1][:, -1]
        assert np.allclose(got.mean[c].numpy(), naive_calibrated(fc, k, v), atol=1e-6)


def test_drop_counts_follow_the_paper():
    # Algorithm 4 drops floor(3 eps N); the baselines k = ceil(3 eps N) (Sec. 5.1); N = 256, eps = 1%: 7 and 8
    assert estimators.calibrated_mean(0.01).check_n(256) == 7
    assert estimators.truncated_mean(eps=0.01).check_n(256) == 8
    assert estimators.trimmed_mean(eps=0.01).check_n(256) == 8
    assert estimators.drop_count(0.01, 100) == 3  # 3 * 0.01 * 100 = 3.0000000000000004 in floats
    assert estimators.class_eps(poisons=50, class_size=500) == 0.1  # 1% of 5,000 images, all in one class


def test_power_method_converges_on_a_known_gap():
    g = torch.Generator().manual_seed(0)
    d = 50
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    lam = torch.linspace(1.0, 0.1, d, dtype=torch.float64)
    lam[0] = 2.0  # gap lambda_2 / lambda_1 = 0.5
    x = torch.randn(1, 4000, d, generator=g, dtype=torch.float64) * lam.sqrt() @ q.T
    xc = x - x.mean(1, keepdim=True)
    top = torch.linalg.eigh(xc[0].T @ xc[0])[1][:, -1]
    errs = [1 - float((estimators.power_method(xc, it, torch.Generator().manual_seed(3))[0] @ top).abs())
            for it in (1, 5, 20, 40)]
    assert errs[-1] < 1e-10 and errs[0] > 1e-3
    assert all(a > b for a, b in zip(errs, errs[1:])), errs


def test_calibrated_removes_planted_far_points_within_the_lemma_bound():
    """Lemma 4.1 setting: D = N(0, s^2 I), B = N(delta, s^2 I), ||delta||^2 = alpha s^2 / eps, alpha = 6."""
    g = torch.Generator().manual_seed(0)
    n, d, eps, s, alpha = 4000, 20, 0.05, 1.0, 6.0
    p = int(eps * n)
    delta = torch.zeros(d, dtype=torch.float64)
    delta[0] = math.sqrt(alpha * s**2 / eps)
    f = torch.randn(1, n, d, generator=g, dtype=torch.float64) * s
    f[0, :p] += delta
    is_poison = torch.zeros(1, n, dtype=torch.bool)
    is_poison[0, :p] = True
    est = estimators.calibrated_mean(eps).estimate(f, torch.Generator().manual_seed(1))
    assert is_poison[0, est.dropped[0]].sum() == p, "every planted poison is dropped"
    parts = estimators.deviation_parts(f, est.mean, is_poison, est.dropped)
    bound = 20 / 3 * eps**3 * float(delta.norm())  # eq. (22)
    assert float(parts["poisoned"][0]) <= bound
    plain = estimators.deviation_parts(f, f.mean(1), is_poison)
    assert float(plain["poisoned"][0]) > 0.5 * eps * float(delta.norm()), "the plain mean keeps eps*delta"
    assert float(parts["total"][0]) < float(plain["total"][0]) / 3


# --------------------------------------------------------------------------- DM plug-in


@pytest.fixture(scope="module")
def digits():
    return load("digits", "train")


SMALL = dict(width=8, depth=1, batch_real=16, strategy=None)


def test_estimator_parameters_enter_the_checkpoint_key(tmp_path, digits):
    path = tmp_path / "ck.pt"
    condense.dm(digits.x, digits.y, 1, iterations=2, estimator=estimators.calibrated_mean(0.05),
                checkpoint=path, checkpoint_every=1, **SMALL)
    with pytest.raises(CheckpointMismatch):
        condense.dm(digits.x, digits.y, 1, iterations=2, estimator=estimators.calibrated_mean(0.1),
                    checkpoint=path, checkpoint_every=1, **SMALL)
    with pytest.raises(CheckpointMismatch):
        condense.dm(digits.x, digits.y, 1, iterations=2, estimator=estimators.calibrated_mean(0.05, 5),
                    checkpoint=path, checkpoint_every=1, **SMALL)
    keys = {str(condense.callable_key(e)) for e in (lambda f: f.mean(1), lambda f: f.median(1).values,
                                                     estimators.trimmed_mean(2), estimators.trimmed_mean(4))}
    assert len(keys) == 4, "two lambdas or two k values must not share a key"


def test_resume_with_calibrated_mean_is_bit_identical(tmp_path, digits):
    kw = dict(iterations=6, estimator=estimators.calibrated_mean(0.05, 3), init="noise", seed=4, **SMALL)
    full = condense.dm(digits.x, digits.y, 2, **kw)

    class Stop(Exception):
        pass

    def stop(it, images, loss):
        if it == 2:
            raise Stop

    with pytest.raises(Stop):
        condense.dm(digits.x, digits.y, 2, checkpoint=tmp_path / "r.pt", checkpoint_every=1, callback=stop,
                    **kw)
    resumed = condense.dm(digits.x, digits.y, 2, checkpoint=tmp_path / "r.pt", checkpoint_every=1, **kw)
    assert torch.equal(full.x, resumed.x)
    assert full.loss == resumed.loss


def test_on_estimate_sees_the_drops_and_the_poisons(digits):
    seen = []
    is_poison = torch.zeros(len(digits.y), dtype=torch.bool)
    is_poison[::10] = True

    def report(it, idx, feats, est, dropped):
        seen.append(estimators.deviation_parts(feats, est, is_poison[idx], dropped)["poisoned"])

    condense.dm(digits.x, digits.y, 1, iterations=2, estimator=estimators.truncated_mean(eps=0.1),
                on_estimate=report, **SMALL)
    assert len(seen) == 2 and all(s.shape == (10,) and (s >= 0).all() for s in seen)


BAD = [
    (lambda: estimators.calibrated_mean(-0.01), checks.BadInput, "eps"),
    (lambda: estimators.calibrated_mean(1 / 3), checks.BadInput, "eps"),
    (lambda: estimators.calibrated_mean(float("nan")), checks.BadInput, "eps"),
    (lambda: estimators.calibrated_mean(0.1, 0), checks.BadInput, "power_iterations"),
    (lambda: estimators.trimmed_mean(), checks.BadInput, "exactly one"),
    (lambda: estimators.truncated_mean(-1), checks.BadInput, "k"),
    (lambda: estimators.truncated_mean(5)(torch.zeros(2, 5, 3)), checks.BadInput, "leaves 0"),
    (lambda: estimators.trimmed_mean(3)(torch.zeros(2, 4, 3)), checks.BadInput, "leaves 0"),
    (lambda: estimators.calibrated_mean(0.3)(torch.zeros(1, 1, 3)), checks.BadInput, "n >= 2"),
    (lambda: estimators.median(torch.zeros(5, 3)), checks.BadInput, "(C, n, d)"),
    (lambda: estimators.mean(torch.full((1, 3, 2), float("nan"))), checks.BadInput, "NaN"),
    (lambda: estimators.class_eps(5, 3), checks.BadInput, "poisons"),
]


@pytest.mark.parametrize("call,error,word", BAD)
def test_bad_input_gives_clear_errors(call, error, word):
    with pytest.raises(error, match=None) as info:
        call()
    assert word in str(info.value)


def test_dm_rejects_too_few_samples_before_the_loop(digits):
    with pytest.raises(checks.BadInput, match="leaves"):
        condense.dm(digits.x, digits.y, 1, iterations=1, estimator=estimators.truncated_mean(16), **SMALL)


@pytest.mark.parametrize("n, d", [(40, 300), (300, 20)])  # the Gram dual (n < d) and the primal loop
@pytest.mark.parametrize("iterations", [1, 2, 7, 50])
def test_power_method_dual_form_equals_algorithm_5_loop(iterations, n, d):
    """Both forms return Algorithm 5's primal iterates v <- Sigma v / ||Sigma v||, to rounding."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, n, d, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2, d, dtype=torch.float64)
    xc = x - x.mean(dim=1, keepdim=True)
    v0 = torch.randn(3, d, generator=g, dtype=torch.float64)
    v = v0 / v0.norm(dim=-1, keepdim=True)
    for _ in range(iterations):  # the primal loop, written out
        v = torch.einsum("cnd,cn->cd", xc, torch.einsum("cnd,cd->cn", xc, v)) / (n - 1)
        v = v / v.norm(dim=-1, keepdim=True)
    assert torch.allclose(estimators.power_method(xc, iterations, v0=v0), v, atol=1e-10)


@pytest.mark.parametrize("bad", [(float("nan"),), (float("inf"),), (float("-inf"),), (float("inf"), float("-inf"))])
@pytest.mark.parametrize("name", sorted(estimators.ESTIMATORS))
def test_one_non_finite_value_among_many_is_rejected(name, bad):
    """The finiteness check sums first: every kind of bad value, alone or inf and -inf together, still fails."""
    f = _features(n=40).float()
    for i, value in enumerate(bad):
        f[1, 3 + i, 2] = value
    with pytest.raises(checks.BadInput, match="NaN or infinite"):
        estimators.ESTIMATORS[name](0.05).estimate(f)


def test_finite_features_whose_sum_overflows_are_accepted():
    """3e38 is a finite float32, but 21 of them sum to inf: the full check decides, and the median (odd n: the
    middle value itself) is exact."""
    f = torch.full((2, 41, 3), 3e38)
    f[:, :20] = -1.0
    assert not torch.isfinite(f.sum())
    assert torch.equal(estimators.median(f), torch.full((2, 3), 3e38))
