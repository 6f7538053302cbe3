"""Adversarial training (Madry et al. 2018): train on PGD examples of every batch.

GUARD (papers/002, appendix E) compares its condensed sets with adversarial training of the
evaluation network on a plain condensed set; Part V uses the same loop as the adversarial-training
defence against unlearnable examples.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .. import attacks, checks
from ..train import model_device

__all__ = ["adversarial_fit"]


def adversarial_fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float, steps: int = 10,
                    norm: str = "linf", epochs: int, lr: float, batch_size: int = 256, momentum: float = 0.9,
                    weight_decay: float = 5e-4, milestones: tuple[float, ...] = (0.5,),
                    transform: Callable[[torch.Tensor], torch.Tensor] | None = None, seed: int = 0) -> dict:
    """PGD adversarial training of ``model`` in place: ``min_theta E max_{||delta|| <= eps} l(x + delta)``.

    Every batch is replaced by :func:`poisonbook.attacks.pgd` examples (``eps``, ``alpha``, ``steps``,
    ``norm``, random start; found with the model in eval mode) and the model takes one SGD step
    on them (``lr``, ``momentum`` 0.9, ``weight_decay`` 5e-4, lr x0.1 at each fraction of
    ``milestones``: the DC evaluation protocol). ``x`` in [0, 1]; ``transform`` (e.g. a
    standardisation) is applied after the attack, before the model, so the ball is in pixel units.
    Returns ``{"loss": [per-epoch mean adversarial loss], "seconds": s}``; the model ends in eval mode.
    """
    where = "adversarial_fit"
    x = checks.images(x, "x", where=where)
    y = checks.labels(y, "y", n=len(x), where=where)
    epochs = checks.integer(epochs, "epochs", low=0, where=where)
    lr = checks.number(lr, "lr", low=0.0, low_open=True, where=where)
    batch_size = checks.integer(batch_size, "batch_size", low=1, where=where)
    net = model if transform is None else nn.Sequential(_Lambda(transform), model)
    device = model_device(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    cuts = sorted(int(m * epochs) for m in milestones)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, cuts, 0.1)
    gen = torch.Generator().manual_seed(seed)
    history: dict = {"loss": [], "seconds": 0.0}
    t0 = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            net.eval()
            xa = attacks.pgd(net, xb, yb, eps=eps, alpha=alpha, steps=steps, norm=norm, generator=gen)
            net.train()
            loss = F.cross_entropy(net(xa), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        history["loss"].append(checks.finite_loss(torch.tensor(total / len(x)), epoch, where))
    history["seconds"] = time.perf_counter() - t0
    model.eval()
    return history


class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)
