"""RDM-DC's real-mean estimators (papers/000, Sec. 4.5, Algorithms 4-5) at DM's sizes.

* Each estimator on features (10, 256, 2048): 10 classes, 256 real images per class, the ConvNet's
  d_r = 2048, batched over classes; the calibrated mean with 50 power iterations (X^T (X v) products).
* One DM iteration (``condense.dm(..., iterations=1)``, ConvNet width 128, 10 ipc, 28x28x1, DSA) with each
  estimator; ``ratio`` is its time over the plain mean's, measured in the same run.
"""

from __future__ import annotations

import torch

from poisonbook import condense, estimators
from timing import best_seconds

EPS = 0.1  # class fraction of RDM-DC Table 2's attack (1% of the data, all in one class)


def run(device: torch.device, repeats: int = 5) -> dict:
    g = torch.Generator().manual_seed(0)
    f = torch.randn(10, 256, 2048, generator=g).relu().to(device)
    ests = {name: make(EPS) for name, make in estimators.ESTIMATORS.items()}
    out: dict = {"features": [10, 256, 2048], "eps": EPS, "estimator_ms": {}, "dm_iteration_s": {}}
    for name, est in ests.items():
        out["estimator_ms"][name] = round(1000 * best_seconds(lambda: est(f, g), device, repeats), 3)
    n = 256 + 8
    x = torch.rand(10 * n, 1, 28, 28, generator=g).to(device)
    y = torch.arange(10).repeat_interleave(n).to(device)
    stats = (torch.zeros(1), torch.ones(1))
    for name, est in ests.items():
        out["dm_iteration_s"][name] = round(best_seconds(
            lambda: condense.dm(x, y, 10, iterations=1, batch_real=256, width=128, stats=stats, estimator=est,
                                init="noise"), device, max(1, repeats // 2), 0), 4)
    base = out["dm_iteration_s"]["mean"]
    out["dm_ratio_to_mean"] = {k: round(v / base, 3) for k, v in out["dm_iteration_s"].items()}
    return out
