"""Gradient Canceling (Lu, Kamath & Yu 2023, Algorithm 1) epoch time and one GradPC pass.

MNIST-sized inputs: a clean set of n = 1,000 random 28x28x1 images in [0, 1] with random labels
(timing only; the values do not matter). One GC epoch = one step on all poisons
(``batch_size=None`` over the poisons is NOT used: the clean gradient g(mu) is precomputed in
mini-batches of 250 and the poisons are visited in blocks of 250), for LR, NN (MLP, the paper's
784-784-10) and CNN (SmallCNN) at eps_d = 0.03 and 1 (30 and 1,000 poisons). The g(mu)
precomputation is included in each timed call (it runs once per GC call). GC+ (Adam, labels="target")
at eps_d = 1 for comparison. GradPC: one epoch,
batch 64, over the same 1,000 images.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from poisonbook import models
from poisonbook.poison import grad_pc, gradient_canceling
from timing import best_seconds

N = 1000
BATCH = 250


def run(device: torch.device, repeats: int = 5) -> dict:
    g = torch.Generator().manual_seed(0)
    X = torch.rand(N, 1, 28, 28, generator=g).to(device)
    y = torch.randint(0, 10, (N,), generator=g).to(device)
    out = {"n_clean": N, "block": BATCH}
    for name, cls in (("LR", models.LogisticRegression), ("NN", models.MLP), ("CNN", models.SmallCNN)):
        torch.manual_seed(0)
        net = cls(1, 10, 28).to(device)
        for eps in (0.03, 1.0):
            def step():
                gradient_canceling(net, F.cross_entropy, X, y, eps, epochs=1, lr=0.5, batch_size=BATCH)

            sec = best_seconds(step, device, repeats)
            out[f"GC/{name}/eps_d={eps}"] = {"poisons": round(eps * N), "seconds_per_epoch": round(sec, 4)}

        def step_plus():  # GC+ of chapter 31: Adam steps, poisons labelled by the target
            gradient_canceling(net, F.cross_entropy, X, y, 1.0, epochs=1, lr=0.03, batch_size=BATCH,
                               optimizer="adam", labels="target")

        out[f"GC+/{name}/eps_d=1.0"] = {"poisons": N, "seconds_per_epoch": round(best_seconds(step_plus, device,
                                                                                              repeats), 4)}

        def pc():
            grad_pc(net, F.cross_entropy, X, y, 0.5, batch_size=64)

        out[f"GradPC/{name}"] = {"seconds_per_pass": round(best_seconds(pc, device, repeats), 4)}
    return out
