"""RDM-DC appendix A (papers/000) against samples, eigendecompositions and root finding."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.optimize import brentq

from poisonbook import checks, profiles, theory
from poisonbook.experiments import robust_dm


def test_chebyshev_and_corollary_a1_hold_on_samples():
    rng = np.random.default_rng(0)
    x = rng.exponential(1.0, 200_000)  # mean 1, variance 1, skewed
    for t in (1.2, 2.0, 3.0):
        assert np.mean(np.abs(x - 1) >= t) <= theory.chebyshev_bound(1.0, t)
    # Cor. A.1: Cov = diag(s_i^2) <= 1 * I, any unit u
    s = np.linspace(0.2, 1.0, 10)
    xs = rng.standard_normal((100_000, 10)) * s
    for _ in range(5):
        u = rng.standard_normal(10)
        u /= np.linalg.norm(u)
        for t in (1.0, 1.5, 2.5):
            assert np.mean(np.abs(xs @ u) > t) <= theory.projection_tail_bound(1.0, t)


def test_lemma_a3_alignment_over_alpha():
    rng = np.random.default_rng(1)
    d, n, eps = 30, 40_000, 0.05
    for alpha in (2.0, 4.0, 8.0, 16.0):
        dist = math.sqrt(alpha / eps)
        delta = rng.standard_normal(d)
        delta *= dist / np.linalg.norm(delta)
        x = rng.standard_normal((n, d)) * rng.uniform(0.3, 1.0, d)  # Cov <= I, anisotropic
        x[: int(eps * n)] += delta
        v = np.linalg.eigh(np.cov(x, rowvar=False))[1][:, -1]
        measured = float(v @ delta) ** 2
        assert measured >= theory.alignment_bound_alpha(alpha, 1.0, eps) * 0.97  # sampling slack 3%
        assert measured <= dist**2 + 1e-9


def test_corollary_a2_constant():
    assert theory.ALPHA_MIN == Fraction(2665, 576) == Fraction(15, 8) ** 2 + Fraction(10, 9)
    # the alpha at which eq. (18) is tight at eps = 1/10, by root finding on eq. (17)
    root = brentq(lambda a: theory.corollary_a2_lhs(a, 0.1) - theory.corollary_a2_rhs(0.1), 1.2, 50)
    assert abs(root - float(theory.ALPHA_MIN)) < 1e-9
    grid = np.linspace(1e-3, 0.1, 400)
    ratio = theory.corollary_a2_lhs(float(theory.ALPHA_MIN) + 1e-6, grid) / theory.corollary_a2_rhs(grid)
    assert (ratio > 1).all() and np.argmin(ratio) == len(grid) - 1, "the worst eps is 1/10"
    assert theory.corollary_a2_lhs(float(theory.ALPHA_MIN) - 1e-3, 0.1) < theory.corollary_a2_rhs(0.1)


def test_mixture_slopes_match_the_derivation():
    r = robust_dm.mixture_slopes(profiles.get("robust-dm-mixture", "ci"))
    m = r["metrics"]
    assert abs(m["slope_mean_fixed"] - 1) < 0.1  # eq. (6) at a fixed distance
    assert abs(m["slope_mean_boundary"] - 0.5) < 0.1  # sqrt(alpha eps) sigma
    assert abs(m["slope_mean_d"] - 0.5) < 0.1  # sqrt(d)
    assert abs(m["slope_cal_floor"]) < 0.15  # sigma sqrt(d/n): independent of eps
    c = r["curves"]
    assert all(p <= b for p, b in zip(c["cal_poisoned"], c["cal_bound"]))  # eq. (22)
    floor = np.mean(c["cal_floor"])
    assert abs(floor / m["floor_predicted"] - 1) < 0.25


BAD = [
    (lambda: theory.chebyshev_bound(1.0, 0.0), checks.BadInput, "t"),
    (lambda: theory.alignment_bound(1.0, 1.0, 1.0), checks.BadInput, "eps"),
    (lambda: theory.lemma_threshold(float("nan"), 1.0, 1.0), checks.BadInput, "eps"),
    (lambda: theory.alpha_min(0.5), checks.BadInput, "eps"),
]


@pytest.mark.parametrize("call,error,word", BAD)
def test_bad_input(call, error, word):
    with pytest.raises(error) as info:
        call()
    assert word in str(info.value)


def test_real_features_driver_tiny():
    cfg = profiles.get("robust-dm-features", "ci", class_size=150, batch=64, draws=1, fractions=[0.05, 0.2],
                       eps_x=[64 / 255], width=8, depth=1, pgd_steps=2)
    m = robust_dm.real_features(cfg)["metrics"]
    assert m["mean.error@0.2/64"] > m["mean.error@0.05/64"], "more poisons, larger deviation of the mean"
    assert all(m[f"{n}.ms"] > 0 for n in robust_dm.NAMES)


def test_clean_utility_driver_tiny():
    cfg = profiles.get("robust-dm-clean", "ci", ipc=1, iterations=2, width=8, depth=1, eval_models=2,
                       eval_epochs=3, batch_real=32)
    r = robust_dm.clean_utility(cfg)
    accs = [r["metrics"][f"{n}.acc_mean"] for n in robust_dm.NAMES]
    assert all(0 <= a <= 100 for a in accs) and r["artefacts"]["mean.images"].shape[0] == 10
