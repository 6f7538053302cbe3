"""Sec. 3.3 of the D-VAE paper against independent numerics: fitted classifiers on samples, simulated
mixtures, quadrature of the mixture KL, Monte-Carlo and nearest-neighbour entropy estimates."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, special, stats
from scipy.spatial import cKDTree
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from poisonbook import checks
from poisonbook.theory import dvae as T

RNG = np.random.default_rng(0)
MU0, MU1 = np.array([1.0, 0.5]), np.array([-0.5, -1.0])
COV = np.array([[1.0, 0.4], [0.4, 0.8]])


def _sample(mu0, mu1, cov, n, rng):
    y = rng.integers(0, 2, n)
    v = np.where(y[:, None] == 0, mu0, mu1) + rng.multivariate_normal(np.zeros(len(mu0)), cov, n)
    return v, y


def test_bayes_hyperplane_matches_lda_fitted_on_samples():
    v, y = _sample(MU0, MU1, COV, 200_000, RNG)
    lda = LinearDiscriminantAnalysis().fit(v, y)  # sklearn's decision: class 1 iff coef @ v + intercept > 0
    w, b = T.bayes_hyperplane(MU0, MU1, COV)
    coef, icpt = -lda.coef_[0], -lda.intercept_[0]  # class 0 iff ... > 0
    assert np.allclose(coef, w, rtol=0.03) and abs(icpt - b) < 0.03 * np.linalg.norm(w)


def test_bayes_error_matches_the_error_of_the_rule_on_samples():
    v, y = _sample(MU0, MU1, COV, 200_000, RNG)
    w, b = T.bayes_hyperplane(MU0, MU1, COV)
    err = np.mean((v @ w + b > 0) != (y == 0))
    assert abs(err - T.bayes_error(MU0, MU1, COV)) < 4 * math.sqrt(err * (1 - err) / len(y))


def _poisoned_setting():
    mu_c0, mu_c1, cov_c = np.array([0.5]), np.array([-0.5]), np.array([[1.0]])
    mu_s0, mu_s1, cov_s = np.array([1.0]), np.array([-1.0]), np.array([[0.09]])  # tight, far apart: a shortcut
    mu_t, cov_t = np.array([0.0]), np.array([[0.09]])  # at test time v_s is label-independent noise
    return mu_c0, mu_c1, cov_c, mu_s0, mu_s1, cov_s, mu_t, cov_t


def test_hyperplane_shift_matches_the_shift_of_lda_fitted_on_poisoned_samples():
    mu_c0, mu_c1, cov_c, mu_s0, mu_s1, cov_s, *_ = _poisoned_setting()
    n = 200_000
    y = RNG.integers(0, 2, n)
    vc = np.where(y == 0, mu_c0[0], mu_c1[0]) + RNG.normal(0, 1, n)
    vs = np.where(y == 0, mu_s0[0], mu_s1[0]) + RNG.normal(0, 0.3, n)
    lda = LinearDiscriminantAnalysis().fit(np.c_[vc, vs], y)
    a, c = lda.coef_[0], lda.intercept_[0]
    for v_s in (0.7, 0.0, -0.4):  # the fitted hyperplane in v_c at this v_s: a0 v_c + a1 v_s + c = 0
        boundary = -(a[1] * v_s + c) / a[0]
        d = T.hyperplane_shift(mu_c0, mu_c1, cov_c, mu_s0, mu_s1, cov_s, [[v_s]])[0]
        assert abs(abs(boundary - 0.0) - d) < 0.05 * max(d, 1.0)  # the clean boundary is v_c = 0


def test_poisoned_bayes_error_matches_simulation_and_exceeds_the_clean_error():
    mu_c0, mu_c1, cov_c, mu_s0, mu_s1, cov_s, mu_t, cov_t = _poisoned_setting()
    n = 400_000
    y = RNG.integers(0, 2, n)
    vc = np.where(y == 0, mu_c0[0], mu_c1[0]) + RNG.normal(0, 1, n)
    vs = RNG.normal(mu_t[0], 0.3, n)
    wc, bc = T.bayes_hyperplane(mu_c0, mu_c1, cov_c)
    ws, bs = T.bayes_hyperplane(mu_s0, mu_s1, cov_s)
    err = np.mean((vc * wc[0] + bc + vs * ws[0] + bs > 0) != (y == 0))
    closed = T.poisoned_bayes_error(mu_c0, mu_c1, cov_c, mu_s0, mu_s1, cov_s, mu_t, cov_t)
    assert abs(err - closed) < 4 * math.sqrt(err * (1 - err) / n)
    assert closed > T.bayes_error(mu_c0, mu_c1, cov_c) + 0.05


def _kl_quad(r):  # an independent quadrature on a fixed grid (Simpson), not the library's adaptive quad
    d, s = r / math.sqrt(1 + r * r), 1 / math.sqrt(1 + r * r)
    v = np.linspace(-14, 14, 400_001)
    p = 0.5 * (stats.norm.pdf(v, -d, s) + stats.norm.pdf(v, d, s))
    integrand = np.where(p > 0, p * (np.log(np.maximum(p, 1e-300)) + 0.5 * v**2 + 0.5 * math.log(2 * math.pi)), 0)
    return integrate.simpson(integrand, x=v)


@pytest.mark.parametrize("r", [0.05, 0.3, 1.0, 2.0, 4.0, 10.0, 40.0])
def test_theorem_3_3_bounds_hold_against_quadrature(r):
    lo, hi = T.kl_bounds(r)
    kl = _kl_quad(r)
    assert lo - 1e-6 <= kl <= hi + 1e-6
    assert abs(T.mixture_kl(r) - kl) < 1e-6
    if r >= 10:  # the components stop overlapping: the lower bound becomes tight (step 4 drops ~nothing)
        assert kl - lo < 1e-3


def test_normalized_mixture_has_zero_mean_and_unit_variance():
    d, s = T.normalized_mixture(3.0, 1.5)
    z = np.concatenate([RNG.normal(-d, s, 200_000), RNG.normal(d, s, 200_000)])
    assert abs(z.mean()) < 0.01 and abs(z.var() - 1) < 0.01


def test_kl_is_increasing_in_r_and_its_inverse_is_consistent():
    rs = np.linspace(0.05, 20, 60)
    s = np.array([_kl_quad(r) for r in rs])
    assert np.all(np.diff(s) > 0)  # eq. (11)
    for eps in (0.05, 0.5, 2.0):
        r = T.kl_inverse(eps)
        assert abs(_kl_quad(r) - eps) < 1e-5


def test_mixture_kl_matches_a_monte_carlo_estimate():
    r = 3.0
    d, s = T.normalized_mixture(r, 1.0)
    z = np.where(RNG.integers(0, 2, 400_000) == 0, -d, d) + RNG.normal(0, s, 400_000)
    logp = np.log(0.5 * (stats.norm.pdf(z, -d, s) + stats.norm.pdf(z, d, s)))
    mc = np.mean(logp - stats.norm.logpdf(z))
    assert abs(mc - T.mixture_kl(r)) < 4 * np.std(logp - stats.norm.logpdf(z)) / math.sqrt(len(z))


def test_mixture_l2_distance_matches_quadrature_and_grows_with_the_gap():
    v = np.linspace(-12, 12, 200_001)

    def pdf(r):
        d, s = r / math.sqrt(1 + r * r), 1 / math.sqrt(1 + r * r)
        return 0.5 * (stats.norm.pdf(v, -d, s) + stats.norm.pdf(v, d, s))
    for r, rh in ((3.0, 1.0), (10.0, 0.5), (1.0, 1.0)):
        assert abs(T.mixture_l2_distance(r, rh) - integrate.simpson((pdf(r) - pdf(rh)) ** 2, x=v)) < 1e-7
    r_star = T.kl_inverse(0.3)
    gaps = [T.mixture_l2_distance(r, r_star) for r in np.linspace(r_star, 5 * r_star, 20)]
    assert gaps[0] < 1e-12 and np.all(np.diff(gaps) > 0)  # Remark 3.4


def _kl_entropy(x, k=4):  # Kozachenko-Leonenko nearest-neighbour estimator (nats)
    n, dim = x.shape
    dist = cKDTree(x).query(x, k + 1)[0][:, k]
    log_ball = dim / 2 * math.log(math.pi) - special.gammaln(dim / 2 + 1)
    return special.digamma(n) - special.digamma(k) + log_ball + dim * np.mean(np.log(dist))


def test_gaussian_entropy_matches_nearest_neighbour_estimate():
    cov = np.array([[0.5, 0.2, 0.0], [0.2, 0.3, 0.05], [0.0, 0.05, 0.1]])
    x = RNG.multivariate_normal(np.zeros(3), cov, 50_000)
    assert abs(_kl_entropy(x) - T.gaussian_entropy(cov)) < 0.03
    sig = np.array([0.1, 0.5, 2.0])
    x = RNG.normal(0, sig, (50_000, 3))
    assert abs(_kl_entropy(x) - T.gaussian_entropy(sig)) < 0.03


@pytest.mark.parametrize("fn,error,word", [
    (lambda: T.bayes_hyperplane([0, 1], [1], np.eye(2)), checks.BadInput, "same length"),
    (lambda: T.bayes_hyperplane([0, 1], [1, 0], -np.eye(2)), checks.BadInput, "positive definite"),
    (lambda: T.bayes_hyperplane([0, np.nan], [1, 0], np.eye(2)), checks.BadInput, "finite"),
    (lambda: T.hyperplane_shift([0], [1], [[1]], [0, 1], [1, 0], np.eye(2), [[1.0]]), checks.BadInput, "columns"),
    (lambda: T.kl_bounds(-1.0), checks.BadInput, "r"),
    (lambda: T.kl_inverse(0.0), checks.BadInput, "eps"),
    (lambda: T.normalized_mixture(1.0, 0.0), checks.BadInput, "sigma"),
    (lambda: T.gaussian_entropy([1.0, -2.0]), checks.BadInput, "positive"),
], ids=["lengths", "covariance", "nan", "shift-columns", "negative-r", "eps", "sigma", "entropy"])
def test_bad_input_gives_a_clear_error(fn, error, word):
    with pytest.raises(error) as info:
        fn()
    assert word in str(info.value)
