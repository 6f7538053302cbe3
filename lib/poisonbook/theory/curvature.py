"""Input-space curvature of a loss (GUARD, papers/002, Sec. 5-6): Hessian-vector products, lambda_1,
the quadratic model of eq. (1), bound (2) and Proposition 1's bound (3).

Conventions: ``loss_fn(x) -> (n,)`` maps a batch of inputs to *per-sample* losses, each depending on
its own input only (true for the ConvNet, whose instance norm works per image, and for any model in
eval mode without batch norm). Then the Hessian of ``loss_fn(x).sum()`` with respect to the batch is
block diagonal and one Hessian-vector product of the sum gives every sample's ``H_i v_i`` at once.
No dense Hessian is formed (:func:`dense_hessian` exists only for checks on small inputs).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["per_sample_loss", "input_gradient", "input_hvp", "fd_hvp", "top_eigen", "dense_hessian",
           "quadratic_model", "trust_region_max", "bound2_terms", "bound2", "proposition1_bound",
           "gradient_eigen_cosine"]

LossFn = Callable[[torch.Tensor], torch.Tensor]


def _flat_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.flatten(1) * b.flatten(1)).sum(1)


def _bcast(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return s.view(-1, *[1] * (like.ndim - 1))


def per_sample_loss(model: nn.Module, y: torch.Tensor) -> LossFn:
    """``x -> cross_entropy(model(x), y)`` per sample, the ``loss_fn`` of this module for a classifier."""
    return lambda x: F.cross_entropy(model(x), y, reduction="none")


def input_gradient(loss_fn: LossFn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample losses ``l(x_i)`` and input gradients ``grad_x l(x_i)`` (no graph kept)."""
    x = x.detach().requires_grad_(True)
    loss = loss_fn(x)
    (g,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), g


def input_hvp(loss_fn: LossFn, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Exact per-sample ``H_i v_i`` with ``H_i`` the input Hessian of ``l`` at ``x_i``: forward-over-reverse,
    ``torch.func.jvp`` of ``torch.func.grad`` (Pearlmutter 1994), one pass for the whole batch."""
    grad = torch.func.grad(lambda z: loss_fn(z).sum())
    return torch.func.jvp(grad, (x.detach(),), (v.detach(),))[1].detach()


def fd_hvp(loss_fn: LossFn, x: torch.Tensor, v: torch.Tensor, h: float) -> torch.Tensor:
    """The finite difference of eq. (6)-(7): ``(grad l(x + h v) - grad l(x)) / h``; ``H v + O(h)``."""
    _, g0 = input_gradient(loss_fn, x)
    _, g1 = input_gradient(loss_fn, x + h * v)
    return (g1 - g0) / h


def _power(hvp: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, shift: torch.Tensor, iters: int):
    for _ in range(iters):
        w = hvp(v) - _bcast(shift, v) * v
        v = w / _bcast(w.flatten(1).norm(dim=1).clamp_min(1e-30), w)
    return _flat_dot(v, hvp(v)).detach(), v.detach()


def top_eigen(loss_fn: LossFn, x: torch.Tensor, *, iters: int = 50,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest eigenvalue ``lambda_1`` (the paper's, algebraically largest) of every sample's input
    Hessian, and its unit eigenvector ``v_1``, by batched power iteration on :func:`input_hvp`.

    Power iteration converges to the eigenvalue of largest *magnitude* ``mu``. A second pass on
    ``H - s I`` with ``s = min(mu, 0)`` (all eigenvalues of the shifted matrix are >= 0 where
    ``mu < 0``) turns that into the largest eigenvalue; the Rayleigh quotient ``v^T H v`` is returned.
    """
    v = torch.randn(x.shape, generator=generator, device="cpu", dtype=x.dtype).to(x.device)
    v = v / _bcast(v.flatten(1).norm(dim=1), v)
    hvp = lambda u: input_hvp(loss_fn, x, u)  # noqa: E731
    zero = torch.zeros(len(x), device=x.device, dtype=x.dtype)
    mu, v = _power(hvp, v, zero, iters)
    shift = mu.clamp(max=0.0)
    if bool((shift < 0).any()):
        lam, v2 = _power(hvp, v, shift, iters)
        neg = _bcast(shift < 0, v)
        return torch.where(shift < 0, lam, mu), torch.where(neg, v2, v)
    return mu, v


def dense_hessian(loss_fn: LossFn, x: torch.Tensor) -> torch.Tensor:
    """The dense input Hessian of every sample, shape (n, d, d) (for checks on small inputs only)."""
    n, d = len(x), x[0].numel()
    eye = torch.eye(d, device=x.device, dtype=x.dtype)
    cols = [input_hvp(loss_fn, x, eye[j].view(1, *x.shape[1:]).expand_as(x)).flatten(1) for j in range(d)]
    return torch.stack(cols, dim=2).view(n, d, d)


def quadratic_model(loss_fn: LossFn, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The second-order Taylor model of eq. (1) at ``x``: ``v -> l(x) + grad l(x)^T v + v^T H v / 2`` per sample.

    Differentiable in ``v`` (so an attack can maximise it); ``H v`` through :func:`input_hvp`.
    """
    loss, g = input_gradient(loss_fn, x)
    x0 = x.detach()

    def model(v: torch.Tensor) -> torch.Tensor:
        grad = torch.func.grad(lambda z: loss_fn(z).sum())
        hv = torch.func.jvp(grad, (x0,), (v,))[1]
        return loss + _flat_dot(g, v) + 0.5 * _flat_dot(v, hv)

    return model


def trust_region_max(g: np.ndarray, hessian: np.ndarray, rho: float, tol: float = 1e-12) -> tuple[float, np.ndarray]:
    """``max_{||v||_2 <= rho} g^T v + v^T H v / 2`` for one sample, exactly (dense, small ``d``).

    The trust-region subproblem: the maximiser is ``v = (mu I - H)^{-1} g`` with ``mu >= max(lambda_1, 0)``
    and ``||v|| = rho`` (or ``mu = 0`` with ``||v|| < rho`` when ``H`` is negative definite); ``mu`` by
    bisection in the eigenbasis of ``H`` (the 'hard case', ``g`` orthogonal to ``v_1``, is ignored: it
    has probability 0 for real data).
    """
    lam, q = np.linalg.eigh(np.asarray(hessian, dtype=np.float64))
    gq = q.T @ np.asarray(g, dtype=np.float64).ravel()
    norm = lambda mu: np.linalg.norm(gq / (mu - lam))  # noqa: E731
    lo = max(lam[-1], 0.0)
    if lam[-1] < 0 and norm(0.0) <= rho:
        mu = 0.0
    else:
        lo = lo + 1e-15 * max(1.0, abs(lo))
        hi = lo + np.linalg.norm(gq) / rho + 1.0
        while norm(hi) > rho:
            hi = lo + 2 * (hi - lo)
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if norm(mid) > rho else (lo, mid)
            if hi - lo < tol * max(1.0, hi):
                break
        mu = hi
    vq = gq / (mu - lam)
    return float(gq @ vq + 0.5 * (vq * lam) @ vq), q @ vq


def bound2_terms(loss_fn: LossFn, x: torch.Tensor, rho: float, *, iters: int = 50,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The per-sample terms of bound (2): ``loss`` = l(x), ``grad`` = rho ||grad l(x)|| (Cauchy-Schwarz),
    ``curv`` = rho^2 max(lambda_1, 0) / 2 (Rayleigh quotient; the positive part because
    ``v^T H v <= lambda_1 ||v||^2 <= lambda_1 rho^2`` needs ``lambda_1 >= 0``), and ``lambda1``, ``bound``."""
    loss, g = input_gradient(loss_fn, x)
    lam, _ = top_eigen(loss_fn, x, iters=iters, generator=generator)
    terms = dict(loss=loss, grad=rho * g.flatten(1).norm(dim=1), curv=0.5 * rho**2 * lam.clamp_min(0.0),
                 lambda1=lam)
    terms["bound"] = terms["loss"] + terms["grad"] + terms["curv"]
    return terms


def bound2(terms: dict[str, torch.Tensor]) -> float:
    """Bound (2) for a class: the expectation (sample mean) of the per-sample bound."""
    return float(terms["bound"].mean())


def proposition1_bound(terms: dict[str, torch.Tensor], lipschitz: float, sigma: float) -> float:
    """Proposition 1, bound (3): bound (2) of the class plus ``L sigma``."""
    return bound2(terms) + float(lipschitz) * float(sigma)


def gradient_eigen_cosine(loss_fn: LossFn, x: torch.Tensor, *, iters: int = 50,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """``|cos(grad l(x), v_1)|`` per sample: how well the gradient stands in for ``v_1`` (Sec. 6.1)."""
    _, g = input_gradient(loss_fn, x)
    _, v = top_eigen(loss_fn, x, iters=iters, generator=generator)
    return _flat_dot(g, v).abs() / g.flatten(1).norm(dim=1).clamp_min(1e-30)
