"""Evasion attacks on a trained model: PGD in l_inf and l_2 (Madry et al. 2018), batched.

Inputs live in [0, 1]; any normalisation sits inside the model. :data:`ATTACK_SETTINGS` holds
GUARD's (papers/002, Sec. 7.2) three settings per dataset. The stronger attacks of GUARD's appendix F
(PGD-100, Square, AutoAttack) come from the Adversarial Robustness Toolbox (:func:`art_attack`), not
from here; ART's PGD is also the reference :func:`pgd` is tested against.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from . import checks

__all__ = ["pgd", "robust_accuracy", "ATTACK_SETTINGS", "attack_settings", "art_classifier", "art_attack",
           "art_robust_accuracy"]

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


# --------------------------------------------------------------------------- the paper's attack settings

#: GUARD (Sec. 7.2) attack settings, 10 steps each, inputs in [0, 1]: ``l_inf*`` (the strong one of
#: Table 1), ``l_inf`` (weaker) and ``l_2``. Keys: the paper's two datasets.
ATTACK_SETTINGS: dict[str, dict[str, dict]] = {
    "mnist": {"linf*": dict(norm="linf", eps=0.3, alpha=0.1, steps=10),
              "linf": dict(norm="linf", eps=0.1, alpha=0.03, steps=10),
              "l2": dict(norm="l2", eps=1.0, alpha=0.3, steps=10)},
    "cifar10": {"linf*": dict(norm="linf", eps=8 / 255, alpha=2 / 255, steps=10),
                "linf": dict(norm="linf", eps=2 / 255, alpha=0.5 / 255, steps=10),
                "l2": dict(norm="l2", eps=0.2, alpha=0.05, steps=10)},
}
#: The book's datasets mapped to the paper's setting they use: 28x28 grey images take MNIST's
#: (the paper has no Fashion-MNIST setting), colour 32x32 images CIFAR-10's.
SETTING_OF = {"mnist": "mnist", "mnist5k": "mnist", "digits": "mnist", "fashion-mnist": "mnist",
              "cifar10": "cifar10", "cifar100": "cifar10", "fashion-mnist-rgb": "cifar10"}


def attack_settings(dataset: str) -> dict[str, dict]:
    """The three attack settings (``"linf*"``, ``"linf"``, ``"l2"``) GUARD uses for ``dataset`` (Sec. 7.2)."""
    name = checks.choice(dataset, "dataset", tuple(SETTING_OF), where="attack_settings")
    return {k: dict(v) for k, v in ATTACK_SETTINGS[SETTING_OF[name]].items()}


# --------------------------------------------------------------------------- the Adversarial Robustness Toolbox

ART_ATTACKS = ("pgd", "square", "autoattack")


def art_classifier(model: nn.Module, x: torch.Tensor, num_classes: int):
    """``model`` (inputs in [0, 1], normalisation inside) as ART's ``PyTorchClassifier`` with clip values (0, 1)."""
    from art.estimators.classification import PyTorchClassifier

    device = next(model.parameters()).device
    return PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                             nb_classes=num_classes, clip_values=(0.0, 1.0),
                             device_type="gpu" if device.type == "cuda" else "cpu")


def art_attack(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
               norm: str = "linf", alpha: float | None = None, steps: int = 100, num_classes: int = 10,
               batch_size: int = 256, seed: int = 0) -> torch.Tensor:
    """Adversarial examples from the Adversarial Robustness Toolbox (GUARD appendix F's stronger attacks).

    * ``"pgd"``: ``ProjectedGradientDescent`` (Madry et al.), ``steps`` iterations of step ``alpha``
      with one random start (PGD-100 of appendix F with ``steps=100``; the reference for :func:`pgd`).
    * ``"square"``: ``SquareAttack`` (Andriushchenko et al. 2020), a score-based black-box attack,
      ``steps`` queries' worth of iterations.
    * ``"autoattack"``: ART's ``AutoAttack`` (Croce & Hein 2020) with its default attack list.

    The model is put in eval mode; inputs in [0, 1]; returns a tensor on ``x``'s device.
    """
    where = "art_attack"
    checks.choice(name, "attack", ART_ATTACKS, where=where)
    x = checks.images(x, "x", where=where)
    y = checks.labels(y, "y", num_classes=num_classes, n=len(x), where=where)
    checks.choice(norm, "norm", NORMS, where=where)
    eps = checks.number(eps, "eps", low=0.0, low_open=True, where=where)
    steps = checks.integer(steps, "steps", low=1, where=where)
    import numpy as np
    from art.attacks import evasion

    np.random.seed(seed)  # ART draws its random starts from numpy's global generator
    torch.manual_seed(seed)
    model.eval()
    clf = art_classifier(model, x, num_classes)
    art_norm = np.inf if norm == "linf" else 2
    if name == "pgd":
        alpha = checks.number(alpha, "alpha", low=0.0, low_open=True, where=where)
        attack = evasion.ProjectedGradientDescent(clf, norm=art_norm, eps=eps, eps_step=alpha, max_iter=steps,
                                                  num_random_init=1, batch_size=batch_size, verbose=False)
    elif name == "square":
        attack = evasion.SquareAttack(clf, norm=art_norm, eps=eps, max_iter=steps, batch_size=batch_size,
                                      verbose=False)
    else:
        attack = evasion.AutoAttack(clf, norm=art_norm, eps=eps, eps_step=alpha or eps / 4,
                                    batch_size=batch_size)
    x_np = x.detach().cpu().numpy()
    adv = attack.generate(x=x_np, y=np.eye(num_classes, dtype=np.float32)[y.cpu().numpy()])
    return torch.from_numpy(np.asarray(adv, dtype=np.float32)).to(x.device)


def art_robust_accuracy(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs) -> float:
    """Fraction of ``(x, y)`` still classified correctly after :func:`art_attack` ``name``."""
    adv = art_attack(name, model, x, y, **kwargs)
    return float(_correct(model, adv, y.to(adv.device)).float().mean())
