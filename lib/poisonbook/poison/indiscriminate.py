"""Data poisoning attacks, one section per family.

Sections (each starts with a banner comment):

* Shared helpers: input checks, parameter gradients of any ``nn.Module``.
* Indiscriminate: Gradient Canceling (Lu, Kamath & Yu, "Exploring the Limits of
  (Model-Targeted) Indiscriminate Data Poisoning Attacks", ICML 2023): Algorithm 1
  (:func:`gradient_canceling`), the Frank-Wolfe measure optimisation of Appendix B for
  linear models (:func:`frank_wolfe_linear`, :func:`measure_to_poisons`), and victim
  retraining (:func:`retrain`).

Conventions: every ``loss_fn(outputs, y)`` returns the MEAN loss over the batch (like
``torch.nn.functional.cross_entropy``'s default); tensors stay on the caller's device;
the target model's parameters are never modified.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from .. import checks, theory

__all__ = [
    "margin_loss_fn",
    "parameter_gradient",
    "mixed_gradient_norm",
    "GCResult",
    "gradient_canceling",
    "FWResult",
    "frank_wolfe_linear",
    "measure_to_poisons",
    "RetrainResult",
    "retrain",
]


# =============================================================================
# Shared helpers
# =============================================================================


def _optional_int(v, name: str, where: str) -> int | None:
    """``None`` (all at once) or an integer >= 1 (a batch size)."""
    return None if v is None else checks.integer(v, name, low=1, where=where)


def _data(model, loss_fn, X, y, name: str, where: str):
    """Features and labels checked against the model (:func:`poisonbook.checks.model_labels`): class
    indices below its number of logits, or +-1 for a one-logit margin loss (:func:`margin_loss_fn`)."""
    X = checks.features(X, f"{name} features", where=where)
    if model is None:
        return X, checks.targets(y, f"{name} labels", n=len(X), where=where)
    return X, checks.model_labels(model, X, y, f"{name} labels", where=where,
                                  margin=getattr(loss_fn, "margin_loss", None) is not None)


def _in_box(X, bounds, name: str, where: str) -> None:
    """Data outside the projection box would be silently clamped into it, breaking the attack's own ball."""
    if bounds is None or not len(X):
        return
    lo, hi = bounds
    if bool((X < lo - 1e-6).any()) or bool((X > hi + 1e-6).any()):
        raise checks.BadInput(f"{where}: {name} lie in [{float(X.min()):g}, {float(X.max()):g}], outside the box "
                              f"the poisons are projected onto; divide [0, 255] data by 255, or pass box=None "
                              f"(or the data's own range)")


def margin_loss_fn(loss: str = "logistic") -> Callable:
    """``loss_fn(outputs, y)`` for a one-logit binary model with labels in {-1, +1}.

    Mean of ``l(y * f(x))`` for the margin losses of :mod:`poisonbook.theory` (``"logistic"``
    is eq. 17 of Lu, Kamath & Yu 2023).
    """
    if loss not in theory.MARGIN_LOSSES:
        raise ValueError(f"unknown margin loss {loss!r}; expected one of {theory.MARGIN_LOSSES}")

    def fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return theory.margin_loss(y.to(out.dtype) * out.reshape(len(y)), loss).mean()

    fn.margin_loss = loss  # labels must be +-1 (checked by the attacks)
    return fn


class _Grad:
    """Flattened parameter gradient of a fixed model; buffers are copied so BN stats never change."""

    def __init__(self, model: nn.Module, loss_fn: Callable):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise ValueError("loss_fn must be callable as loss_fn(outputs, y)")
        named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("the model has no parameters that require grad")
        self.model, self.loss_fn = model, loss_fn
        self.names, self.params = [k for k, _ in named], [p for _, p in named]
        self.buffers = {k: b.detach().clone() for k, b in model.named_buffers()}

    def __call__(self, X, y, create_graph: bool = False) -> torch.Tensor:
        state = {**dict(zip(self.names, self.params)), **self.buffers}
        loss = self.loss_fn(functional_call(self.model, state, (X,)), y)
        gs = torch.autograd.grad(loss, self.params, create_graph=create_graph, allow_unused=True)
        gs = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, gs)]
        flat = torch.cat([g.reshape(-1) for g in gs])
        return flat if create_graph else flat.detach()

    def outputs(self, X) -> torch.Tensor:
        """Model outputs at the fixed parameters and copied buffers, without a graph."""
        with torch.no_grad():
            return functional_call(self.model, {**dict(zip(self.names, self.params)), **self.buffers}, (X,))

    def flat_params(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def mean(self, X, y, batch_size: int | None = None) -> torch.Tensor:
        """Average gradient over all of ``(X, y)``, accumulated in mini-batches of ``batch_size``."""
        n = len(X)
        bs = n if batch_size is None else batch_size
        return sum(self(X[i:i + bs], y[i:i + bs]) * (len(X[i:i + bs]) / n) for i in range(0, n, bs))


def parameter_gradient(model: nn.Module, loss_fn: Callable, X, y,
                       batch_size: int | None = None) -> torch.Tensor:
    """``g(mu; w)``: the full parameter gradient of the average loss, flattened (eq. 3 of Lu et al. 2023).

    Accumulated in mini-batches of ``batch_size`` (all at once when ``None``); the model is
    called in its current mode, its parameters' ``.grad`` and its buffers are left untouched.
    """
    X, y = _data(model, loss_fn, X, y, "data", "parameter_gradient")
    _optional_int(batch_size, "batch_size", "parameter_gradient")
    return _Grad(model, loss_fn).mean(X, y, batch_size)


def _check_weight_decay(weight_decay) -> float:
    return checks.number(weight_decay, "weight_decay", low=0.0)


def mixed_gradient_norm(model: nn.Module, loss_fn: Callable, X_clean, y_clean, X_p, y_p,
                        batch_size: int | None = None, weight_decay: float = 0.0) -> float:
    """``||g(chi)||``: gradient norm of the average loss on clean + poisoned data (eq. 5, Lu et al. 2023).

    ``g(chi) = (n g(mu) + m g(nu)) / (n + m)`` with ``n`` clean and ``m`` poisoned points, i.e.
    ``(1 - lambda) g(mu) + lambda g(nu)`` with ``lambda = m / (n + m)``. With ``weight_decay``
    ``> 0`` the victim's objective has the L2 term ``weight_decay / 2 ||w||^2`` and its gradient
    ``weight_decay * w`` is added.
    """
    X_clean, y_clean = _data(model, loss_fn, X_clean, y_clean, "clean", "mixed_gradient_norm")
    X_p, y_p = _data(model, loss_fn, X_p, y_p, "poison", "mixed_gradient_norm")
    lam = _check_weight_decay(weight_decay)
    grad = _Grad(model, loss_fn)
    n, m = len(X_clean), len(X_p)
    g = (grad.mean(X_clean, y_clean, batch_size) * n + grad.mean(X_p, y_p, batch_size) * m) / (n + m)
    return float((g + lam * grad.flat_params()).norm())


# =============================================================================
# Indiscriminate: Gradient Canceling (Lu, Kamath & Yu, ICML 2023)
# =============================================================================


class GCResult(NamedTuple):
    """Output of :func:`gradient_canceling`."""

    X_p: torch.Tensor  # (m, ...) poisoned features
    y_p: torch.Tensor  # (m,) their labels: the starting clean points' (or the target's, labels="target")
    grad_norms: list  # ||g(chi)|| at the start of every epoch, then after the last one (epochs + 1 values)


def _gc_init(X_clean, y_clean, m: int, init, gen: torch.Generator):
    if init is None:  # a random sample; eps_d > 1 cycles through shuffled copies of the clean set
        n = len(X_clean)
        idx = torch.cat([torch.randperm(n, generator=gen) for _ in range(-(-m // n))])[:m]
        idx = idx.to(X_clean.device)
        return X_clean[idx], y_clean[idx]
    if not isinstance(init, (tuple, list)) or len(init) != 2:
        raise ValueError("init must be a pair (X_p0, y_p0) of tensors")
    X0, y0 = init
    X0, y0 = _data(None, None, X0, y0, "init", "init")
    if len(X0) != m or X0.shape[1:] != X_clean.shape[1:]:
        raise ValueError(f"init must hold round(eps_d * n) = {m} poisons shaped like the clean features "
                         f"{tuple(X_clean.shape[1:])}, got {tuple(X0.shape)}")
    return X0, y0


def _clip_bounds(clip, X_clean):
    if clip is None:
        return None
    if isinstance(clip, str):
        if clip != "data":
            raise ValueError(f"clip must be None, 'data' or a pair (lo, hi), got {clip!r}")
        return X_clean.amin(0), X_clean.amax(0)
    if not isinstance(clip, (tuple, list)) or len(clip) != 2:
        raise ValueError(f"clip must be None, 'data' or a pair (lo, hi), got {clip!r}")
    lo, hi = (torch.as_tensor(v, dtype=X_clean.dtype, device=X_clean.device) for v in clip)
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all() and (lo <= hi).all()):
        raise ValueError(f"clip bounds must be finite with lo <= hi, got {clip!r}")
    return lo, hi


def _gc_labels(grad: "_Grad", X_p, y_clean):
    """Poison labels for ``labels="target"``: the target model's prediction at each starting point."""
    out = grad.outputs(X_p)
    if out.ndim == 1 or out.shape[-1] == 1:  # one logit: its sign, in the clean labels' convention
        neg = -1 if bool((y_clean < 0).any()) else 0
        return torch.where(out.reshape(len(X_p)) > 0, 1, neg).to(y_clean.dtype)
    return out.argmax(-1).to(y_clean.dtype)


_GC_OPTIMIZERS, _GC_LABELS = ("sgd", "adam"), ("clean", "target")
_ADAM_BETAS, _ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults


def gradient_canceling(model: nn.Module, loss_fn: Callable, X_clean, y_clean, eps_d, *, epochs: int = 1000,
                       lr: float = 0.5, momentum: float = 0.9, optimizer: str = "sgd", labels: str = "clean",
                       weight_decay: float = 0.0, clip=None, batch_size: int | None = None,
                       seed: int = 0, init=None, callback: Callable | None = None) -> GCResult:
    """Gradient Canceling attack: Algorithm 1 of Lu, Kamath & Yu (ICML 2023).

    Finds ``m = round(eps_d * n)`` poisons ``z_j = (x_j, y_j)`` minimising eq. (33),
    ``1/2 ||g(mu) + eps g(nu)||^2``, where ``g`` is the FULL parameter gradient of ``model``
    (the target ``w``, held fixed), ``g(mu)`` the average gradient on the clean data
    (precomputed once, in mini-batches of ``batch_size``) and ``g(nu)`` the average gradient on
    the poisons. ``eps = m / n``, so ``g(mu) + eps g(nu)`` is exactly ``(n + m) / n`` times the
    gradient on the mixed dataset that a victim retrains on (equal to the paper's ``eps_d``
    whenever ``eps_d * n`` is an integer). The gradient w.r.t. all poison features is eq. (34),
    taken by autograd through the parameter gradient (``create_graph=True``) in one batched pass.

    Paper defaults (Section 5.1 and Appendix C.1): poisons start as a random ``eps_d n`` sample
    of the clean set with their labels, only features are optimised; SGD with momentum and a
    cosine learning-rate schedule (per epoch), initial ``lr=0.5``, ``epochs=1000``. The paper
    does not give the momentum; ``momentum=0.9`` is our choice. Scale note: by eq. (34) the
    step on a poison is ``lr / n`` times ``J^T r``, so small clean sets need a larger ``lr``
    (on the 200-point OR set of Appendix C.1, ``lr=0.5`` leaves ``||g(chi)|| ~ 2e-3`` at
    ``eps_d = 2 tau`` after 1000 epochs, ``lr=100`` reaches ``~1e-13``).

    Options beyond Algorithm 1 (defaults reproduce it):

    * ``optimizer="adam"``: Adam (torch's defaults, betas 0.9/0.999) on the features, one state per
      poison, same cosine schedule. Its steps do not scale with ``1/n``, so ``lr`` is in input units
      (0.01-0.1 for pixels in [0, 1]). Measured on LR targets (digits, MNIST-5k, eps_d = 1): after
      60-1000 epochs it ends 1.4-5x lower in ``||g(chi)||`` than the best of SGD's lr 50-200, and
      40x lower on the reachable target of the tests (``weight_decay`` 0.01, 1000 epochs).
    * ``labels="target"``: each poison takes the target's predicted label at its starting point
      (``argmax``, or the sign of a single logit) instead of the clean point's. The theory lets
      ``nu`` choose labels (Section 3), and with ``y = argmax h`` a poison's term
      ``<h, p - e_y>`` of the threshold (eq. 28) is negative, i.e. it works towards canceling.
    * ``weight_decay``: the victim's objective has ``weight_decay / 2 ||w||^2`` (torch's
      ``weight_decay``); GC then cancels ``g(mu) + eps g(nu) + (1 + eps) weight_decay w``, the
      gradient of that objective at ``w`` times ``(n + m) / n``. The objective is then strongly
      convex for convex models, and a victim trained to its minimum lies within
      ``||g(chi)|| / weight_decay`` of the target.

    Args:
        model: the target model (any ``nn.Module``), used in its current mode; its parameters,
            their ``.grad`` and its buffers are not modified.
        loss_fn: ``loss_fn(outputs, y)`` returning the mean loss over the batch.
        X_clean, y_clean: clean training set, ``(n, ...)`` features and ``(n,)`` labels.
        eps_d: poisoning ratio relative to the clean set (> 0; may exceed 1).
        clip: projection onto the data domain after every step (Algorithm 1, line 6): a pair
            ``(lo, hi)`` of floats or broadcastable tensors, or ``"data"`` for the per-feature
            range of the clean set (the paper's "GC-c", Section 5.4).
        batch_size: ``None`` processes all poisons in one step per epoch. Otherwise each epoch
            visits shuffled blocks of poisons; a block's step is exact for its own points and
            uses the other points' gradients as of the start of the epoch (a point moves, and its
            optimiser state is updated, only when its block is visited).
        init: optional ``(X_p0, y_p0)`` with ``round(eps_d * n)`` rows, replacing the random sample.
        callback: ``callback(epoch, X_p, grad_norm)`` after every epoch; returning ``True`` stops.

    Returns:
        ``GCResult(X_p, y_p, grad_norms)``: ``grad_norms[t]`` is ``||g(chi)||`` (the gradient
        norm on the mixed data, eq. 5 / Figures 1, 3, 7, plus ``weight_decay * w``) at the start
        of epoch ``t``; the last entry is after the final epoch.
    """
    where = "gradient_canceling"
    if not isinstance(model, nn.Module):
        raise checks.BadInput(f"{where}: model must be a torch.nn.Module, got {type(model).__name__}")
    X_clean, y_clean = _data(model, loss_fn, X_clean, y_clean, "clean", where)
    eps = theory.check_eps_d(eps_d)
    epochs = checks.integer(epochs, "epochs", where=where)
    _optional_int(batch_size, "batch_size", where)
    lr = checks.number(lr, "lr", low=0.0, low_open=True, where=where)
    momentum = checks.fraction(momentum, "momentum", where=where)
    checks.choice(optimizer, "optimizer", _GC_OPTIMIZERS, where=where)
    checks.choice(labels, "labels", _GC_LABELS, where=where)
    lam = _check_weight_decay(weight_decay)
    n = len(X_clean)
    m = round(eps * n)
    if m < 1:
        raise ValueError(f"eps_d * n = {eps * n:.3g} rounds to 0 poisons; increase eps_d (n = {n})")
    grad = _Grad(model, loss_fn)
    gen = torch.Generator().manual_seed(seed)
    X_p, y_p = _gc_init(X_clean, y_clean, m, init, gen)
    bounds = _clip_bounds(clip, X_clean)
    X_p, y_p = X_p.detach().clone(), y_p.detach().clone()
    if bounds is not None:
        X_p = torch.clamp(X_p, *bounds)
    if labels == "target":
        y_p = _gc_labels(grad, X_p, y_clean)

    g_mu = grad.mean(X_clean, y_clean, batch_size) + (1 + m / n) * lam * grad.flat_params()
    bs = m if batch_size is None else min(batch_size, m)
    # optimiser state, one row per poison: SGD momentum buffer (torch.optim.SGD's rule) or Adam's moments
    state = [torch.zeros_like(X_p) for _ in range(1 if optimizer == "sgd" else 2)]
    norms, scale = [], n / (n + m)

    def residual():  # g(mu) + eps g(nu) at the current poisons, no graph
        return g_mu + grad.mean(X_p, y_p, batch_size) * (m / n)

    def step(idx, gx, lr_t, t):  # one optimiser step on the rows idx; t = 1-based step count
        if optimizer == "sgd":
            state[0][idx] = momentum * state[0][idx] + gx
            return lr_t * state[0][idx]
        (b1, b2), (m1, m2) = _ADAM_BETAS, state
        m1[idx] = b1 * m1[idx] + (1 - b1) * gx
        m2[idx] = b2 * m2[idx] + (1 - b2) * gx * gx
        return lr_t * (m1[idx] / (1 - b1 ** t)) / ((m2[idx] / (1 - b2 ** t)).sqrt() + _ADAM_EPS)

    for epoch in range(epochs):
        lr_t = 0.5 * lr * (1 + math.cos(math.pi * epoch / epochs))  # cosine schedule, per epoch
        r = residual() if bs < m else None
        order = torch.randperm(m, generator=gen).to(X_p.device) if bs < m else None
        for k in range(0, m, bs):
            idx = slice(None) if order is None else order[k:k + bs]
            xb = X_p[idx].detach().requires_grad_(True)
            g_b = grad(xb, y_p[idx], create_graph=True) * (len(xb) / n)
            res = (g_mu if r is None else r - g_b.detach()) + g_b  # the other points held fixed
            if k == 0:
                norms.append(float((res.detach() if r is None else r).norm()) * scale)
                checks.diverged(norms[-1], "||g(chi)||", epoch, where, "lower lr, or check the model's "
                                "weights and the data for NaN")
            (gx,) = torch.autograd.grad(0.5 * res.pow(2).sum(), xb, allow_unused=True)  # eq. (34)
            with torch.no_grad():
                X_p[idx] = X_p[idx] - step(idx, torch.zeros_like(xb) if gx is None else gx, lr_t, epoch + 1)
                if bounds is not None:  # Algorithm 1, line 6
                    X_p[idx] = torch.clamp(X_p[idx], *bounds)
        if callback is not None and callback(epoch, X_p.clone(), norms[-1]):
            break
    norms.append(float(residual().norm()) * scale)
    checks.diverged(norms[-1], "||g(chi)||", len(norms) - 1, where, "lower lr")
    return GCResult(X_p, y_p, norms)


class FWResult(NamedTuple):
    """Output of :func:`frank_wolfe_linear`: the measure ``nu = sum_k weights_k delta_(X_k, y_k)``."""

    X: torch.Tensor  # (k, d) atoms
    y: torch.Tensor  # (k,) their labels in {-1, +1}
    weights: torch.Tensor  # (k,) probability masses, summing to 1
    grad_norms: list  # ||g(chi)|| = ||g(mu) + eps_d g(nu_t)|| / (1 + eps_d) after every iteration


def _linear_grads(w, bias, X, y, loss):
    """Per-sample gradients ``l'(m) y (x, 1)`` of a linear margin model (eq. 10), shape (k, d[+1])."""
    coef = theory.margin_loss_derivative(y * (X @ w + (0.0 if bias is None else bias)), loss) * y
    G = coef[:, None] * X
    return G if bias is None else torch.cat([G, coef[:, None]], 1)


def _ball_lmo(r, w, bias, loss, c, R, n_grid):
    """Solve eq. (B.5) over the ball ``||x - c|| <= R`` and both labels, for a linear model.

    With ``x = c + alpha u + v`` (``u = w/||w||``, ``v`` orthogonal to ``u``) the margin depends on
    ``alpha`` only, and the best ``v`` lies on the sphere, against the orthogonal part of ``r``;
    so (B.5) is a 1-D problem per label, solved on a grid zoomed in three times.
    """
    d = len(w)
    rw, rb = r[:d], (r[d] if bias is not None else 0.0)
    wn = w.norm()
    u = w / wn if wn > 0 else torch.nn.functional.one_hot(torch.tensor(0), d).to(w)
    ru = rw @ u
    rperp = rw - ru * u
    rp = rperp.norm()
    ys = torch.tensor([[1.0], [-1.0]], dtype=w.dtype, device=w.device)

    def phi(alpha):  # (2, G) objective for labels +1 / -1
        margin = ys * (w @ c + wn * alpha + (0.0 if bias is None else bias))
        coef = ys * theory.margin_loss_derivative(margin, loss)
        return coef * (rw @ c + alpha * ru + rb) - coef.abs() * rp * (R ** 2 - alpha ** 2).clamp(min=0).sqrt()

    hi = torch.full((2, 1), R, dtype=w.dtype, device=w.device)
    lo = -hi
    for _ in range(4):
        alpha = lo + (hi - lo) * torch.linspace(0, 1, n_grid, dtype=w.dtype, device=w.device)
        k = phi(alpha).argmin(1, keepdim=True)
        step = (hi - lo) / (n_grid - 1)
        best = alpha.gather(1, k)
        lo, hi = (best - step).clamp(min=-R), (best + step).clamp(max=R)
    vals = phi(best).reshape(2)
    j = int(vals.argmin())
    a, yy = best[j, 0], ys[j, 0]
    coef = yy * theory.margin_loss_derivative(yy * (w @ c + wn * a + (0.0 if bias is None else bias)), loss)
    v = -torch.sign(coef) * (R ** 2 - a ** 2).clamp(min=0).sqrt() * (rperp / rp if rp > 0 else 0 * rperp)
    return c + a * u + v, yy


def frank_wolfe_linear(w, X_clean, y_clean, eps_d, *, radius: float, center=None, b=None,
                       loss: str = "logistic", iters: int = 500, step: str = "default",
                       n_grid: int = 2001) -> FWResult:
    """Frank-Wolfe measure optimisation of Appendix B (Lu, Kamath & Yu 2023) for a linear model.

    Solves eq. (B.1), ``min_nu 1/2 ||g(mu) + eps_d g(nu)||^2`` over all distributions ``nu`` on
    ``Z = {||x - center|| <= radius} x {-1, +1}`` for the binary margin model
    ``f(x) = w^T x (+ b)`` (labels in {-1, +1}, per-sample gradient ``l'(y f(x)) y (x, 1)``,
    eq. 10; the gradient includes the bias coordinate when ``b`` is given). Each iteration
    solves the linear minimisation (B.5) exactly up to a zoomed 1-D grid (see ``_ball_lmo``),
    adds the new atom and rescales the masses as in (B.3): ``nu <- (1 - eta_t) nu + eta_t
    delta_z``, with the paper's example step ``eta_t = 2 / (t + 2)`` (``step="default"``), or
    the exact line search of the quadratic (``step="line"``, our option). After ``t``
    iterations ``nu`` has at most ``t`` atoms. A bounded domain is needed: over all of R^d the
    subproblem (B.5) is unbounded. Computation in float64 on ``w``'s device.

    Returns ``FWResult(X, y, weights, grad_norms)``; turn the measure into a poisoning set of
    ``round(eps_d * n)`` points with :func:`measure_to_poisons` (the resampling Appendix B
    mentions).
    """
    X_clean, y_clean = _data(None, None, X_clean, y_clean, "clean", "frank_wolfe_linear")
    eps = theory.check_eps_d(eps_d)
    if loss not in theory.MARGIN_LOSSES:
        raise ValueError(f"unknown margin loss {loss!r}; expected one of {theory.MARGIN_LOSSES}")
    theory._check_labels(y_clean.detach().cpu().double().numpy(), loss)
    checks.integer(iters, "iters", low=1, where="frank_wolfe_linear")
    checks.integer(n_grid, "n_grid", low=2, where="frank_wolfe_linear")
    if step not in ("default", "line"):
        raise ValueError(f"step must be 'default' (2/(t+2)) or 'line', got {step!r}")
    if not (isinstance(w, torch.Tensor) and w.ndim == 1 and X_clean.ndim == 2 and len(w) == X_clean.shape[1]):
        raise ValueError(f"w must be a 1-D tensor of length d = X_clean.shape[1] for (n, d) features, got "
                         f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
    checks.number(radius, "radius", low=0.0, low_open=True, where="frank_wolfe_linear")
    w = w.detach().double()
    X, y = X_clean.detach().to(w), y_clean.detach().to(w)
    c = torch.zeros_like(w) if center is None else torch.as_tensor(center).to(w).reshape(-1)
    if c.shape != w.shape or not torch.isfinite(c).all() or not torch.isfinite(w).all():
        raise ValueError("center must be a finite vector of length d, and w finite")
    bias = None if b is None else float(b)
    g_mu = _linear_grads(w, bias, X, y, loss).mean(0)
    g_nu = torch.zeros_like(g_mu)
    atoms, labels, weights, norms = [], [], torch.zeros(0, dtype=w.dtype, device=w.device), []
    for t in range(iters):
        r = g_mu + eps * g_nu
        x, yy = _ball_lmo(r, w, bias, loss, c, float(radius), n_grid)
        g_z = _linear_grads(w, bias, x[None], yy.reshape(1), loss)[0]
        eta = 2.0 / (t + 2)
        if step == "line" and t > 0:
            dvec = eps * (g_z - g_nu)
            eta = float((-(r @ dvec) / (dvec @ dvec)).clamp(0, 1)) if dvec @ dvec > 0 else 0.0
        g_nu = (1 - eta) * g_nu + eta * g_z
        weights = torch.cat([(1 - eta) * weights, weights.new_tensor([eta])])
        atoms.append(x)
        labels.append(yy)
        norms.append(float((g_mu + eps * g_nu).norm()) / (1 + eps))
    return FWResult(torch.stack(atoms), torch.stack(labels), weights, norms)


def measure_to_poisons(X, y, weights, m: int):
    """Turn a weighted measure (e.g. from :func:`frank_wolfe_linear`) into ``m`` poisoning points.

    Appendix B of Lu, Kamath & Yu (2023) notes that an attacker must upload points, not a
    measure, so ``nu`` has to be resampled; we round deterministically (largest remainder):
    atom ``k`` is repeated ``floor(m w_k)`` or ``ceil(m w_k)`` times, ``m`` points in all.
    """
    checks.integer(m, "m", low=1, where="measure_to_poisons")
    if not (isinstance(weights, torch.Tensor) and weights.ndim == 1 and len(weights) == len(X) == len(y)):
        raise ValueError("weights must be a 1-D tensor with one mass per atom of X and y")
    if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("weights must be finite, non-negative and not all zero")
    share = weights / weights.sum() * m
    counts = share.floor().long()
    extra = m - int(counts.sum())
    counts[torch.argsort(share - counts, descending=True)[:extra]] += 1
    return X.repeat_interleave(counts, 0), y.repeat_interleave(counts, 0)


class RetrainResult(NamedTuple):
    """Output of :func:`retrain`."""

    model: nn.Module  # the trained victim, in eval mode
    accuracy: float  # test accuracy in [0, 1]
    grad_norm: float  # ||g(chi)|| of the trained victim on clean + poisons


def _accuracy(model, X, y, predict, batch_size):
    with torch.no_grad():
        out = torch.cat([model(X[i:i + batch_size]) for i in range(0, len(X), batch_size)])
    if predict is not None:
        pred = predict(out)
        return float((pred.reshape(y.shape) == y).float().mean())
    if out.ndim == 1 or out.shape[-1] == 1:  # one logit: sign, labels in {-1, +1} or {0, 1}
        return float(((out.reshape(len(y)) > 0) == (y > 0)).float().mean())
    return float((out.argmax(-1) == y).float().mean())


def _lbfgs(model: nn.Module, loss_fn: Callable, X, y, iters: int, lr: float, weight_decay: float) -> None:
    """Full-batch L-BFGS on ``loss_fn + weight_decay / 2 ||w||^2`` until convergence or ``iters`` iterations."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.LBFGS(params, lr=lr, max_iter=max(iters, 1), tolerance_grad=1e-10, tolerance_change=1e-16,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(X), y) + 0.5 * weight_decay * sum(p.pow(2).sum() for p in params)
        loss.backward()
        return loss

    if iters > 0:
        opt.step(closure)


def retrain(model_fn: Callable[[], nn.Module], X_clean, y_clean, X_p, y_p, X_test, y_test, *,
            loss_fn: Callable = F.cross_entropy, epochs: int = 100, lr: float = 0.1,
            batch_size: int | None = None, seed: int = 0, predict: Callable | None = None,
            optimizer: str = "sgd", weight_decay: float = 0.0) -> RetrainResult:
    """Retrain a fresh victim on clean + poisoned data and evaluate it (Section 5, Lu et al. 2023).

    The paper reports accuracy "after retraining" without the recipe; ``epochs=100`` and
    ``lr=0.1`` plain SGD are the authors' code's choice (see the book's reference facts).
    ``model_fn()`` builds the victim (initialised under ``torch.manual_seed(seed)`` inside a
    forked RNG, so the global RNG is untouched) and is moved to ``X_clean``'s device; training
    is full batch when ``batch_size`` is ``None``, else shuffled mini-batches. Accuracy:
    ``predict(outputs)`` if given, else the sign of a single logit (labels in {-1, +1} or
    {0, 1}) or the argmax of several.

    ``optimizer="lbfgs"`` trains to convergence instead (full batch, ``epochs`` L-BFGS iterations
    with a strong-Wolfe line search, ``lr`` its initial step): the victim the theory speaks of, the
    minimiser of its training objective. ``weight_decay`` adds ``weight_decay / 2 ||w||^2`` to that
    objective (both optimisers) and its gradient to the returned ``grad_norm``.
    """
    where = "retrain"
    for X_, y_, name in ((X_clean, y_clean, "clean"), (X_p, y_p, "poison"), (X_test, y_test, "test")):
        _data(None, None, X_, y_, name, where)
    epochs = checks.integer(epochs, "epochs", where=where)
    _optional_int(batch_size, "batch_size", where)
    lr = checks.number(lr, "lr", low=0.0, low_open=True, where=where)
    if X_p.shape[1:] != X_clean.shape[1:]:
        raise ValueError(f"poisons are shaped {tuple(X_p.shape[1:])}, "
                         f"clean features {tuple(X_clean.shape[1:])}")
    if optimizer not in ("sgd", "lbfgs"):
        raise ValueError(f"optimizer must be 'sgd' or 'lbfgs', got {optimizer!r}")
    if optimizer == "lbfgs" and batch_size is not None:
        raise ValueError("optimizer='lbfgs' trains full batch; leave batch_size=None")
    lam = _check_weight_decay(weight_decay)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_fn().to(X_clean.device)
    for X_, y_, name in ((X_clean, y_clean, "clean"), (X_p, y_p, "poison"), (X_test, y_test, "test")):
        _data(model, loss_fn, X_, y_, name, where)
    X = torch.cat([X_clean, X_p.detach().to(X_clean)])
    y = torch.cat([y_clean, y_p.to(y_clean)])
    N = len(X)
    bs = N if batch_size is None else batch_size
    model.train()
    if optimizer == "lbfgs":
        _lbfgs(model, loss_fn, X, y, epochs, lr, lam)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=lam)
        gen = torch.Generator().manual_seed(seed)
        for epoch in range(epochs):
            order = torch.randperm(N, generator=gen).to(X.device) if bs < N else torch.arange(N, device=X.device)
            for k in range(0, N, bs):
                idx = order[k:k + bs]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(X[idx]), y[idx])
                checks.finite_loss(loss, epoch, where, "lower lr, or check the data and model_fn for NaN")
                loss.backward()
                opt.step()
    model.eval()
    acc = _accuracy(model, X_test, y_test, predict, bs)
    gnorm = mixed_gradient_norm(model, loss_fn, X_clean, y_clean, X_p.detach().to(X_clean), y_p.to(y_clean),
                                batch_size, weight_decay=lam)
    checks.diverged(gnorm, "the trained victim's gradient norm", epochs, where, "lower lr")
    return RetrainResult(model, acc, gnorm)


# =============================================================================
# Indiscriminate: parameter corruption (RandomPC, GradPC), the eps_w chooser, the
# gradient-matching baseline with the reversed cross-entropy
# (baselines and target-model generators of Lu, Kamath & Yu, ICML 2023)
# =============================================================================

import copy as _copy  # noqa: E402  (this section's own import, kept here to leave the header alone)

__all__ += ["PCResult", "random_pc", "grad_pc", "EpsChoice", "choose_eps_w", "reversed_cross_entropy",
            "GMResult", "gradient_matching"]


def _check_eps_w(eps_w) -> float:
    return checks.number(eps_w, "eps_w (relative parameter budget ||delta_w|| / ||w||)", low=0.0)


def _trainable(model: nn.Module) -> list:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameters that require grad")
    for p in params:
        if not torch.isfinite(p).all():
            raise ValueError("the model's parameters contain non-finite values")
    return params


def _flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


def _assign(params, vec: torch.Tensor) -> None:
    with torch.no_grad():
        k = 0
        for p in params:
            p.copy_(vec[k:k + p.numel()].view_as(p))
            k += p.numel()


class PCResult(NamedTuple):
    """Output of :func:`random_pc` and :func:`grad_pc`."""

    model: nn.Module  # a corrupted deep copy of the input model (w + delta); the input is untouched
    delta: torch.Tensor  # flattened delta_w over the trainable parameters (in ``model.parameters()`` order)
    radius: float  # the budget eps_w * ||w||
    rel_norm: float  # ||delta_w|| / ||w|| actually used (== eps_w for RandomPC, <= eps_w for GradPC)


def random_pc(model: nn.Module, eps_w, *, seed: int = 0) -> PCResult:
    """RandomPC (Sun et al. 2020/2021), as the baseline of Lu, Kamath & Yu (2023), Appendix C.3 / Table 5.

    ``delta_w`` is a standard Gaussian direction over all trainable parameters, rescaled to
    EXACTLY ``||delta_w|| = eps_w ||w||`` (the relative budget of Section 2; Sun et al.'s code
    adds ``eps * N(0, 1)`` per coordinate with an absolute ``eps``, we fix the norm so that
    RandomPC and GradPC spend the same budget). ``||w||`` is the l2 norm of all trainable
    parameters flattened (weights and biases). Drawn from ``torch.Generator().manual_seed(seed)``
    on the CPU, then moved to the parameters' device (same seed, same delta on any device).
    """
    eps = _check_eps_w(eps_w)
    net = _copy.deepcopy(model)
    params = _trainable(net)
    w = _flat(params)
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(w.numel(), generator=gen, dtype=torch.float64)
    radius = eps * float(w.double().norm())
    delta = (u / u.norm() * radius).to(w)
    _assign(params, w + delta)
    return PCResult(net, delta, radius, float(delta.double().norm()) / max(float(w.double().norm()), 1e-300))


def grad_pc(model: nn.Module, loss_fn: Callable, X, y, eps_w, *, epochs: int = 1, batch_size: int = 64,
            step: float = 0.1, seed: int = 0) -> PCResult:
    """GradPC: gradient-based parameter corruption (Sun et al. 2020/2021), Lu et al. (2023) Section 2, C.3.

    Ascends the TRAINING loss in parameter space, as in the ``GradAttacker`` of Sun et al.'s code
    (``github.com/TobiasLee/ParamCorruption``, which Lu et al. follow, footnote 6): for each
    shuffled mini-batch, ``delta <- delta + step * radius * g / ||g||`` with ``g`` the gradient
    of ``loss_fn`` at ``w + delta`` (the l2-normalised gradient step), then the projection
    ``delta <- delta * min(1, radius / ||delta||)`` onto ``||delta|| <= radius = eps_w ||w||``
    (the RELATIVE budget of Section 2; Sun et al.'s code uses an absolute ``eps``).

    Defaults: ``epochs=1`` (one epoch, as in the book's reference facts and Sun et al.'s
    ``--epochs 1``), ``batch_size=64`` (Sun et al.'s default). ``step=0.1`` (a step of a tenth of
    the budget) is OUR choice: Sun et al.'s ``attack_lr`` is absolute and our budget is
    relative; with at least ~10 batches per epoch the boundary is reached, so in practice
    ``||delta|| = radius`` up to float error. The model is used in its current mode (the
    paper's models have no batch norm or dropout); ``X``, ``y`` must be TRAINING data (never
    the test set, Appendix C.1): choose ``eps_w`` on validation data with :func:`choose_eps_w`.
    """
    eps = _check_eps_w(eps_w)
    where = "grad_pc"
    if not callable(loss_fn):
        raise checks.BadInput(f"{where}: loss_fn must be callable as loss_fn(outputs, y)")
    _trainable(model)
    X, y = _data(model, loss_fn, X, y, "training", where)
    epochs = checks.integer(epochs, "epochs", where=where)
    batch_size = checks.integer(batch_size, "batch_size", low=1, where=where)
    checks.number(step, "step (a fraction of the budget)", low=0.0, low_open=True, where=where)
    net = _copy.deepcopy(model)
    params = _trainable(net)
    w = _flat(params)
    radius = eps * float(w.norm())
    delta = torch.zeros_like(w)
    gen = torch.Generator().manual_seed(seed)
    n = len(X)
    for _ in range(epochs if radius > 0 else 0):
        order = torch.randperm(n, generator=gen).to(X.device)
        for k in range(0, n, batch_size):
            idx = order[k:k + batch_size]
            loss = loss_fn(net(X[idx]), y[idx])
            gs = torch.autograd.grad(loss, params, allow_unused=True)
            g = torch.cat([(torch.zeros_like(p) if gi is None else gi).reshape(-1)
                           for p, gi in zip(params, gs)])
            gn = g.norm()
            if not torch.isfinite(gn) or gn == 0:
                continue
            delta = delta + (step * radius) * g / gn
            dn = float(delta.norm())
            if dn > radius:
                delta = delta * (radius / dn)
            _assign(params, w + delta)
    wn = float(w.norm())
    return PCResult(net, delta, radius, float(delta.norm()) / wn if wn > 0 else 0.0)


class EpsChoice(NamedTuple):
    """Output of :func:`choose_eps_w`."""

    eps_w: float | None  # smallest eps_w whose validation drop reaches target_drop (None if none / no target)
    clean_val_accuracy: float
    table: list  # [{"eps_w", "val_accuracy", "val_drop"}] for every candidate, in the given order
    models: dict  # eps_w -> corrupted model


def choose_eps_w(attack: Callable[[float], nn.Module], reference: nn.Module, eps_list, X_val, y_val, *,
                 target_drop: float | None = None, predict: Callable | None = None,
                 batch_size: int = 1024) -> EpsChoice:
    """Pick the parameter-corruption budget ``eps_w`` on VALIDATION data only (Lu et al. 2023, Appendix C.1).

    "To choose proper target parameters (specifically, eps_w), we use validation sets ...
    The GradPC attack never sees the test set." ``attack(eps_w)`` returns the corrupted model
    (e.g. ``lambda e: grad_pc(model, loss, X_train, y_train, e).model``: the attack itself runs
    on training data); this function only ever evaluates on ``(X_val, y_val)`` and has no test
    argument. Every candidate's validation accuracy and drop relative to ``reference`` (the
    clean model) is returned. With ``target_drop`` (a fraction in (0, 1]), ``eps_w`` is the
    smallest candidate whose validation accuracy drop is at least ``target_drop``; the paper
    itself settles on ``eps_w = 0.5`` (``1`` for LR on MNIST) "to allow meaningful accuracy drop
    and transition threshold tau" (Section 5.1), a judgement that trades attack strength
    (larger drop) against a larger tau, so ``target_drop=None`` (return the table only) is the
    default. Accuracy: ``predict(outputs)`` if given, else the argmax (or sign of one logit).
    """
    X_val, y_val = _data(reference, None, X_val, y_val, "validation", "choose_eps_w")
    if not callable(attack):
        raise ValueError("attack must be callable as attack(eps_w) -> corrupted nn.Module")
    eps_list = list(eps_list)
    if not eps_list:
        raise ValueError("eps_list is empty; give at least one eps_w")
    eps_list = [_check_eps_w(e) for e in eps_list]
    if target_drop is not None:
        checks.fraction(target_drop, "target_drop", allow_zero=False, allow_one=True, where="choose_eps_w")
    clean = _accuracy(reference, X_val, y_val, predict, batch_size)
    table, nets, chosen = [], {}, None
    for e in eps_list:
        net = attack(e)
        if not isinstance(net, nn.Module):
            raise ValueError(f"attack({e}) must return an nn.Module, got {type(net).__name__}")
        acc = _accuracy(net, X_val, y_val, predict, batch_size)
        table.append({"eps_w": e, "val_accuracy": acc, "val_drop": clean - acc})
        nets[e] = net
    if target_drop is not None:
        ok = [r["eps_w"] for r in table if r["val_drop"] >= target_drop]
        chosen = min(ok) if ok else None
    return EpsChoice(chosen, clean, table, nets)


def reversed_cross_entropy(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Reversed cross-entropy, eq. (35) of Lu et al. (2023) (Fowl et al. 2021a), batch mean.

    ``-log(1 - softmax(h)_y)``, computed stably as ``logsumexp_{k != y} h_k - logsumexp_k h_k``
    negated. Small when the model does NOT predict the label ``y``.
    """
    if outputs.ndim != 2 or outputs.shape[1] < 2:
        raise ValueError(f"reversed cross-entropy needs (n, c >= 2) logits, got {tuple(outputs.shape)}")
    mask = F.one_hot(y.long(), outputs.shape[1]).bool()
    other = torch.logsumexp(outputs.masked_fill(mask, float("-inf")), 1)
    return (torch.logsumexp(outputs, 1) - other).mean()


class GMResult(NamedTuple):
    """Output of :func:`gradient_matching`."""

    X_p: torch.Tensor  # (m, ...) poisoned features
    y_p: torch.Tensor  # (m,) labels (those of the clean points they started from)
    losses: list  # cosine dissimilarity 1 - cos at every step, then after the last one (steps + 1 values)


def gradient_matching(model: nn.Module, X_clean, y_clean, eps_d, *, loss_fn: Callable = F.cross_entropy,
                      reversed_loss_fn: Callable = reversed_cross_entropy, steps: int = 250, lr: float = 0.01,
                      eps_x: float = 16 / 255, box=(0.0, 1.0), batch_size: int | None = None,
                      seed: int = 0) -> GMResult:
    """Gradient matching for indiscriminate poisoning, eq. (36) of Lu, Kamath & Yu (2023), Section 4.

    ``min_nu S(grad_w J(mu; w), grad_w l(nu; w))`` with ``J`` the reversed cross-entropy (eq. 35),
    ``S`` the cosine dissimilarity ``1 - cos`` (Geiping et al. 2021) and ``w`` the (clean)
    ``model``, held fixed; ``grad_w J(mu; w)`` is computed once on the whole clean set (in
    mini-batches of ``batch_size``). Poisons start as a random ``round(eps_d * n)`` sample of
    the clean set (as GC, Section 5.1), keep their labels, and stay within ``||x - x_0||_inf <=
    eps_x`` and the pixel box ``box`` ("within some proximity of mu"; ``eps_x=16/255`` and
    ``steps=250`` are Geiping et al.'s defaults, ``eps_x=None`` drops the ball). Optimiser: Adam
    with ``lr=0.01`` on the features (OUR choice; Geiping et al. use signed Adam), projecting
    after every step. Full-batch over the poisons.
    """
    where = "gradient_matching"
    X_clean, y_clean = _data(model, loss_fn, X_clean, y_clean, "clean", where)
    eps = theory.check_eps_d(eps_d)
    steps = checks.integer(steps, "steps", where=where)
    _optional_int(batch_size, "batch_size", where)
    lr = checks.number(lr, "lr", low=0.0, low_open=True, where=where)
    if eps_x is not None:
        checks.epsilon(eps_x, "eps_x (l_inf radius, or None)", allow_zero=False, where=where)
    n = len(X_clean)
    m = round(eps * n)
    if m < 1:
        raise ValueError(f"eps_d * n = {eps * n:.3g} rounds to 0 poisons; increase eps_d (n = {n})")
    gen = torch.Generator().manual_seed(seed)
    X0, y_p = _gc_init(X_clean, y_clean, m, None, gen)
    X0, y_p = X0.detach().clone(), y_p.detach().clone()
    target = _Grad(model, reversed_loss_fn).mean(X_clean, y_clean, batch_size)
    grad = _Grad(model, loss_fn)
    bounds = _clip_bounds(box, X_clean)
    _in_box(X_clean, bounds, "the clean features", where)
    X_p = X0.clone().requires_grad_(True)
    opt = torch.optim.Adam([X_p], lr=lr)
    losses = []

    def dissim():
        g = grad(X_p, y_p, create_graph=True)
        return 1 - F.cosine_similarity(g, target, dim=0)

    for step in range(steps):
        loss = dissim()
        losses.append(checks.finite_loss(loss, step, where))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            if eps_x is not None:
                X_p.copy_(torch.maximum(torch.minimum(X_p, X0 + eps_x), X0 - eps_x))
            if bounds is not None:
                X_p.copy_(torch.clamp(X_p, *bounds))
    losses.append(dissim().item())
    return GMResult(X_p.detach(), y_p, losses)


# =============================================================================
# Indiscriminate: TGDA, total gradient descent ascent (Lu, Kamath & Yu, TMLR 2022),
# the baseline of Lu, Kamath & Yu (ICML 2023), Tables 1, 2, 5 and 9
# =============================================================================

__all__ += ["TGDAResult", "tgda"]


class TGDAResult(NamedTuple):
    """Output of :func:`tgda`."""

    X_p: torch.Tensor  # (m, ...) poisoned features
    y_p: torch.Tensor  # (m,) labels (those of the clean points they started from)
    model: nn.Module  # the follower at the end (a deep copy of the input model, trained in the loop)
    val_losses: list  # the leader's objective, the follower's validation loss, before every iteration and at the end


def _flat_grad(model, names, params, buffers, loss_fn, X, y, create_graph=False, batch_size=None,
               scale_by=None):
    """Flattened gradient of ``sum_batches loss_fn(batch) * len(batch) / scale_by`` (the mean when scale_by=len(X))."""
    n = len(X)
    denom = n if scale_by is None else scale_by
    bs = n if batch_size is None else batch_size
    total = None
    for i in range(0, n, bs):
        out = functional_call(model, {**dict(zip(names, params)), **buffers}, (X[i:i + bs],))
        loss = loss_fn(out, y[i:i + bs]) * (len(X[i:i + bs]) / denom)
        gs = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
        flat = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, gs)])
        total = flat if total is None else total + flat
    return total


def _conjugate_gradient(matvec: Callable, b: torch.Tensor, iters: int, tol: float = 1e-10) -> torch.Tensor:
    """``iters`` steps of conjugate gradient for ``A x = b`` from ``x = 0`` (``A`` given by ``matvec``)."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rs = r.dot(r)
    for _ in range(iters):
        if float(rs) <= tol * tol:
            break
        Ap = matvec(p)
        pAp = p.dot(Ap)
        if not torch.isfinite(pAp) or float(pAp) <= 0:  # negative curvature: stop where we are
            break
        alpha = rs / pAp
        x = x + alpha * p
        r = r - alpha * Ap
        rs_new = r.dot(r)
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x


def tgda(model: nn.Module, X_clean, y_clean, X_val, y_val, eps_d, *, loss_fn: Callable = F.cross_entropy,
         epochs: int = 50, leader_lr: float = 0.01, follower_lr: float = 0.1, follower_steps: int = 1,
         cg_iters: int = 10, damping: float = 0.01, hessian_batch: int | None = None, box=(0.0, 1.0),
         batch_size: int | None = None, seed: int = 0, init=None, callback: Callable | None = None) -> TGDAResult:
    """TGDA: Total Gradient Descent Ascent poisoning (Lu, Kamath & Yu, TMLR 2022), a small faithful version.

    The attack is a Stackelberg game. The follower (victim) with parameters ``w`` minimises its
    training loss on clean + poisoned data, ``f(X_p, w) = mean over the n + m points of l``; the
    leader (attacker) maximises the follower's loss on clean VALIDATION data, ``L(w) = l(D_val; w)``.
    Because ``w`` responds to the poisons, the leader ascends the TOTAL derivative

    ``D_x L = d_x L - d_xw f (d_ww f)^{-1} d_w L = - d_x [ v^T d_w f(X_p, w) ]``,  ``v = (d_ww f)^{-1} d_w L``

    (``d_x L = 0`` here: the validation loss does not see the poisons). Per outer iteration:
    (1) ``v`` by ``cg_iters`` steps of conjugate gradient on ``(H + damping I) v = grad_w L``
    with Hessian-vector products of ``f`` (double backward); (2) one leader step on the poison
    features along ``D_x L`` (ascent), projected onto ``box``; (3) ``follower_steps`` plain
    gradient-descent steps of the follower on ``f`` (full batch over clean + poisons) with
    ``follower_lr``. The follower starts from ``model`` (the clean-trained victim, deep-copied;
    the input is not modified); the poisons start as a random ``round(eps_d n)`` sample of the
    clean set with their labels (as GC, Section 5.1 of Lu et al. 2023); labels stay fixed.

    Simplifications, all OURS (documented so a reader can judge them):

    * Lu et al. (2022) parameterise the poisons by an autoencoder (the leader is a generator
      network, pretrained, mapping clean points to poisons); here the leader's variables are the
      poison FEATURES themselves, as in GC.
    * The leader step is Adam on the features with ``leader_lr`` (scale-free; the total derivative
      carries a ``1 / (n + m)`` factor that plain gradient ascent would have to undo); the TGDA
      paper's leader/follower step sizes and step counts are not reproduced.
    * The inverse-Hessian-vector product uses CG with damping (TGDA also uses CG); CG stops early
      at negative curvature (a network's Hessian need not be positive definite); with
      ``hessian_batch`` the Hessian is that of a random subsample of the mixed data (all poisons
      are always included when they fit), redrawn every iteration, to make networks affordable.
    * One leader step per follower round (``follower_steps`` follower steps).
    * Evaluation is left to the caller: Lu et al. (2023) retrain a fresh victim on clean + poisons
      (:func:`retrain`); the follower returned here is only the game's follower.

    Args:
        model: the clean-trained victim (any ``nn.Module``; used in its current mode, buffers frozen).
        X_clean, y_clean: clean training data. X_val, y_val: the attacker's validation data (never test).
        eps_d: poisoning ratio, ``m = round(eps_d * n)``.
        box: projection of the features (default the pixel range [0, 1]; ``None`` for none).
        batch_size: mini-batch size for accumulating gradients over large sets (``None``: all at once).
        init: optional ``(X_p0, y_p0)`` replacing the random sample.
        callback: ``callback(iteration, X_p, val_loss)`` after every iteration; returning ``True`` stops.

    Returns:
        ``TGDAResult(X_p, y_p, model, val_losses)``; ``val_losses`` holds the leader objective
        ``L(w_t)`` before every iteration and once at the end (``epochs + 1`` values unless stopped).
    """
    where = "tgda"
    X_clean, y_clean = _data(model, loss_fn, X_clean, y_clean, "clean", where)
    X_val = checks.features(X_val, "validation features", where=where)
    if X_val.shape[1:] != X_clean.shape[1:]:
        raise checks.BadInput(f"{where}: validation features are shaped {tuple(X_val.shape[1:])}, "
                              f"clean features {tuple(X_clean.shape[1:])}")
    X_val, y_val = _data(model, loss_fn, X_val, y_val, "validation", where)
    eps = theory.check_eps_d(eps_d)
    for v, name in ((epochs, "epochs"), (cg_iters, "cg_iters"), (follower_steps, "follower_steps")):
        checks.integer(v, name, where=where)
    _optional_int(batch_size, "batch_size", where)
    _optional_int(hessian_batch, "hessian_batch", where)
    for v, name in ((leader_lr, "leader_lr"), (follower_lr, "follower_lr")):
        checks.number(v, name, low=0.0, low_open=True, where=where)
    checks.number(damping, "damping", low=0.0, where=where)
    n = len(X_clean)
    m = round(eps * n)
    if m < 1:
        raise ValueError(f"eps_d * n = {eps * n:.3g} rounds to 0 poisons; increase eps_d (n = {n})")
    net = _copy.deepcopy(model)
    named = [(k, p) for k, p in net.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no parameters that require grad")
    names, params = [k for k, _ in named], [p for _, p in named]
    buffers = {k: b.detach().clone() for k, b in net.named_buffers()}
    gen = torch.Generator().manual_seed(seed)
    X_p, y_p = _gc_init(X_clean, y_clean, m, init, gen)
    X_p, y_p = X_p.detach().clone(), y_p.detach().clone()
    bounds = _clip_bounds(box, X_clean)
    _in_box(X_clean, bounds, "the clean features", where)
    _in_box(X_p, bounds, "the initial poisons", where)
    X_p.requires_grad_(True)
    opt = torch.optim.Adam([X_p], lr=leader_lr)
    N = n + m

    def val_loss() -> float:
        with torch.no_grad():
            bs = len(X_val) if batch_size is None else batch_size
            tot = sum(float(loss_fn(functional_call(net, {**dict(zip(names, params)), **buffers},
                                                    (X_val[i:i + bs],)), y_val[i:i + bs])) * len(X_val[i:i + bs])
                      for i in range(0, len(X_val), bs))
        return tot / len(X_val)

    losses = []
    hint = "lower leader_lr/follower_lr, or check the model's weights for NaN"
    for it in range(epochs):
        losses.append(val_loss())
        checks.diverged(losses[-1], "the validation loss", it, where, hint)
        Xp_now = X_p.detach()
        # (1) v = (H + damping I)^{-1} grad_w L, H the Hessian of f on (a subsample of) the mixed data
        g_val = _flat_grad(net, names, params, buffers, loss_fn, X_val, y_val, batch_size=batch_size).detach()
        X_mix, y_mix = torch.cat([X_clean, Xp_now]), torch.cat([y_clean, y_p])
        if hessian_batch is not None and hessian_batch < N:
            k_clean = max(hessian_batch - m, 0)
            ci = torch.randperm(n, generator=gen)[:k_clean].to(X_clean.device)
            pi = torch.randperm(m, generator=gen)[:min(m, hessian_batch)].to(X_clean.device)
            X_h, y_h = torch.cat([X_clean[ci], Xp_now[pi]]), torch.cat([y_clean[ci], y_p[pi]])
        else:
            X_h, y_h = X_mix, y_mix
        g_h = _flat_grad(net, names, params, buffers, loss_fn, X_h, y_h, create_graph=True, batch_size=None)

        def hvp(vec):
            hv = torch.autograd.grad(g_h, params, grad_outputs=vec, retain_graph=True, allow_unused=True)
            flat = torch.cat([(torch.zeros_like(p) if h is None else h).reshape(-1) for p, h in zip(params, hv)])
            return flat.detach() + damping * vec

        v = _conjugate_gradient(hvp, g_val, cg_iters)
        del g_h
        # (2) leader: D_x L = - d_x [v^T grad_w f], f the mean over all n + m points (only poisons depend on x)
        g_p = _flat_grad(net, names, params, buffers, loss_fn, X_p, y_p, create_graph=True, batch_size=None,
                         scale_by=N)
        (gx,) = torch.autograd.grad(g_p @ v, X_p, allow_unused=True)
        total = -gx if gx is not None else torch.zeros_like(X_p)
        opt.zero_grad(set_to_none=True)
        X_p.grad = -total.detach()  # Adam minimises: descend -D_x L, i.e. ascend L
        opt.step()
        with torch.no_grad():
            if bounds is not None:
                X_p.copy_(torch.clamp(X_p, *bounds))
        # (3) follower: gradient descent on f at the new poisons
        X_mix = torch.cat([X_clean, X_p.detach()])
        for _ in range(follower_steps):
            g = _flat_grad(net, names, params, buffers, loss_fn, X_mix, y_mix, batch_size=batch_size)
            with torch.no_grad():
                for p, gi in zip(params, _split_like(g, params)):
                    p.sub_(follower_lr * gi)
        if callback is not None and callback(it, X_p.detach().clone(), losses[-1]):
            break
    losses.append(val_loss())
    checks.diverged(losses[-1], "the validation loss", len(losses) - 1, where, hint)
    net.eval()
    return TGDAResult(X_p.detach(), y_p, net, losses)


def _split_like(vec: torch.Tensor, params):
    k = 0
    for p in params:
        yield vec[k:k + p.numel()].view_as(p)
        k += p.numel()
