"""Behaviour of poisonbook.theory against Lu, Kamath & Yu (ICML 2023), Section 3 and Appendix A."""

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import optimize, special

from poisonbook import theory as T

FAST = settings(max_examples=40, deadline=None)
W1E = 0.2784645427610738  # W(1/e), to 16 digits


def dense_phi(loss, lo=-30.0, hi=30.0, n=600_001):
    t = np.linspace(lo, hi, n)
    return t, t * T.margin_loss_derivative(t, loss)


# ---------------------------------------------------------------------------- the end points a, b


@pytest.mark.parametrize("loss", T.MARGIN_LOSSES)
def test_a_is_the_dense_infimum_and_b_is_unbounded(loss):
    a, b = T.interval_endpoints(loss)
    _, v = dense_phi(loss)
    assert a <= v.min() + 1e-12  # a is a lower bound of t l'(t) ...
    assert v.min() - a < 1e-8  # ... and the grid comes within 1e-8 of it
    assert b == np.inf
    for L in (10.0, 100.0):  # sup over [-L, L] grows without bound: b = inf (Corollary 2)
        assert dense_phi(loss, -L, L, 20_001)[1].max() >= 0.9 * L


@pytest.mark.parametrize("loss", T.MARGIN_LOSSES)
def test_numeric_end_points_on_a_bounded_margin_range(loss):
    a, b = T.interval_endpoints(loss, margin_range=(-8.0, 8.0))
    _, v = dense_phi(loss, -8.0, 8.0)
    assert a == pytest.approx(v.min(), abs=1e-8) and b == pytest.approx(v.max(), rel=1e-8)
    assert a == pytest.approx(T.interval_endpoints(loss)[0], abs=1e-8)  # the minimiser lies inside


def test_closed_forms_named_in_the_paper():
    assert T.interval_endpoints("logistic")[0] == pytest.approx(-W1E, abs=1e-15)  # eq. (18)
    assert T.interval_endpoints("exponential")[0] == pytest.approx(-1 / np.e, abs=1e-15)
    assert T.interval_endpoints("square")[0] == -0.25
    assert T.interval_endpoints("hinge")[0] == -1.0
    assert T.interval_endpoints("cross_entropy", c=10) == (T.lambert_bound(10), np.inf)


def test_callable_derivative_uses_the_numeric_route():
    a, b = T.interval_endpoints(lambda t: -np.exp(-t), margin_range=(-5.0, 5.0))
    assert a == pytest.approx(-1 / np.e, abs=1e-10) and b == pytest.approx(5 * np.exp(5), rel=1e-10)


@pytest.mark.parametrize("loss", T.MARGIN_LOSSES)
def test_derivative_matches_autograd(loss):
    m = torch.linspace(-4, 4, 81, dtype=torch.float64)
    m = m[(m - 1).abs() > 1e-3].requires_grad_(True)  # away from the hinge's kink
    (auto,) = torch.autograd.grad(T.margin_loss(m, loss).sum(), m)
    assert torch.allclose(auto, T.margin_loss_derivative(m.detach(), loss), atol=1e-12)
    assert np.allclose(T.margin_loss_derivative(m.detach().numpy(), loss), auto.numpy(), atol=1e-12)


# ---------------------------------------------------------------------------- Lambert W and eq. (A.8)


@pytest.mark.parametrize("c", [2, 3, 5])
def test_lambert_bound_is_the_numerical_infimum_of_the_trace_term(c):
    """-W((c-1)/e) against a direct minimisation of <h, softmax(h) - e_1> over logits h in R^c (eq. A.8)."""
    from scipy.optimize import minimize

    def trace(h):
        p = np.exp(h - h.max())
        p /= p.sum()
        return float(h @ (p - np.eye(c)[0]))

    rng = np.random.default_rng(c)
    best = min(minimize(trace, rng.normal(0, 2, c), method="Nelder-Mead",
                        options=dict(xatol=1e-10, fatol=1e-12, maxiter=20000)).fun for _ in range(20))
    assert best == pytest.approx(T.lambert_bound(c), abs=1e-6)
    assert best > T.lambert_bound(c) - 1e-9, "no logits go below the bound"


def test_more_classes_give_a_lower_bound():
    """Section 5.2: more classes, a lower infimum of the trace term, a smaller tau(c). Checked on the dense
    minimum of the 1-D function (A.11), not on the Lambert function (whose values are scipy's to test)."""
    t = np.linspace(-30, 30, 300_001)
    dense = [(t * np.exp(t) / (1 / (c - 1) + np.exp(t))).min() for c in range(2, 20)]
    assert all(np.diff(dense) < 0)
    assert np.allclose([T.lambert_bound(c) for c in range(2, 20)], dense, atol=1e-7)


@FAST
@given(st.integers(2, 12), st.data())
def test_cross_entropy_bound_holds_for_random_logits(c, data):
    h = np.array(data.draw(st.lists(st.floats(-30, 30), min_size=c, max_size=c)))
    label = data.draw(st.integers(0, c - 1))
    val = T.cross_entropy_trace_terms(h[None], np.array([label]))[0]
    assert val >= T.lambert_bound(c) - 1e-12


@pytest.mark.parametrize("c", [2, 3, 10, 100])
def test_cross_entropy_bound_is_attained_at_its_minimiser(c):
    wc = -T.lambert_bound(c)
    h = np.full(c, -1.0 - wc)  # h_k - h_i = t* = -1 - W((c-1)/e) for k != i (eq. A.11)
    h[0] = 0.0
    assert T.cross_entropy_trace_terms(h[None], np.array([0]))[0] == pytest.approx(-wc, abs=1e-12)
    t = np.linspace(-30, 30, 600_001)  # the 1-D function of (A.11)
    assert (t * np.exp(t) / (1 / (c - 1) + np.exp(t))).min() == pytest.approx(-wc, abs=1e-8)


def test_two_class_cross_entropy_is_logistic_regression():
    rng = np.random.default_rng(1)
    X, W = rng.normal(size=(60, 3)), rng.normal(size=(3, 2))
    lab = rng.integers(0, 2, 60)
    tau_ce = T.poisoning_threshold(W, X, lab, "cross_entropy")
    tau_lr = T.poisoning_threshold(W[:, 1] - W[:, 0], X, 2.0 * lab - 1, "logistic")
    assert tau_ce == pytest.approx(tau_lr, rel=1e-10)  # eq. (29) with c = 2 is eq. (20)


def test_trace_statistic_is_the_inner_product_with_the_gradient():
    rng = np.random.default_rng(2)
    X, W, lab = rng.normal(size=(40, 4)), rng.normal(size=(4, 5)), rng.integers(0, 5, 40)
    G = T.linear_loss_gradient(W, X, lab, "cross_entropy")
    assert np.sum(W * G) == pytest.approx(T.clean_inner_product(W, X, lab, "cross_entropy"), rel=1e-12)
    assert T.threshold_from_logits(X @ W, lab, c_bound=2) > T.poisoning_threshold(W, X, lab, "cross_entropy")


# ---------------------------------------------------------------------------- gradients and thresholds


@pytest.mark.parametrize("loss", T.MARGIN_LOSSES + ("least_squares",))
def test_linear_gradient_matches_autograd(loss):
    rng = np.random.default_rng(3)
    X, y, w = rng.normal(size=(30, 4)), np.sign(rng.normal(size=30)), rng.normal(size=4)
    wt = torch.tensor(w, requires_grad=True)
    Xt, yt = torch.tensor(X), torch.tensor(y)
    if loss == "least_squares":
        val = (0.5 * (yt - Xt @ wt) ** 2).mean()
    else:
        val = T.margin_loss(yt * (Xt @ wt), loss).mean()
    (g,) = torch.autograd.grad(val, wt)
    assert np.allclose(T.linear_loss_gradient(w, X, y, loss), g.numpy(), atol=1e-12)


def test_cross_entropy_gradient_matches_autograd():
    rng = np.random.default_rng(4)
    X, W, lab = rng.normal(size=(25, 3)), rng.normal(size=(3, 4)), rng.integers(0, 4, 25)
    Wt = torch.tensor(W, requires_grad=True)
    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(torch.tensor(X) @ Wt, torch.tensor(lab)), Wt)
    assert np.allclose(T.linear_loss_gradient(W, X, lab, "cross_entropy"), g.numpy(), atol=1e-12)


@FAST
@given(st.floats(-5, 50), st.floats(-3, -1e-3), st.floats(1e-3, 1e3))
def test_eq16_in_lambda_equals_tau_in_eps(s, a, b):
    assume(a <= s <= b)
    lam = T.lambda_threshold(s, a, b)
    assert lam == pytest.approx(T.eps_to_lambda(T.threshold_from_inner(s, a, b)), rel=1e-9, abs=1e-12)
    assert T.lambda_to_eps(T.eps_to_lambda(0.37)) == pytest.approx(0.37)


def test_least_squares_is_poisonable_for_any_eps():
    rng = np.random.default_rng(5)
    X, y, w = rng.normal(size=(20, 3)), rng.normal(size=20), rng.normal(size=3)
    assert T.poisoning_threshold(w, X, y, "least_squares") == 0.0  # Example 1, Remark 2


def test_scaling_w_towards_zero_lowers_tau():
    rng = np.random.default_rng(6)
    X, y = rng.normal(size=(100, 3)), np.sign(rng.normal(size=100))
    w = rng.normal(size=3)
    w = w if T.clean_inner_product(w, X, y) > 0 else -w
    taus = [T.poisoning_threshold(k * w, X, y) for k in (1.0, 1e-2, 1e-6)]
    assert taus[0] > 0 and taus[2] < 1e-5  # Appendix C.8: tau -> 0 as w -> 0


def test_thresholds_from_model_outputs_agree_with_linear_ones():
    rng = np.random.default_rng(7)
    X, y, w = rng.normal(size=(50, 3)), np.sign(rng.normal(size=50)), rng.normal(size=3)
    Xb, wb = T.with_bias(X, w, 0.7)
    assert T.threshold_from_margins(y * (X @ w + 0.7)) == pytest.approx(T.poisoning_threshold(wb, Xb, y))


# ---------------------------------------------------------------------------- Theorem 2's construction


def random_problem(seed, n, d):
    rng = np.random.default_rng(seed)
    w, X = rng.normal(size=d) * 2, rng.normal(size=(n, d)) + rng.normal(size=d)
    return w, X, np.sign(rng.normal(size=n))


@FAST
@given(st.integers(0, 10**6), st.integers(3, 40), st.integers(1, 5), st.sampled_from(T.MARGIN_LOSSES),
       st.floats(1.0, 5.0))
def test_theorem2_set_zeroes_the_mixed_gradient_above_tau(seed, n, d, loss, factor):
    w, X, y = random_problem(seed, n, d)
    tau = T.poisoning_threshold(w, X, y, loss)
    eps = factor * tau if tau > 0 else factor
    P = T.theorem2_poisons(w, X, y, eps, loss, n_copies=3)
    assert P is not None
    g_mu = T.linear_loss_gradient(w, X, y, loss)
    mixed = g_mu + eps * T.linear_loss_gradient(w, P.X, P.y, loss)  # eq. (A.3)-(A.4)
    assert np.linalg.norm(mixed) <= 1e-9 * (1 + np.linalg.norm(g_mu))
    assert P.margin == pytest.approx(float(w @ P.X[0]), abs=1e-9 * (1 + abs(P.margin)))


@FAST
@given(st.integers(0, 10**6), st.integers(3, 40), st.integers(1, 5), st.sampled_from(T.MARGIN_LOSSES),
       st.floats(0.01, 0.99), st.integers(1, 6), st.floats(0.1, 30.0))
def test_no_poisoning_set_exists_below_tau(seed, n, d, loss, factor, k, scale):
    w, X, y = random_problem(seed, n, d)
    tau = T.poisoning_threshold(w, X, y, loss)
    assume(tau > 1e-6)
    eps = factor * tau
    assert T.theorem2_poisons(w, X, y, eps, loss) is None
    bound = T.mixed_gradient_lower_bound(w, X, y, eps, loss)
    assert bound > 0
    rng = np.random.default_rng(seed + 1)  # any poisoning set: ||g(chi)|| stays above the certificate
    Xp, yp = scale * rng.normal(size=(k, d)), np.sign(rng.normal(size=k))
    lam = T.eps_to_lambda(eps)
    g_chi = (1 - lam) * T.linear_loss_gradient(w, X, y, loss) + lam * T.linear_loss_gradient(w, Xp, yp, loss)
    assert np.linalg.norm(g_chi) >= bound * (1 - 1e-9)


def test_optimised_poisons_cannot_beat_the_certificate_below_tau():
    w, X, y = random_problem(11, 30, 2)
    tau = T.poisoning_threshold(w, X, y)
    assert tau > 0
    eps, lam = 0.7 * tau, T.eps_to_lambda(0.7 * tau)
    g_mu = T.linear_loss_gradient(w, X, y)

    def norm(z):  # three free poisons, labels +1: labels are absorbed into the features (Example 2)
        return np.linalg.norm((1 - lam) * g_mu + lam * T.linear_loss_gradient(w, z.reshape(3, 2), np.ones(3)))

    opts = {"maxiter": 4000, "xatol": 1e-10, "fatol": 1e-12}
    starts = [np.random.default_rng(s).normal(size=6) * 3 for s in range(3)]
    best = min(optimize.minimize(norm, z0, method="Nelder-Mead", options=opts).fun for z0 in starts)
    bound = T.mixed_gradient_lower_bound(w, X, y, eps)
    assert bound * (1 - 1e-9) <= best <= bound * 1.01  # the certificate holds and is tight


def test_theorem2_at_exactly_tau():
    w, X, y = random_problem(3, 20, 3)
    tau = T.poisoning_threshold(w, X, y)
    P = T.theorem2_poisons(w, X, y, tau)
    assert P is not None and P.margin == pytest.approx(1 + W1E)  # a is attained at t = 1 + W(1/e)


@pytest.mark.parametrize("loss", T.MARGIN_LOSSES)
def test_remark1_when_w_is_orthogonal_to_the_clean_gradient(loss):
    X = np.array([[0.0, 1.0], [0.0, -2.0], [0.0, 0.5]])  # every margin is 0, so <w, g(mu)> = 0
    y, w = np.array([1.0, -1.0, -1.0]), np.array([1.0, 0.0])
    assert T.clean_inner_product(w, X, y, loss) == 0.0 and T.poisoning_threshold(w, X, y, loss) == 0.0
    P = T.theorem2_poisons(w, X, y, 0.01, loss)
    mixed = T.linear_loss_gradient(w, X, y, loss) + 0.01 * T.linear_loss_gradient(w, P.X, P.y, loss)
    assert np.linalg.norm(mixed) < 1e-12


@pytest.mark.parametrize("loss", T.MARGIN_LOSSES)
def test_theorem2_when_w_is_nearly_orthogonal(loss):
    X = np.array([[1e-9, 1.0], [0.0, -2.0], [0.0, 0.5]])  # <w, g(mu)> ~ 1e-10: tiny margins t*
    y, w = np.array([1.0, -1.0, -1.0]), np.array([1.0, 0.0])
    g = T.linear_loss_gradient(w, X, y, loss)
    P = T.theorem2_poisons(w, X, y, 0.01, loss)
    assert np.linalg.norm(g + 0.01 * T.linear_loss_gradient(w, P.X, P.y, loss)) < 1e-9 * np.linalg.norm(g)


# ---------------------------------------------------------------------------- invalid inputs


@pytest.mark.parametrize("call, match", [
    (lambda: T.poisoning_threshold([1.0, 2.0], [[1.0, 0.0]], [0.0]), "-1 or \\+1"),
    (lambda: T.poisoning_threshold([1.0, 2.0], [[1.0, 0.0]], [1.0, -1.0]), "shape \\(n,\\)"),
    (lambda: T.poisoning_threshold([1.0], [[1.0, 0.0]], [1.0]), "w must have shape"),
    (lambda: T.poisoning_threshold([1.0, np.nan], [[1.0, 0.0]], [1.0]), "non-finite"),
    (lambda: T.poisoning_threshold([1.0, 2.0], [[1.0, np.inf]], [1.0]), "non-finite"),
    (lambda: T.poisoning_threshold([1.0, 2.0], [[1.0, 0.0]], [1.0], "perceptron"), "unknown loss"),
    (lambda: T.poisoning_threshold(np.ones((2, 3)), np.ones((4, 2)), [0, 1, 2, 3], "cross_entropy"), "0..2"),
    (lambda: T.poisoning_threshold(np.ones(2), np.ones((4, 2)), [0, 1, 2, 1], "cross_entropy"), "\\(d, c\\)"),
    (lambda: T.lambert_bound(1), "c must be an integer >= 2"),
    (lambda: T.lambert_bound(2.5), "c must be an integer"),
    (lambda: T.interval_endpoints("cross_entropy"), "number of classes"),
    (lambda: T.interval_endpoints(lambda t: t), "margin_range"),
    (lambda: T.theorem2_poisons([1.0], [[1.0]], [1.0], 0.0), "eps_d"),
    (lambda: T.theorem2_poisons([1.0], [[1.0]], [1.0], np.nan), "eps_d"),
    (lambda: T.theorem2_poisons([1.0], [[1.0]], [1.0], 1.0, "cross_entropy"), "margin losses"),
    (lambda: T.mixed_gradient_lower_bound([1.0], [[1.0]], [1.0], -1.0), "eps_d"),
    (lambda: T.cross_entropy_trace_terms(np.ones((3, 2)), np.array([[1, 1], [1, 0], [0, 1]])), "one-hot"),
    (lambda: T.lambda_to_eps(1.5), "lambda"),
])
def test_invalid_inputs_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_torch_inputs_are_accepted():
    rng = np.random.default_rng(8)
    X, y, w = rng.normal(size=(10, 2)), np.sign(rng.normal(size=10)), rng.normal(size=2)
    tau = T.poisoning_threshold(w, X, y)
    assert T.poisoning_threshold(torch.tensor(w), torch.tensor(X), torch.tensor(y)) == tau
