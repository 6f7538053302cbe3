"""Evasion attacks on a trained model: PGD in l_inf and l_2 (Madry et al. 2018), batched.

Inputs live in [0, 1]; any normalisation sits inside the model. Stronger attacks of GUARD's
appendix F (PGD-100, Square, AutoAttack) come from the Adversarial Robustness Toolbox, not
from here.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from . import checks

__all__ = ["pgd", "robust_accuracy"]

NORMS = ("linf", "l2")


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    flat = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (delta.ndim - 1))
    return delta * (eps / flat).clamp(max=1.0)


def _step(g: torch.Tensor, alpha: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return alpha * g.sign()
    return alpha * g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (g.ndim - 1))


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float, steps: int = 10,
        norm: str = "linf", random_start: bool = True, targeted: bool = False,
        generator: torch.Generator | None = None, loss_fn=F.cross_entropy) -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018, eq. 2.1); returns x + delta, inside the ball and [0, 1].

    Each of ``steps`` iterations takes a step ``alpha`` along sign(grad) (l_inf) or grad/||grad||_2
    (l_2) that *ascends* the loss of the true label ``y`` (``targeted=True``: descends the loss
    of the target label ``y``), then projects onto ||delta|| <= eps and onto x + delta in [0, 1].
    ``random_start`` draws delta uniformly in the l_inf ball, or uniformly in direction with
    radius eps*U in the l_2 ball. The model is used as given (call ``model.eval()`` first for
    evaluation); its parameters get no gradient.
    """
    where = "pgd"
    x = checks.images(x, "x", where=where)
    checks.choice(norm, "norm", NORMS, where=where)
    eps = checks.number(eps, "eps", low=0.0, where=where)
    alpha = checks.number(alpha, "alpha", low=0.0, where=where)
    steps = checks.integer(steps, "steps", low=0, where=where)
    y = checks.labels(y, "y", n=len(x), where=where)
    if eps == 0 or steps == 0 and not random_start:
        return x.clone()
    delta = torch.zeros_like(x)
    if random_start:
        u = torch.rand(x.shape, generator=generator, device="cpu").to(x.device)
        if norm == "linf":
            delta = (2 * u - 1) * eps
        else:
            d = torch.randn(x.shape, generator=generator, device="cpu").to(x.device)
            r = torch.rand(len(x), generator=generator, device="cpu").to(x.device)
            shape = (-1, *[1] * (x.ndim - 1))
            delta = d / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape) * (eps * r).view(shape)
        delta = (x + delta).clamp(0, 1) - x
    sign = -1.0 if targeted else 1.0
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = loss_fn(model(x + delta), y)
            (g,) = torch.autograd.grad(sign * loss, delta)
            with torch.no_grad():
                delta = _project(delta + _step(g, alpha, norm), eps, norm)
                delta = (x + delta).clamp(0, 1) - x
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
    return (x + delta).detach()


@torch.no_grad()
def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1) == y


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 500,
                    **attack) -> float:
    """Fraction of ``(x, y)`` still classified correctly after :func:`pgd` with ``**attack`` (batched)."""
    x = checks.images(x, "x", where="robust_accuracy")
    y = checks.labels(y, "y", n=len(x), where="robust_accuracy")
    checks.integer(batch_size, "batch_size", low=1, where="robust_accuracy")
    right = 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        right += int(_correct(model, pgd(model, xb, yb, **attack), yb).sum())
    return right / len(x)
