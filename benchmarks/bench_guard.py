"""GUARD (papers/002) hot loops: the cost of the double backward, PGD-10, and lambda_1 by power iteration.

* ``dc_iteration`` / ``guard_iteration``: one outer iteration of ``condense.dc`` and ``condense.guard`` at 1 image
  per class (loops (1, 1): one image update of all 10 classes), ConvNet width 128, depth 3, 256 real 28x28 images
  per class; ``guard_over_dc`` their ratio (the price of differentiating through the input gradient).
* ``pgd10_1000``: ``attacks.pgd`` l_inf 10 steps on 1,000 28x28 images, ConvNet width 128 (eval mode).
* ``lambda1_256``: ``theory.top_eigen`` (20 power iterations, batched Hessian-vector products) on 256 images.
"""

from __future__ import annotations

import torch

from poisonbook import attacks, condense, models
from poisonbook.theory import curvature
from timing import best_seconds

CLASSES, REAL_PER_CLASS, WIDTH = 10, 256, 128


def run(device: torch.device, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(CLASSES * REAL_PER_CLASS, 1, 28, 28, generator=g).to(device)
    y = torch.arange(CLASSES).repeat_interleave(REAL_PER_CLASS).to(device)
    kw = dict(iterations=1, width=WIDTH, batch_real=REAL_PER_CLASS, loops=(1, 1))
    quick = device.type == "cpu"
    reps = 1 if quick else repeats
    out = {"dc_iteration": best_seconds(lambda: condense.dc(x, y, 1, **kw), device, reps, warmup=0 if quick else 1),
           "guard_iteration": best_seconds(lambda: condense.guard(x, y, 1, **kw), device, reps,
                                           warmup=0 if quick else 1)}
    out["guard_over_dc"] = out["guard_iteration"] / out["dc_iteration"]
    torch.manual_seed(0)
    net = models.ConvNet(1, CLASSES, 28, width=WIDTH).to(device).eval()
    xa, ya = x[:1000], y[:1000]
    out["pgd10_1000"] = best_seconds(lambda: attacks.pgd(net, xa, ya, eps=0.1, alpha=0.03, steps=10), device, reps)
    f = curvature.per_sample_loss(net, y[:256])
    out["lambda1_256"] = best_seconds(lambda: curvature.top_eigen(f, x[:256], iters=20), device, reps)
    out["quick"] = quick
    return out
