"""ConvNet (DC/DM reference, width 128, depth 3) forward+backward throughput at batch 256."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from poisonbook import models
from timing import best_seconds


def run(device: torch.device, repeats: int = 5) -> dict:
    out = {}
    batch = 256
    for c, s in ((1, 28), (3, 32)):
        net = models.ConvNet(in_channels=c, im_size=s).to(device)
        x = torch.rand(batch, c, s, s, device=device)
        y = torch.randint(0, 10, (batch,), device=device)

        def step():
            net.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()

        sec = best_seconds(step, device, repeats)
        out[f"{s}x{s}x{c}"] = {"batch": batch, "seconds_per_step": round(sec, 4),
                               "images_per_second": round(batch / sec, 1)}
    return out
