"""Five synthetic sets against one real pass (``condense.dm_multi``) at DM's paper size, on its own.

The K-sets case of ``bench_condense.py`` (its ``_k_sets``: one mean set, the five estimators of RDM-DC
Table 2, five means, and each estimator's single set, timed in turn round by round, channels-last, default
and compiled) without that benchmark's half hour of DM, DC, GUARD and limit cases, at 28x28x1, width 128,
10 classes x 256 real images, ipc 10. The ratio is a property of the machine as much as of the code: the five
sets add four synthetic passes (forward and input backward of 100 images) and four estimators to one shared
real forward of 2,560 images, so a CPU that runs the big real forward fast, relative to the small synthetic
passes, gets a higher ratio. The fp32 GEMM (2048^3, before and after; the faster counts) is recorded beside
it to tell the machines apart.
"""

from __future__ import annotations

import torch

from bench_condense import WIDTH, _k_sets, _real
from timing import best_seconds


def _gemm_gflops(device: torch.device, repeats: int) -> float:
    n = 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n**3 / best_seconds(lambda: a @ b, device, repeats) / 1e9


def run(device: torch.device, repeats: int = 5) -> dict:
    x, y = _real(1, 28, device)
    stats = (torch.zeros(1), torch.ones(1))
    before = _gemm_gflops(device, repeats)
    sets = _k_sets(x, y, stats, device, repeats, warmup=1)
    gemm = max(before, _gemm_gflops(device, repeats))
    return {"width": WIDTH, "shape": "28x28x1", "ipc": 10, "gemm_fp32_gflops": round(gemm, 1),
            "dm_five_sets_per_real_pass": sets}
