"""Sec. 3.3 of the D-VAE paper (Yu et al. 2024, papers/003): why a rate constraint removes shortcuts.

* :func:`bayes_hyperplane`: Proposition 3.1, eq. (5): the Bayes (MAP) hyperplane of two equiprobable
  Gaussians with a shared covariance, ``w^T (v - (mu0 + mu1)/2) = 0`` with ``w = Sigma^{-1}(mu0 - mu1)``.
* :func:`hyperplane_shift`: Theorem 3.2, eq. (7): the shift ``d`` of the predictive-feature hyperplane
  when the attacker makes the non-predictive feature ``v_s`` class-dependent.
* :func:`bayes_error` / :func:`poisoned_bayes_error`: the test error of the clean and of the poisoned Bayes
  classifier on clean test data (closed forms that follow from eq. (5) and (7); the paper states the error
  grows when ``||w_s|| >> ||w_c||``).
* :func:`normalized_mixture`, :func:`kl_bounds`, :func:`mixture_kl`, :func:`kl_inverse`: eq. (9), Theorem 3.3
  (eq. 10) for the normalised two-component mixture against N(0, 1) with ``r = delta / sigma``; the exact
  ``S(r)`` by quadrature and its inverse ``S^{-1}(eps)`` used in Remark 3.4.
* :func:`mixture_l2_distance`: Remark 3.4's estimation error ``int (P_hat - p_z)^2 dv`` between two normalised
  mixtures, in closed form (products of Gaussians integrate to a Gaussian density).
* :func:`gaussian_entropy`: Proposition 3.5, eqs. (12)/(13): ``H(v_s | y) = D/2 (1 + ln 2 pi) + 1/2 ln|Sigma_s|``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import integrate, optimize, stats

from .. import checks

__all__ = ["bayes_hyperplane", "hyperplane_shift", "bayes_error", "poisoned_bayes_error", "normalized_mixture",
           "kl_bounds", "mixture_kl", "kl_inverse", "mixture_l2_distance", "gaussian_entropy"]


def _vec(a, name, where):
    a = np.atleast_1d(np.asarray(a, dtype=np.float64))
    if a.ndim != 1 or not np.all(np.isfinite(a)):
        raise checks.BadInput(f"{where}: {name} must be a finite vector, got shape {a.shape}")
    return a


def _cov(c, dim, name, where):
    c = np.atleast_2d(np.asarray(c, dtype=np.float64))
    if c.shape != (dim, dim) or not np.all(np.isfinite(c)) or not np.allclose(c, c.T):
        raise checks.BadInput(f"{where}: {name} must be a finite symmetric {dim}x{dim} matrix, got {c.shape}")
    if np.linalg.eigvalsh(c).min() <= 0:
        raise checks.BadInput(f"{where}: {name} must be positive definite (a covariance)")
    return c


def bayes_hyperplane(mu0, mu1, cov) -> tuple[np.ndarray, float]:
    """Proposition 3.1 (eq. 5): ``(w, b)`` with the Bayes rule "class 0 iff ``w @ v + b > 0``".

    ``w = Sigma^{-1}(mu0 - mu1)``, ``b = -w^T (mu0 + mu1) / 2`` (equal priors, shared covariance).
    """
    where = "bayes_hyperplane"
    mu0, mu1 = _vec(mu0, "mu0", where), _vec(mu1, "mu1", where)
    if mu0.shape != mu1.shape:
        raise checks.BadInput(f"{where}: mu0 and mu1 must have the same length, got {mu0.shape} and {mu1.shape}")
    cov = _cov(cov, len(mu0), "cov", where)
    w = np.linalg.solve(cov, mu0 - mu1)
    return w, float(-w @ (mu0 + mu1) / 2)


def hyperplane_shift(mu_c0, mu_c1, cov_c, mu_s0, mu_s1, cov_s, v_s) -> np.ndarray:
    """Theorem 3.2 (eq. 7): ``d = |w_s^T (v_s - (mu_s0 + mu_s1)/2)| / ||w_c||`` for each row of ``v_s``.

    The Bayes hyperplane fitted on ``(v_c, v_s)`` with a class-dependent ``v_s`` reads, at a fixed value of
    ``v_s``, ``w_c^T (v_c - m_c) = -w_s^T (v_s - m_s)`` (appendix A.2): a hyperplane in ``v_c`` parallel to the
    clean one of Proposition 3.1 and moved by ``d`` along ``w_c``.
    """
    where = "hyperplane_shift"
    w_c, _ = bayes_hyperplane(mu_c0, mu_c1, cov_c)
    w_s, b_s = bayes_hyperplane(mu_s0, mu_s1, cov_s)
    v_s = np.atleast_2d(np.asarray(v_s, dtype=np.float64))
    if v_s.shape[1] != len(w_s):
        raise checks.BadInput(f"{where}: v_s must have {len(w_s)} columns, got {v_s.shape}")
    return np.abs(v_s @ w_s + b_s) / np.linalg.norm(w_c)


def bayes_error(mu0, mu1, cov) -> float:
    """Error of the Bayes rule of Proposition 3.1: ``Phi(-Delta/2)`` with Mahalanobis distance ``Delta``."""
    w, _ = bayes_hyperplane(mu0, mu1, cov)
    delta = math.sqrt(float((np.asarray(mu0, float) - np.asarray(mu1, float)) @ w))
    return float(stats.norm.cdf(-delta / 2))


def poisoned_bayes_error(mu_c0, mu_c1, cov_c, mu_s0, mu_s1, cov_s, mu_t, cov_t) -> float:
    """Clean-test error of the Bayes classifier trained on poisoned features (eq. 6), tested on eq. (4).

    The poisoned rule scores ``g(v) = w_c^T(v_c - m_c) + w_s^T(v_s - m_s)``. On clean test data ``v_s ~ N(mu_t,
    Sigma_t)`` independently of ``y``, so given ``y`` the score is Gaussian with mean ``+-a + b``,
    ``a = w_c^T (mu_c0 - mu_c1) / 2``, ``b = w_s^T (mu_t - m_s)`` (the mean of eq. 7's signed shift times
    ``||w_c||``) and variance ``w_c^T Sigma_c w_c + w_s^T Sigma_t w_s``; the error is
    ``[Phi((-a - b)/s) + Phi((-a + b)/s)] / 2``.
    """
    where = "poisoned_bayes_error"
    w_c, _ = bayes_hyperplane(mu_c0, mu_c1, cov_c)
    w_s, b_s = bayes_hyperplane(mu_s0, mu_s1, cov_s)
    mu_t = _vec(mu_t, "mu_t", where)
    cov_t = _cov(cov_t, len(w_s), "cov_t", where)
    a = float(w_c @ (np.asarray(mu_c0, float) - np.asarray(mu_c1, float))) / 2
    b = float(w_s @ mu_t + b_s)
    s = math.sqrt(float(w_c @ np.atleast_2d(cov_c) @ w_c + w_s @ cov_t @ w_s))
    return float((stats.norm.cdf((-a - b) / s) + stats.norm.cdf((-a + b) / s)) / 2)


def normalized_mixture(delta, sigma) -> tuple[float, float]:
    """Eq. (9): the normalised mixture ``(N(-d_hat, s_hat) + N(d_hat, s_hat)) / 2`` of a feature whose class
    means are ``+-delta`` around their midpoint with std ``sigma``: ``d_hat = delta / sqrt(sigma^2 + delta^2)``,
    ``s_hat = sigma / sqrt(sigma^2 + delta^2)`` (zero mean, unit variance)."""
    delta = checks.number(delta, "delta", low=0.0, where="normalized_mixture")
    sigma = checks.number(sigma, "sigma", low=0.0, low_open=True, where="normalized_mixture")
    scale = math.hypot(sigma, delta)
    return delta / scale, sigma / scale


def _r(r, where):
    return checks.number(r, "r", low=0.0, where=where)


def kl_bounds(r) -> tuple[float, float]:
    """Theorem 3.3 (eq. 10): ``(ln(1 + r^2)/2 - ln 2, ln(1 + r^2)/2)`` bounds ``KL(p_z || N(0, 1))``."""
    upper = 0.5 * math.log1p(_r(r, "kl_bounds") ** 2)
    return upper - math.log(2), upper


def _mixture_pdf(v, r):
    d_hat, s_hat = r / math.sqrt(1 + r * r), 1 / math.sqrt(1 + r * r)
    return 0.5 * (stats.norm.pdf(v, -d_hat, s_hat) + stats.norm.pdf(v, d_hat, s_hat))


def mixture_kl(r) -> float:
    """``S(r) = KL(p_z || N(0, 1))`` of eq. (11) by adaptive quadrature (no closed form exists)."""
    r = _r(r, "mixture_kl")

    def f(v):
        p = _mixture_pdf(v, r)
        return p * (np.log(p) - stats.norm.logpdf(v)) if p > 0 else 0.0
    s_hat = 1 / math.sqrt(1 + r * r)
    edge = 1 + 12 * s_hat  # |v| <= d_hat + 12 s_hat holds all the mass
    pts = [-r * s_hat, 0.0, r * s_hat]
    return float(integrate.quad(f, -edge, edge, points=pts, limit=400, epsabs=1e-12, epsrel=1e-10)[0])


def kl_inverse(eps) -> float:
    """``S^{-1}(eps)`` of Remark 3.4: the largest ``r`` whose normalised mixture has ``KL <= eps``.

    ``S`` is increasing (eq. 11), so the root is unique; Theorem 3.3 brackets it in
    ``[sqrt(e^{2 eps} - 1), sqrt(4 e^{2 eps} - 1)]`` (the right end is widened: for large ``r`` the lower
    bound is tight to rounding, so ``S`` there may sit a hair below ``eps``).
    """
    eps = checks.number(eps, "eps", low=0.0, low_open=True, where="kl_inverse")
    lo, hi = math.sqrt(math.expm1(2 * eps)), 2 * math.sqrt(4 * math.exp(2 * eps))
    return float(optimize.brentq(lambda r: mixture_kl(r) - eps, lo, hi, xtol=1e-10))


def _gauss_overlap(m1, s1, m2, s2):  # int N(v; m1, s1) N(v; m2, s2) dv = N(m1; m2, sqrt(s1^2 + s2^2))
    return stats.norm.pdf(m1, m2, math.hypot(s1, s2))


def mixture_l2_distance(r, r_hat) -> float:
    """Remark 3.4's error ``int [P_hat(v) - p_z(v)]^2 dv`` between the normalised mixtures of ``r_hat`` and ``r``."""
    comps = []
    for rr in (_r(r, "mixture_l2_distance"), _r(r_hat, "mixture_l2_distance")):
        d, s = rr / math.sqrt(1 + rr * rr), 1 / math.sqrt(1 + rr * rr)
        comps.append([(-d, s), (d, s)])

    def inner(a, b):  # <p_a, p_b> in L2 for two equal-weight mixtures
        return sum(_gauss_overlap(*ca, *cb) for ca in a for cb in b) / 4
    return float(inner(comps[0], comps[0]) + inner(comps[1], comps[1]) - 2 * inner(comps[0], comps[1]))


def gaussian_entropy(cov) -> float:
    """Proposition 3.5 (eq. 12): ``H(v_s | y) = D/2 (1 + ln 2 pi) + 1/2 ln |Sigma_s|`` (nats).

    A 1-D array is read as the per-feature standard deviations of independent features (eq. 13:
    ``D/2 (1 + ln 2 pi) + sum_d ln sigma_d``).
    """
    a = np.asarray(cov, dtype=np.float64)
    if a.ndim == 1:
        if not np.all(np.isfinite(a)) or np.any(a <= 0):
            raise checks.BadInput("gaussian_entropy: standard deviations must be finite and positive")
        return float(len(a) / 2 * (1 + math.log(2 * math.pi)) + np.log(a).sum())
    a = _cov(a, a.shape[0] if a.ndim == 2 else -1, "cov", "gaussian_entropy")
    return float(len(a) / 2 * (1 + math.log(2 * math.pi)) + 0.5 * np.linalg.slogdet(a)[1])
