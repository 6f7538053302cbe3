"""Dataset condensation at the papers' sizes: one DM iteration and one DC outer iteration.

ConvNet width 128, depth 3, 10 classes, 256 real images per class, 10 and 50 synthetic images per
class, 28x28x1 and 32x32x3 inputs (random tensors: the cost does not depend on the pixel values).

* DM: ``condense.dm(..., iterations=1)`` with DSA (one fresh frozen network, one forward pass over
  the 2,560 real images, one forward and backward pass over the synthetic set, one SGD step).
* DC: one outer iteration (one network initialisation) has ``outer_loop`` image updates and
  ``(outer_loop - 1) * inner_loop`` network epochs on the synthetic set: (10, 50) at ipc 10 and
  (50, 10) at ipc 50. On a GPU (or with ``POISONBOOK_BENCH_FULL=1``) whole iterations are timed. On
  a CPU that takes many minutes, so by default (``quick``) the parts are timed and the iteration is
  **extrapolated** (labelled ``"extrapolated": true``):
  ``outer_loop * t_match + (outer_loop - 1) * inner_loop * t_epoch``, with ``t_match`` one image
  update of all classes (``condense.dc`` with ``loops=(1, 0)``: per class the real and the synthetic
  parameter gradients and their distance, then the step) and ``t_epoch`` one training epoch of the
  network on the synthetic set (batches of 256, plain SGD, as in ``condense.dc``). Quick mode times
  each part once, without a warm-up call.
"""

from __future__ import annotations

import os

import torch
from torch.nn import functional as F

from poisonbook import condense, models
from timing import best_seconds

CLASSES, REAL_PER_CLASS, WIDTH = 10, 256, 128
SHAPES = ((1, 28), (3, 32))
IPCS = (10, 50)


def _real(c: int, s: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    n = REAL_PER_CLASS + 16
    x = torch.rand(CLASSES * n, c, s, s, generator=g).to(device)
    y = torch.arange(CLASSES).repeat_interleave(n).to(device)
    return x, y


def _net_epoch(c: int, s: int, ipc: int, device: torch.device):
    """One epoch of DC's network update on a synthetic set of ``ipc`` images per class."""
    net = models.ConvNet(in_channels=c, num_classes=CLASSES, im_size=s, width=WIDTH).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    xs = torch.randn(CLASSES * ipc, c, s, s, device=device)
    ys = torch.arange(CLASSES, device=device).repeat_interleave(ipc)

    def epoch():
        order = torch.randperm(len(xs), device=device)
        for i in range(0, len(order), 256):
            b = order[i:i + 256]
            loss = F.cross_entropy(net(xs[b]), ys[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return epoch


def run(device: torch.device, repeats: int = 5) -> dict:
    quick = device.type == "cpu" and os.environ.get("POISONBOOK_BENCH_FULL", "0") != "1"
    warmup = 0 if quick else 1
    out: dict = {"quick": quick, "width": WIDTH, "classes": CLASSES, "real_per_class": REAL_PER_CLASS}
    for c, s in SHAPES:
        x, y = _real(c, s, device)
        stats = (torch.zeros(c), torch.ones(c))
        entry: dict = {"dm": {}, "dc": {}}
        for ipc in IPCS:
            dm_s = best_seconds(lambda: condense.dm(x, y, ipc, iterations=1, batch_real=REAL_PER_CLASS,
                                                    width=WIDTH, stats=stats), device, repeats, warmup)
            entry["dm"][f"ipc{ipc}"] = {"seconds_per_iteration": round(dm_s, 4)}
            outer, inner = condense.DC_LOOPS[ipc]
            if quick:
                one_update = lambda: condense.dc(x, y, ipc, iterations=1, loops=(1, 0),  # noqa: E731
                                                 batch_real=REAL_PER_CLASS, width=WIDTH, stats=stats)
                t_match = best_seconds(one_update, device, repeats, warmup)
                t_epoch = best_seconds(_net_epoch(c, s, ipc, device), device, repeats, warmup)
                total = outer * t_match + (outer - 1) * inner * t_epoch
                entry["dc"][f"ipc{ipc}"] = {"seconds_per_iteration": round(total, 2), "extrapolated": True,
                                            "loops": [outer, inner], "match_step_s": round(t_match, 4),
                                            "net_epoch_s": round(t_epoch, 4),
                                            "formula": "outer*match_step + (outer-1)*inner*net_epoch"}
            else:
                t = best_seconds(lambda: condense.dc(x, y, ipc, iterations=1, batch_real=REAL_PER_CLASS,
                                                     width=WIDTH, stats=stats), device, repeats, warmup)
                entry["dc"][f"ipc{ipc}"] = {"seconds_per_iteration": round(t, 4), "extrapolated": False,
                                            "loops": [outer, inner]}
        out[f"{s}x{s}x{c}"] = entry
    return out
