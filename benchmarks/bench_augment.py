"""DSA (poisonbook.augment.apply) on a DM-sized batch: 10 classes x 256 real 32x32x3 images.

Milliseconds per call, forward and forward+backward, for every op and for a per-class op draw.
"""

from __future__ import annotations

import torch

from poisonbook import augment as A
from timing import best_seconds


def run(device: torch.device, repeats: int = 5, n: int = 2560, size: int = 32, channels: int = 3,
        groups: int = 10) -> dict:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, channels, size, size, generator=gen).to(device)
    gi = (torch.arange(n) % groups).to(device)
    xg = x.clone().requires_grad_(True)
    cases = {op: A.draw(op, groups, gen, device=device) for op in A.OPS}
    cases["mixed_per_group_op"] = A.draw(A.STRATEGY, groups, gen, device=device, per_group_op=True)
    timings = {"shape": [n, channels, size, size], "groups": groups}
    for name, d in cases.items():
        def fwd_bwd(d=d):
            xg.grad = None
            A.apply(xg, d, gi).sum().backward()

        fwd = best_seconds(lambda d=d: A.apply(x, d, gi), device, repeats)
        timings[name] = {"forward_ms": round(1000 * fwd, 3),
                         "forward_backward_ms": round(1000 * best_seconds(fwd_bwd, device, repeats), 3)}
    return timings
