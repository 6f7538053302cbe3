"""Unlearnable examples (chapter 50): one EM pass, TAP on 1,000 images, the OPS search, LSP/AR for 10,000 images.

Colour 32x32 inputs (CIFAR-sized), random images and labels (timing only), the chapter's cpu victim
(ConvNet width 16, depth 3) as surrogate. EM: one pass of the bi-level loop (10 model steps, 20 signed
steps over all 1,000 perturbations). TAP: 1,000 images, 25 PGD steps timed and the paper's 250 steps
extrapolated linearly (a PGD step costs the same every iteration). OPS: the search of positions and
colours for 10 classes over 1,000 images, vectorised (:func:`ops_search`) against the reference-style
Python loop over 1,024 positions x 8 colours per class (:func:`ops_search_loop`), in the same run,
with the ratio. LSP and AR: generating perturbations for 10,000 images.
"""

from __future__ import annotations

import torch

from poisonbook import models
from poisonbook.poison import unlearnable as ue
from timing import best_seconds

N = 1000
SHAPE = (3, 32, 32)


def run(device: torch.device, repeats: int = 5) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(N, *SHAPE, generator=g).to(device)
    y = (torch.arange(N) % 10).to(device)
    heavy = max(1, min(repeats, 2))  # the slow pieces are timed fewer times

    def net():
        torch.manual_seed(0)
        return models.ConvNet(3, 10, 32, width=16, depth=3).to(device)

    out = {"images": N}
    em_s = best_seconds(lambda: ue.em(net(), x, y, 10, max_passes=1), device, heavy, warmup=0)
    out["EM/one pass"] = {"seconds": round(em_s, 3), "per_image_ms": round(1e3 * em_s / N, 3)}
    surrogate = net().eval()
    tap_s = best_seconds(lambda: ue.tap(surrogate, x, y, 10, steps=25), device, heavy, warmup=0)
    out["TAP/1000 images"] = {"seconds_25_steps": round(tap_s, 3), "seconds_250_steps_extrapolated": round(10 * tap_s, 1)}
    xc, yc = x.cpu(), y.cpu()
    vec = best_seconds(lambda: ue.ops_search(x, y, 10), device, repeats)
    loop = best_seconds(lambda: ue.ops_search_loop(xc, yc, 10), torch.device("cpu"), 1, warmup=0)
    out["OPS search/10 classes"] = {"vectorised_s": round(vec, 4), "reference_loop_s": round(loop, 3),
                                    "speedup": round(loop / vec, 1)}
    y10k = torch.arange(10_000) % 10
    out["LSP/10000 images"] = {"seconds": round(best_seconds(lambda: ue.lsp(y10k, 10, SHAPE), device, heavy), 3)}
    out["AR/10000 images"] = {"seconds": round(best_seconds(lambda: ue.ar(y10k, 10, SHAPE), device, heavy,
                                                            warmup=0), 3)}
    return out
