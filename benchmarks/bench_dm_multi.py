"""Five synthetic sets against one real pass (``condense.dm_multi``) at DM's paper size, on its own.

The K-sets case of ``bench_condense.py`` (its ``_k_sets``: one mean set, the five estimators of RDM-DC
Table 2, five means, and each estimator's single set, timed in turn round by round) for the default and the
compiled path, without that benchmark's half hour of DM, DC, GUARD and limit cases, at 28x28x1, width 128,
10 classes x 256 real images, ipc 10.

The ratio is a property of the machine as much as of the code. Five sets add, to one set's iteration, four
synthetic passes (forward and input backward of 100 images each) and four estimators; the real forward of
2,560 images is shared. So ``components`` times those parts alone, in turn round by round like the rest: the
compiled real forward (no autograd, in ``dm``'s default pieces), one compiled synthetic pass, and each
estimator on features (10, 256, 2048). ``five_over_one_from_parts`` = 1 + (4 synthetic passes + the four
estimators) / (one compiled set) is what the end-to-end ratio would be with nothing else in the way; a CPU
whose big real forward runs fast relative to the small synthetic passes gets a higher ratio. The fp32 GEMM
(2048^3, before and after; the faster counts) is recorded beside it to tell the machines apart.
"""

from __future__ import annotations

import statistics

import torch

from bench_condense import CLASSES, REAL_PER_CLASS, WIDTH, _k_sets, _real
from poisonbook import estimators, models
from poisonbook.condense._core import _chunk, _compiled, _embed, _embed_pieces, _layout
from timing import gemm_gflops, interleaved_seconds

IPC = 10


def _components(device: torch.device, repeats: int) -> dict:
    """Seconds of the parts of a compiled DM iteration that five sets share or repeat, in turn each round."""
    g = torch.Generator().manual_seed(0)
    net = models.ConvNet(1, CLASSES, 28, WIDTH).to(device).train().requires_grad_(False)
    net = net.to(memory_format=torch.channels_last)
    embed, chunk = _compiled(_embed, True), _chunk("auto", device, "bench_dm_multi")  # as dm cuts its batches
    real = _layout(torch.randn(CLASSES * REAL_PER_CLASS, 1, 28, 28, generator=g).to(device), True)
    syn = torch.randn(CLASSES * IPC, 1, 28, 28, generator=g).to(device).requires_grad_(True)
    feats = torch.randn(CLASSES, REAL_PER_CLASS, 2048, generator=g).relu().to(device)

    def real_forward():
        with torch.inference_mode():
            _embed_pieces(embed, net, real, chunk)

    def synthetic_pass():
        syn.grad = None
        f = _embed_pieces(embed, net, _layout(syn, True), chunk)
        (f.view(CLASSES, IPC, -1).mean(1) ** 2).sum().backward()

    parts = {"real_forward": real_forward, "synthetic_pass": synthetic_pass}
    ests = {"median": estimators.median, "trimmed": estimators.trimmed_mean(eps=0.1),
            "truncated": estimators.truncated_mean(eps=0.1), "calibrated": estimators.calibrated_mean(0.1)}
    parts.update({f"estimator_{n}": (lambda e=e: e(feats, g)) for n, e in ests.items()})
    for fn in parts.values():  # compiles, then one untimed call each
        fn()
    t = interleaved_seconds(parts, device, repeats)
    return {name: {"best_ms": round(1e3 * min(v), 1), "median_ms": round(1e3 * statistics.median(v), 1)}
            for name, v in t.items()}


def run(device: torch.device, repeats: int = 5) -> dict:
    x, y = _real(1, 28, device)
    stats = (torch.zeros(1), torch.ones(1))
    before = gemm_gflops(device, repeats)
    parts = _components(device, repeats)
    sets = _k_sets(x, y, stats, device, repeats, warmup=1, modes=("default_chunked", "compiled"))
    extra = 4 * parts["synthetic_pass"]["best_ms"] + sum(v["best_ms"] for k, v in parts.items()
                                                         if k.startswith("estimator_"))
    one = 1e3 * sets["compiled"]["one_set_s"]
    return {"width": WIDTH, "shape": "28x28x1", "ipc": IPC,
            "gemm_fp32_gflops": round(max(before, gemm_gflops(device, repeats)), 1), "components": parts,
            "five_over_one_from_parts": round(1 + extra / one, 2), "dm_five_sets_per_real_pass": sets}
