"""Closed forms of RDM-DC's appendix A (Zheng & Li 2023, ``papers/000``): poisoned deviation of a mean.

Setting (Sec. 4.3, Lemma 4.1 = Lemma A.1): clean representations ``D`` and poisons ``B`` with
covariances ``<= sigma^2 I``, mixture ``P = (1 - eps) D + eps B``, ``delta = mu_B - mu_D``, ``v`` the
top eigenvector of ``Sigma_P``. Every function takes plain floats (or numpy arrays) and returns
the paper's expression; the chapter checks each one against samples and numerical optimisation.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from scipy.stats import norm

from .. import checks

__all__ = ["ALPHA_MIN", "chebyshev_bound", "projection_tail_bound", "alignment_bound",
           "alignment_bound_alpha",
           "corollary_a2_lhs", "corollary_a2_rhs", "alpha_min", "lemma_threshold", "mean_deviation",
           "boundary_deviation", "calibrated_deviation_bound", "remaining_bound", "gaussian_survival"]

#: Cor. A.2's constant: (4/5) sqrt(alpha - 10/9) = 3/2 at eps = 1/10 gives alpha = (15/8)^2 + 10/9.
ALPHA_MIN = Fraction(2665, 576)


def _eps(eps, where, high=1.0):
    return checks.number(eps, "eps", low=0.0, high=high, low_open=True, high_open=True, where=where)


def chebyshev_bound(variance: float, t: float) -> float:
    """Lemma A.2, eq. (7): ``P(|X - mu| >= t) <= sigma^2 / t^2`` (capped at 1)."""
    variance = checks.number(variance, "variance", low=0.0, where="chebyshev_bound")
    t = checks.number(t, "t", low=0.0, low_open=True, where="chebyshev_bound")
    return min(1.0, variance / t**2)


def projection_tail_bound(sigma: float, t: float) -> float:
    """Cor. A.1, eq. (8): ``Cov[X] <= sigma^2 I``, any unit u: ``P(|<X - mu, u>| > t) <= sigma^2/t^2``."""
    return chebyshev_bound(checks.number(sigma, "sigma", low=0.0, where="projection_tail_bound") ** 2, t)


def alignment_bound(delta_norm2: float, sigma: float, eps: float) -> float:
    """Lemma A.3, eq. (15): ``<v, delta>^2 >= ||delta||^2 - sigma^2 / (eps (1 - eps))``."""
    eps = _eps(eps, "alignment_bound")
    return delta_norm2 - sigma**2 / (eps * (1 - eps))


def alignment_bound_alpha(alpha: float, sigma: float, eps: float) -> float:
    """Lemma A.3, eq. (16): if ``||delta||^2 >= alpha sigma^2 / eps`` then
    ``<v, delta>^2 >= (alpha - 1/(1-eps)) sigma^2 / eps``."""
    eps = _eps(eps, "alignment_bound_alpha")
    return (alpha * sigma**2 - sigma**2 / (1 - eps)) / eps


def corollary_a2_lhs(alpha: float, eps, sigma: float = 1.0):
    """Eq. (17): ``(1 - 2 eps) sqrt(alpha - 1/(1 - eps)) sigma / sqrt(eps)``, a lower bound on
    ``(1 - 2 eps) |<delta, v>|``."""
    eps = np.asarray(eps, dtype=float)
    return (1 - 2 * eps) * np.sqrt(np.maximum(alpha - 1 / (1 - eps), 0.0)) * sigma / np.sqrt(eps)


def corollary_a2_rhs(eps, sigma: float = 1.0):
    """Cor. A.2's target ``3 sigma / (2 sqrt(eps))``."""
    return 1.5 * sigma / np.sqrt(np.asarray(eps, dtype=float))


def alpha_min(eps_max: float = 0.1) -> float:
    """The alpha at which eq. (18) is tight: ``(1 - 2e) sqrt(alpha - 1/(1-e)) = 3/2`` at ``e = eps_max``."""
    e = _eps(eps_max, "alpha_min", high=0.5)
    return (1.5 / (1 - 2 * e)) ** 2 + 1 / (1 - e)


def lemma_threshold(eps: float, delta_v: float, sigma: float) -> float:
    """Lemma A.1's threshold ``t = eps |<delta, v>| + sigma / sqrt(eps)``."""
    eps = _eps(eps, "lemma_threshold")
    return eps * abs(delta_v) + sigma / np.sqrt(eps)


def mean_deviation(eps, delta_norm):
    """Eq. (6) in expectation: the plain mean's poisoned deviation ``||mu_P - mu_D|| = eps ||delta||``."""
    return np.asarray(eps, dtype=float) * np.asarray(delta_norm, dtype=float)


def boundary_deviation(eps, alpha: float, sigma: float):
    """Sec. 4.3: at ``||delta||^2 = alpha sigma^2 / eps`` the deviation is ``sqrt(alpha eps) sigma``."""
    return np.sqrt(alpha * np.asarray(eps, dtype=float)) * sigma


def remaining_bound(eps: float, delta_v: float, sigma: float) -> float:
    """Eq. (21): the poisons that survive the filter deviate the mean by at most ``4 eps^2 t``."""
    return 4 * eps**2 * lemma_threshold(eps, delta_v, sigma)


def calibrated_deviation_bound(eps, delta_norm):
    """Eq. (22): ``(20/3) eps^3 ||delta||``; the paper states Theta(eps^2 sqrt(d_r)) (eq. (23))."""
    return 20 / 3 * np.asarray(eps, dtype=float) ** 3 * np.asarray(delta_norm, dtype=float)


def gaussian_survival(eps: float, delta_v: float, sigma: float, threshold: float) -> float:
    """For Gaussian poisons ``B = N(mu_B, sigma^2 I)``: the fraction with ``|<r - mu_P, v>| < threshold``.

    Along v a poison is ``(1 - eps) <delta, v> + sigma Z``, Z standard normal (eq. (20), step 1).
    """
    c = (1 - eps) * abs(delta_v)
    return float(norm.cdf((threshold - c) / sigma) - norm.cdf((-threshold - c) / sigma))
