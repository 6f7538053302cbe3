"""Targeted poisoning of condensation (RDM-DC, papers/000, Algorithms 1-2; chapter 21).

* One Witches' Brew step (eq. (4) and its gradient in the poisons) with a 16-member ConvNet ensemble (depth 3;
  width 128 on a GPU, 16 on the CPU, where the batched double backward of 16 x 550 images at width 128 would need
  tens of GB) at P = 1% of Fashion-MNIST (550 poisons, 28x28x1): the ``torch.func`` batched ensemble (stacked
  parameters, ``vmap``) against a Python loop over the members; ``speedup`` = loop / batched.
* One DM-poisoning step (eq. (5) under one fresh ConvNet and one DSA draw, and its gradient) at the same P.
* One full ``attack_success`` cell of the ``cpu`` protocol: one target, one condensation run, DM (plain mean)
  on the clean 2,000-image subset (condensation + evaluation; the poisons' crafting is timed apart above).
"""

from __future__ import annotations

import torch

from poisonbook import augment as aug
from poisonbook import models, profiles
from poisonbook.experiments import targeted as E
from poisonbook.poison import targeted as T
from timing import best_seconds

P, MEMBERS = 550, 16
STRATEGY = aug.strategy_for("fashion-mnist")


def _step(ens, tg, x, stats, y_adv, gen):
    delta = torch.zeros_like(x, requires_grad=True)
    xp = aug.apply(T._standardise(x + delta, stats), aug.draw(STRATEGY, 1, generator=gen, device=x.device), 0)
    loss = T.gradient_cosine_loss(ens, tg, xp, y_adv)
    (g,) = torch.autograd.grad(loss, delta)
    return g


def run(device: torch.device, repeats: int = 5) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(P, 1, 28, 28, generator=g).to(device)
    x_t = torch.rand(1, 1, 28, 28, generator=g).to(device)
    stats = (torch.tensor([0.286]), torch.tensor([0.353]))
    width = 128 if device.type == "cuda" else 16
    nets = []
    for i in range(MEMBERS):
        torch.manual_seed(i)
        nets.append(models.ConvNet(1, 10, 28, width=width, depth=3).to(device).eval().requires_grad_(False))
    out: dict = {"poisons": P, "members": MEMBERS, "width": width}
    for name, batched in (("batched", True), ("loop", False)):
        ens = T.Ensemble(nets, batched=batched)
        tg = T._flat(ens.param_grads(T._standardise(x_t, stats), torch.tensor([3], device=device))).detach()
        reps = repeats if batched else max(1, repeats // 2)
        out[f"wb_step_{name}_s"] = round(best_seconds(lambda: _step(ens, tg, x, stats, 3, g), device, reps), 3)
    out["wb_speedup"] = round(out["wb_step_loop_s"] / out["wb_step_batched_s"], 2)

    def dm_step():
        delta = torch.zeros_like(x, requires_grad=True)
        net = models.ConvNet(1, 10, 28, width=width, depth=3).to(device).requires_grad_(False)
        d = aug.draw(STRATEGY, 1, generator=g, device=device)
        loss = T.dm_poison_loss(net, aug.apply(T._standardise(x_t, stats), d, 0),
                                aug.apply(T._standardise(x + delta, stats), d, 0))
        return torch.autograd.grad(loss, delta)

    out["dm_step_s"] = round(best_seconds(dm_step, device, repeats), 3)
    cfg = profiles.get("targeted-protocol", "cpu", targets=[0], runs=1)
    train, test = E.load_data(cfg)
    out["cpu_cell_s"] = round(best_seconds(lambda: E.attack_success(cfg, "clean", None, ("mean",), train=train,
                                                                    test=test), device, 1, 0), 2)
    return out
