"""Closed forms and numeric checks for the theory chapters.

Model poisonability (Lu, Kamath & Yu, "Exploring the Limits of (Model-Targeted)
Indiscriminate Data Poisoning Attacks", ICML 2023; "the paper" below).

Conventions (used by every function here):

* **Binary margin losses** (Example 2, Corollary 2): labels ``y`` in {-1, +1}, margin
  ``m = y * w^T x``, loss ``l(m)``; the label is absorbed into the feature,
  ``x~ = y x`` (Example 2), so the per-sample gradient is ``l'(m) * y * x`` (eq. 10).
  Losses: ``"square"`` ``1/2 (1 - m)^2`` (equal to ``1/2 (y - w^T x)^2`` for y in
  {-1, +1}), ``"logistic"`` ``log(1 + exp(-m))`` (eq. 17), ``"exponential"``
  ``exp(-m)`` (AdaBoost), ``"hinge"`` ``max(0, 1 - m)`` (SVM; the subgradient at the
  kink ``m = 1`` is taken as ``-1``, the element that attains the infimum ``a``).
* ``"least_squares"``: regression, ``1/2 (y - w^T x)^2`` with real ``y`` (Example 1,
  eqs. 8-9).
* ``"cross_entropy"`` (Example 3, eq. 26): ``W`` of shape (d, c), ``h = W^T x``, labels
  as integers in ``0..c-1`` or one-hot rows.
* **No implicit bias.** ``w^T x`` has no intercept; to include one, append a constant
  feature with :func:`with_bias` (and the bias to ``w``). The functions ending in
  ``_from_margins`` / ``_from_logits`` take a model's outputs directly, so they cover
  biases and, through Theorem 4 (eq. A.17 with ``A = I``), neural networks (there the
  threshold is a necessary condition only).
* ``eps_d`` is the poisoning ratio relative to the clean set, ``lambda = eps_d / (1 +
  eps_d)`` the poisoned fraction of the mixed set (Section 3).

Arrays may be numpy arrays, lists or torch tensors; everything is computed in float64
numpy (torch tensors are detached and copied to the CPU).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import torch
from scipy import optimize, special

from .. import checks

__all__ = [
    "MARGIN_LOSSES",
    "LOSSES",
    "margin_loss",
    "margin_loss_derivative",
    "lambert_bound",
    "interval_endpoints",
    "numeric_interval",
    "with_bias",
    "linear_loss_gradient",
    "cross_entropy_trace_terms",
    "clean_inner_product",
    "threshold_from_inner",
    "threshold_from_margins",
    "threshold_from_logits",
    "poisoning_threshold",
    "eps_to_lambda",
    "lambda_to_eps",
    "lambda_threshold",
    "mixed_gradient_lower_bound",
    "Theorem2Poisons",
    "theorem2_poisons",
]

MARGIN_LOSSES = ("square", "logistic", "exponential", "hinge")
LOSSES = MARGIN_LOSSES + ("least_squares", "cross_entropy")

# argmin of t * l'(t) over the real line, per margin loss (closed forms, see interval_endpoints)
_ARGMIN = {
    "square": 0.5,
    "logistic": 1.0 + float(special.lambertw(1 / np.e).real),
    "exponential": 1.0,
    "hinge": 1.0,
}


# ----------------------------------------------------------------------------- losses


def _xp(m):
    return torch if isinstance(m, torch.Tensor) else np


def margin_loss(m, loss: str):
    """Binary margin loss ``l(m)`` (numpy or torch input; see the module conventions).

    ``"logistic"`` is eq. (17) of Lu, Kamath & Yu (2023); the others are the standard margin
    losses named after Corollary 2.
    """
    xp = _xp(m)
    if loss == "square":
        return 0.5 * (1.0 - m) ** 2
    if loss == "logistic":
        return torch.nn.functional.softplus(-m) if xp is torch else np.logaddexp(0.0, -m)
    if loss == "exponential":
        return xp.exp(-m)
    if loss == "hinge":
        return torch.clamp(1.0 - m, min=0.0) if xp is torch else np.maximum(1.0 - m, 0.0)
    raise ValueError(f"unknown margin loss {loss!r}; expected one of {MARGIN_LOSSES}")


def margin_loss_derivative(m, loss: str):
    """Derivative ``l'(m)`` of a binary margin loss (numpy or torch input).

    Used in eq. (10) of Lu, Kamath & Yu (2023): ``g(x, y) = l'(y w^T x) * y * x``. For the
    hinge loss the subgradient ``-1`` is used at the kink ``m = 1`` (Definition 1 only asks
    for a vanishing subgradient), so ``t * l'(t)`` attains its infimum ``a = -1``.
    """
    xp = _xp(m)
    if loss == "square":
        return m - 1.0
    if loss == "logistic":
        return -(torch.sigmoid(-m) if xp is torch else special.expit(-m))
    if loss == "exponential":
        return -xp.exp(-m)
    if loss == "hinge":
        out = xp.where(m <= 1.0, -1.0, 0.0)
        return out.to(m.dtype) if xp is torch else out
    raise ValueError(f"unknown margin loss {loss!r}; expected one of {MARGIN_LOSSES}")


# ----------------------------------------------------------------------------- the interval J


def lambert_bound(c: int = 2) -> float:
    """``-W((c-1)/e)``: the tight lower bound of ``<h, softmax(h) - y>`` for c classes.

    Eq. (A.8)-(A.12) of Lu, Kamath & Yu (2023) (Example 3); for ``c = 2`` it is the
    logistic bound ``-W(1/e) ~ -0.2785`` of eq. (18). ``W`` is Lambert's function on its
    real principal branch (``scipy.special.lambertw``, branch 0).
    """
    c = checks.integer(c, "the number of classes c", low=2, where="lambert_bound")
    return -float(special.lambertw((c - 1) / np.e, 0).real)


def numeric_interval(phi: Callable, lo: float, hi: float, n_grid: int = 20001) -> tuple[float, float]:
    """Inf and sup of a scalar function ``phi`` on ``[lo, hi]``: dense grid, then refinement.

    The numerical route to the end points (14)-(15) / (21) of Lu, Kamath & Yu (2023) when no
    closed form exists: evaluate ``phi`` (vectorised over a numpy array) on ``n_grid`` points,
    then refine each extremum with bounded Brent (``scipy.optimize.minimize_scalar``) between
    the grid neighbours of the best grid point.
    """
    lo = checks.number(lo, "lo", where="numeric_interval")
    hi = checks.number(hi, "hi", low=lo, low_open=True, where="numeric_interval")
    n_grid = checks.integer(n_grid, "n_grid (grid points, both end points included)", low=2,
                            where="numeric_interval")
    t = np.linspace(lo, hi, n_grid)
    v = np.asarray(phi(t), dtype=float)
    out = []
    for sign in (1.0, -1.0):
        k = int(np.argmin(sign * v))
        left, right = t[max(k - 1, 0)], t[min(k + 1, len(t) - 1)]
        res = optimize.minimize_scalar(lambda s: sign * float(phi(np.array([s]))[0]),
                                       bounds=(left, right), method="bounded",
                                       options={"xatol": 1e-12})
        out.append(sign * min(sign * v[k], res.fun))
    return float(out[0]), float(out[1])


def interval_endpoints(loss, *, c: int | None = None, margin_range: tuple[float, float] | None = None,
                       n_grid: int = 20001) -> tuple[float, float]:
    """End points ``(a, b)`` of the interval J of Corollary 1 / Corollary 2.

    Lu, Kamath & Yu (2023), eqs. (14)-(15) and (21): ``a = inf t * l'(t)``, ``b = sup t * l'(t)``
    over the attainable margins ``t in w^T X~``. With ``margin_range=None`` the feature space
    is all of R^d (the paper's setting), so t ranges over R and the closed forms are

    * ``"square"`` (y in {-1,+1}): ``t (t - 1)`` -> ``a = -1/4`` at t = 1/2, ``b = inf``;
    * ``"logistic"``: ``-t / (1 + e^t)`` -> ``a = -W(1/e) ~ -0.2785`` at ``t = 1 + W(1/e)``,
      ``b = inf`` (eq. 18);
    * ``"exponential"``: ``-t e^{-t}`` -> ``a = -1/e`` at t = 1, ``b = inf``;
    * ``"hinge"``: ``-t`` for t <= 1, 0 after -> ``a = -1`` at t = 1, ``b = inf``;
    * ``"least_squares"`` (real y, Example 1): ``t (t - y)`` -> ``(-inf, inf)``;
    * ``"cross_entropy"`` with ``c`` classes (eqs. A.8-A.12, trace condition (27)-(28)):
      ``a = -W((c-1)/e)``, ``b = inf``.

    With ``margin_range=(lo, hi)`` (a bounded domain, e.g. ``||x|| <= R`` gives
    ``|t| <= ||w|| R``), or with ``loss`` a callable ``l'`` (vectorised over numpy arrays),
    ``a`` and ``b`` are computed numerically by :func:`numeric_interval` over ``[lo, hi]``.
    """
    checks.integer(n_grid, "n_grid (grid points, both end points included)", low=2, where="interval_endpoints")
    if callable(loss):
        if margin_range is None:
            raise ValueError("a callable loss derivative needs margin_range=(lo, hi) for the numeric search")
        return numeric_interval(lambda t: t * loss(t), *margin_range, n_grid=n_grid)
    if loss == "cross_entropy":
        if c is None:
            raise ValueError("interval_endpoints('cross_entropy') needs the number of classes c")
        if margin_range is not None:
            raise ValueError("margin_range is only supported for binary margin losses")
        return lambert_bound(c), np.inf
    if loss == "least_squares":
        if margin_range is not None:
            raise ValueError("margin_range is only supported for binary margin losses")
        return -np.inf, np.inf
    if loss not in MARGIN_LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES} or a callable l'(t)")
    if margin_range is not None:
        return numeric_interval(lambda t: t * margin_loss_derivative(t, loss), *margin_range, n_grid=n_grid)
    t = _ARGMIN[loss]
    return float(t * margin_loss_derivative(np.float64(t), loss)), np.inf


# ----------------------------------------------------------------------------- validation


def _array(a, name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    try:
        a = np.asarray(a, dtype=float)
    except (TypeError, ValueError) as e:
        raise checks.BadInput(f"{name} must be numeric, got {type(a).__name__}: {e}") from None
    if not np.all(np.isfinite(a)):
        raise checks.BadInput(f"{name} contains {int(np.sum(~np.isfinite(a)))} non-finite value(s) (nan or inf)")
    return a


def check_eps_d(eps_d) -> float:
    """``eps_d`` as a float; :class:`~poisonbook.checks.BadInput` unless it is a positive finite real number."""
    return checks.number(eps_d, "eps_d (poisoning ratio)", low=0.0, low_open=True)


def _check_labels(y: np.ndarray, loss: str) -> None:
    if loss in MARGIN_LOSSES and not np.all(np.isin(y, (-1.0, 1.0))):
        bad = np.unique(y[~np.isin(y, (-1.0, 1.0))])[:5]
        raise ValueError(f"labels must be -1 or +1 for the margin loss {loss!r}; found {bad.tolist()} "
                         "(map {0, 1} labels with y = 2 * y - 1)")


def _linear_inputs(w, X, y, loss: str):
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
    w, X, y = _array(w, "w"), _array(X, "X"), _array(y, "y")
    if X.ndim != 2 or len(X) == 0:
        raise ValueError(f"X must be a non-empty (n, d) matrix, got shape {X.shape}")
    want_w = 2 if loss == "cross_entropy" else 1
    if w.ndim != want_w or w.shape[0] != X.shape[1]:
        shape = "(d, c)" if want_w == 2 else "(d,)"
        raise ValueError(f"w must have shape {shape} with d = X.shape[1] = {X.shape[1]} for loss "
                         f"{loss!r}, got {w.shape}")
    if loss == "cross_entropy":
        y = _one_hot(y, w.shape[1], len(X))
    else:
        if y.shape != (len(X),):
            raise ValueError(f"y must have shape (n,) = ({len(X)},) to match X, got {y.shape}")
        _check_labels(y, loss)
    return w, X, y


def _one_hot(y: np.ndarray, c: int, n: int) -> np.ndarray:
    if y.shape == (n, c):
        if not (np.all(np.isin(y, (0.0, 1.0))) and np.all(y.sum(1) == 1)):
            raise ValueError("one-hot labels must have exactly one 1 per row and zeros elsewhere")
        return y
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) (integers) or ({n}, {c}) (one-hot), got {y.shape}")
    if not np.all((y == np.round(y)) & (y >= 0) & (y < c)):
        found = np.unique(y)[:5].tolist()
        raise ValueError(f"integer labels must lie in 0..{c - 1} for {c} classes; found {found}")
    return np.eye(c)[y.astype(int)]


def with_bias(X, w=None, b: float = 0.0):
    """Append the constant feature 1 to ``X`` (and ``b`` to ``w`` when given).

    The paper's linear models ``w^T x`` (Theorem 2) have no intercept; this is the usual
    change of variable that absorbs one. Note that the constant feature restricts the
    feature domain, so the sufficiency half of Theorem 2 (the map ``T``) no longer applies
    verbatim; the thresholds remain necessary conditions.
    """
    X = _array(X, "X")
    Xb = np.hstack([X, np.ones((len(X), 1))])
    return Xb if w is None else (Xb, np.append(_array(w, "w"), b))


# ----------------------------------------------------------------------------- gradients and inner products


def linear_loss_gradient(w, X, y, loss: str = "logistic") -> np.ndarray:
    """Average gradient ``g(mu; w)`` of a linear model on the data ``(X, y)``.

    Lu, Kamath & Yu (2023): eq. (10) ``g(x, y) = x * l'(w^T x, y)`` averaged as in eq. (3).
    Margin losses (labels in {-1, +1}): ``mean_i l'(y_i w^T x_i) y_i x_i``;
    ``"least_squares"``: ``mean_i (w^T x_i - y_i) x_i`` (eq. 9);
    ``"cross_entropy"`` (``w`` of shape (d, c)): ``G(mu) = mean_i x_i (softmax(h_i) - y_i)^T``
    (eq. 22). No bias (see :func:`with_bias`). Returns an array shaped like ``w``.
    """
    w, X, y = _linear_inputs(w, X, y, loss)
    if loss == "cross_entropy":
        return X.T @ (special.softmax(X @ w, axis=1) - y) / len(X)
    if loss == "least_squares":
        return X.T @ (X @ w - y) / len(X)
    m = y * (X @ w)
    return X.T @ (margin_loss_derivative(m, loss) * y) / len(X)


def cross_entropy_trace_terms(H, y) -> np.ndarray:
    """Per-sample ``<h, softmax(h) - y>`` for logits ``H`` (n, c): the integrand of eq. (28).

    Lu, Kamath & Yu (2023), Example 3: the trace of eq. (25) for the cross-entropy loss;
    eq. (A.8) proves ``<h, p - y> >= -W((c-1)/e)`` (see :func:`lambert_bound`). ``y`` holds
    integer labels or one-hot rows.
    """
    H = _array(H, "H")
    if H.ndim != 2 or H.shape[1] < 2 or len(H) == 0:
        raise checks.BadInput(f"logits H must have shape (n, c) with n >= 1 and c >= 2, got {H.shape}")
    Y = _one_hot(_array(y, "y"), H.shape[1], len(H))
    return np.sum(H * (special.softmax(H, axis=1) - Y), axis=1)


def clean_inner_product(w, X, y, loss: str = "logistic") -> float:
    """``<w, g(mu)>`` (or ``<W, G(mu)>`` for cross-entropy): the statistic every threshold uses.

    Lu, Kamath & Yu (2023), Theorem 2 / Corollary 2 and eq. (29). For margin losses it equals
    ``mean_i m_i l'(m_i)`` with ``m_i = y_i w^T x_i``; for cross-entropy it is the trace
    ``g(mu)`` of eq. (27)-(28), ``mean_i <h_i, p_i - y_i>``.
    """
    w, X, y = _linear_inputs(w, X, y, loss)
    if loss == "cross_entropy":
        return float(np.mean(cross_entropy_trace_terms(X @ w, y)))
    return float(np.sum(w * linear_loss_gradient(w, X, y, loss)))


# ----------------------------------------------------------------------------- thresholds


def _threshold_inputs(s, a, b, where: str) -> tuple[float, float, float]:
    """``s`` finite, the end points ``a <= 0 <= b`` of J (``-inf`` / ``inf`` allowed), never NaN."""
    s = checks.number(s, "s = <w, g(mu)>", where=where)
    a = checks.bound(a, "a (lower end of J)", where=where)
    b = checks.bound(b, "b (upper end of J)", where=where)
    if a > b:
        raise checks.BadInput(f"{where}: the interval J = [a, b] needs a <= b, got a={a:g}, b={b:g}")
    return s, a, b


def threshold_from_inner(s: float, a: float, b: float) -> float:
    """Threshold ``tau`` on ``eps_d`` from ``s = <w, g(mu)>`` and the end points ``(a, b)``.

    Lu, Kamath & Yu (2023), Corollary 1/2, eq. (16), rewritten for ``eps_d`` with
    ``lambda = eps_d / (1 + eps_d)``: condition (13) asks ``-s / eps_d`` to lie in J = [a, b],
    so ``tau = s / (-a)`` if ``s > 0`` (eq. 20 for the logistic loss), ``tau = -s / b`` if
    ``s < 0`` (0 when ``b = inf``), and 0 if ``s = 0`` (Remark 1). ``inf`` means no
    ``eps_d`` works. The model is poisonable iff ``eps_d >= tau`` when ``a``/``b`` are attained
    (``>`` otherwise). A NaN anywhere is refused (it would read as "poisonable at any eps_d").
    """
    s, a, b = _threshold_inputs(s, a, b, "threshold_from_inner")
    if s > 0:
        return s / -a if a < 0 else np.inf
    if s < 0:
        return -s / b if b > 0 else np.inf
    return 0.0


def threshold_from_margins(m, loss: str = "logistic", margin_range=None) -> float:
    """``tau`` of eq. (16)/(20) from the clean margins ``m_i = y_i f(x_i)`` of a binary model.

    Lu, Kamath & Yu (2023), Corollary 2: ``<w, g(mu)> = mean_i m_i l'(m_i)`` for any linear
    model, bias included (the inner product is then taken with ``(w, b)``). ``margin_range``
    restricts the attainable poison margins (see :func:`interval_endpoints`).
    """
    if loss not in MARGIN_LOSSES:
        raise ValueError(f"threshold_from_margins needs a binary margin loss {MARGIN_LOSSES}, got {loss!r}")
    m = _array(m, "margins").reshape(-1)
    if len(m) == 0:
        raise ValueError("margins must be non-empty")
    s = float(np.mean(m * margin_loss_derivative(m, loss)))
    return threshold_from_inner(s, *interval_endpoints(loss, margin_range=margin_range))


def threshold_from_logits(H, y, c_bound: int | None = None) -> float:
    """``tau(c)`` of eq. (29) from the clean logits ``H`` (n, c) of a cross-entropy model.

    Lu, Kamath & Yu (2023), Example 3: ``tau(c) = <W, G(mu)> / W((c-1)/e)`` with
    ``<W, G(mu)> = mean_i <h_i, p_i - y_i>`` (eq. 28), a necessary condition ``eps_d >= tau``;
    clipped at 0 (a negative trace puts no constraint). The logits may come from a network:
    by Theorem 4 (eq. A.17 with A = I, inner product with the last layer's weight and bias)
    the same necessary condition holds. ``c_bound`` overrides the ``c`` in the bound: the
    paper's Table 2 uses ``tau(2)`` (``c_bound=2``), "much more indicative" but not proven
    necessary for c > 2.
    """
    s = float(np.mean(cross_entropy_trace_terms(H, y)))
    c = _array(H, "H").shape[1] if c_bound is None else c_bound
    return max(s, 0.0) / -lambert_bound(c)


def poisoning_threshold(w, X, y, loss: str = "logistic", *, c_bound: int | None = None,
                        margin_range=None) -> float:
    """Threshold ``tau`` on ``eps_d`` for a target linear model ``w`` and clean data ``(X, y)``.

    Lu, Kamath & Yu (2023): binary margin losses, Corollary 2 with eq. (16) (eq. 20 for the
    logistic loss; iff when the domain is all of R^d); ``"least_squares"``, Corollary 1 with
    ``a = -inf, b = inf`` (tau = 0, Example 1); ``"cross_entropy"`` (``w`` of shape (d, c)),
    the trace condition eq. (29), necessary only. ``c_bound`` and ``margin_range``: see
    :func:`threshold_from_logits` and :func:`interval_endpoints`. No bias: use
    :func:`with_bias`, or the ``_from_margins`` / ``_from_logits`` variants.
    """
    w, X, y = _linear_inputs(w, X, y, loss)
    if loss == "cross_entropy":
        if margin_range is not None:
            raise ValueError("margin_range is only supported for binary margin losses")
        return threshold_from_logits(X @ w, y, c_bound)
    s = clean_inner_product(w, X, y, loss)
    return threshold_from_inner(s, *interval_endpoints(loss, margin_range=margin_range))


def eps_to_lambda(eps_d) -> float:
    """``lambda = eps_d / (1 + eps_d)``, the poisoned fraction of the mixed data (Section 3)."""
    eps = float(eps_d)
    if not eps >= 0:
        raise ValueError(f"eps_d must be >= 0, got {eps_d!r}")
    return 1.0 if eps == np.inf else eps / (1.0 + eps)


def lambda_to_eps(lam) -> float:
    """Inverse of :func:`eps_to_lambda`: ``eps_d = lambda / (1 - lambda)``."""
    lam = float(lam)
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must lie in [0, 1], got {lam!r}")
    return np.inf if lam == 1.0 else lam / (1.0 - lam)


def lambda_threshold(s: float, a: float, b: float) -> float:
    """Eq. (16) of Lu, Kamath & Yu (2023) verbatim: ``s/(s - a) v -s/(b - s)`` with ``s = <w, g(mu)>``.

    Valid for ``a <= s <= b`` (always true when ``s`` is computed on data in the domain);
    equals ``eps_to_lambda(threshold_from_inner(s, a, b))``.
    """
    s, a, b = _threshold_inputs(s, a, b, "lambda_threshold")
    if s > 0:  # only the first term of (16) is positive
        return 0.0 if a == -np.inf else (s / (s - a) if s > a else 1.0)
    if s < 0:  # only the second
        return 0.0 if b == np.inf else (-s / (b - s) if b > s else 1.0)
    return 0.0


def mixed_gradient_lower_bound(w, X, y, eps_d, loss: str = "logistic") -> float:
    """Certified lower bound on ``||g(chi)||`` over every poisoning distribution ``nu``.

    Consequence of Theorem 2 / Example 3 (Lu, Kamath & Yu 2023): ``<w, g(chi)> =
    (1 - lambda) s + lambda E_nu[t l'(t)]`` lies in ``[(1-lambda) s + lambda a,
    (1-lambda) s + lambda b]``, so by Cauchy-Schwarz ``||g(chi)|| >= dist(0, that interval) /
    ||w||``. Positive exactly when ``eps_d < tau`` (the gap GC cannot close, Figures 1, 3, 7).
    For cross-entropy the trace bound of eq. (A.8) with the true ``c`` is used.
    """
    eps = check_eps_d(eps_d)
    w, X, y = _linear_inputs(w, X, y, loss)
    s = clean_inner_product(w, X, y, loss)
    a, b = interval_endpoints(loss, c=w.shape[-1] if loss == "cross_entropy" else None)
    lam = eps_to_lambda(eps)
    lo, hi = (1 - lam) * s + lam * a, (1 - lam) * s + lam * b
    wn = float(np.linalg.norm(w))
    return 0.0 if wn == 0 else max(lo, -hi, 0.0) / wn


# ----------------------------------------------------------------------------- Theorem 2's construction


class Theorem2Poisons(NamedTuple):
    """An explicit poisoning distribution: ``k`` equal copies of one point (uniform weights)."""

    X: np.ndarray  # (k, d) poison features
    y: np.ndarray  # (k,) poison labels (+1)
    margin: float  # t* = w^T x_p, the margin with t* l'(t*) = -<w, g(mu)> / eps_d


_TINY = np.finfo(float).tiny  # brentq then stops on its relative tolerance, even for tiny margins


def _solve_margin(loss: str, j: float) -> float:
    """A margin ``t`` with ``t * l'(t) = j`` for ``j >= a`` (intermediate value theorem)."""
    def phi(t):
        return t * margin_loss_derivative(np.float64(t), loss) - j
    t_a = _ARGMIN[loss]
    if phi(t_a) >= 0:  # j <= a up to rounding: the minimiser itself
        return t_a
    if j <= 0:  # phi(0) = -j >= 0 and phi(t_a) < 0
        return 0.0 if j == 0 else optimize.brentq(phi, 0.0, t_a, xtol=_TINY)
    lo = -1.0
    while phi(lo) < 0:  # t l'(t) -> inf as t -> -inf for the four margin losses
        lo *= 2.0
    return optimize.brentq(phi, lo, 0.0, xtol=_TINY)


def theorem2_poisons(w, X, y, eps_d, loss: str = "logistic", n_copies: int = 1) -> Theorem2Poisons | None:
    """Explicit poisoning set of Theorem 2 that zeroes the mixed gradient, or ``None``.

    Lu, Kamath & Yu (2023), proof of Theorem 2 (eqs. A.1-A.4) with ``Pi = P`` (Corollary 2):
    a point mass ``nu = delta_x`` is chosen with margin ``t*`` solving
    ``t* l'(t*) = -<w, g(mu)> / eps_d`` (eq. A.1, using ``(1 - lambda)/lambda = 1/eps_d``) and
    moved by the map ``T(x) = (<w, x> / <w, g(mu)>) g(mu)`` onto the line of ``g(mu)``:
    ``x_p = (t* / <w, g(mu)>) g(mu)``, label +1. Then ``g(mu) + eps_d g(nu) = 0`` (eq. A.3-A.4).
    When ``<w, g(mu)> = 0`` Remark 1 is used instead: ``x_p = -g(mu) / (eps_d l'(0))`` (or
    ``x_p = 0`` if ``g(mu) = 0``). Returns ``None`` when the needed value
    ``-<w, g(mu)> / eps_d`` lies outside J = [a, inf), i.e. ``eps_d < tau`` (eq. 16/20): then
    no poisoning distribution exists (Corollary 2). Margin losses only, no bias.
    """
    if loss not in MARGIN_LOSSES:
        raise ValueError(f"theorem2_poisons supports the binary margin losses {MARGIN_LOSSES}, got {loss!r}")
    eps = check_eps_d(eps_d)
    checks.integer(n_copies, "n_copies", low=1, where="theorem2_poisons")
    w, X, y = _linear_inputs(w, X, y, loss)
    g = linear_loss_gradient(w, X, y, loss)
    s = float(w @ g)
    a, _ = interval_endpoints(loss)
    j = -s / eps
    if j < a - 1e-12 * abs(a):  # outside J = [a, inf); the slack absorbs rounding at eps_d = tau
        return None
    j = max(j, a)
    if s == 0.0:  # Remark 1: the line spanned by g(mu), where w^T x = 0
        t, x = 0.0, -g / (eps * float(margin_loss_derivative(np.float64(0.0), loss)))
    else:
        t = _solve_margin(loss, j)
        if loss == "hinge":  # keep w^T x_p on the -1 side of the kink despite rounding
            t = min(t, 1.0 - 1e-14)
        x = (t / s) * g
    return Theorem2Poisons(np.tile(x, (int(n_copies), 1)), np.ones(int(n_copies)), float(t))
