"""Shared timing helpers for the benchmarks: best-of-k wall time with device synchronisation."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(fn: Callable[[], object], device: torch.device, repeats: int = 5, warmup: int = 1) -> float:
    """The fastest of ``repeats`` timed calls of ``fn`` (after ``warmup`` untimed ones), in seconds."""
    for _ in range(warmup):
        fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def interleaved_seconds(fns: dict[str, Callable[[], object]], device: torch.device, rounds: int = 5,
                        inner: int = 1) -> dict[str, list[float]]:
    """Each name's seconds in each of ``rounds`` rounds; a round times every function in turn (the best of
    ``inner`` calls each), so a change in the machine's load between rounds falls on all of them alike and the
    ratio of two functions within one round compares them under the same load (warm-up is the caller's)."""
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            out[name].append(best_seconds(fn, device, inner, 0))
    return out


def ratio_spread(numerator: list[float], denominator: list[float]) -> dict:
    """Median, smallest and largest of the per-round ratios ``numerator[r] / denominator[r]``."""
    r = [a / b for a, b in zip(numerator, denominator)]
    return {"median": round(statistics.median(r), 2), "min": round(min(r), 2), "max": round(max(r), 2),
            "rounds": len(r)}


def gemm_gflops(device: torch.device, repeats: int = 5, dtype: torch.dtype = torch.float32,
                n: int = 2048) -> float:
    """GFLOPS of an ``n``^3 matrix product in ``dtype`` on ``device`` (the best of ``repeats``): the machine's
    limit, measured in the same run as what is compared with it."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device=device, dtype=dtype) for _ in range(2))
    return 2 * n**3 / best_seconds(lambda: a @ b, device, repeats) / 1e9
