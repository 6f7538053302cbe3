"""Five synthetic sets against one real pass (``condense.dm_multi``) at DM's paper size, on its own.

The K-sets case of ``bench_condense.py`` (its ``_k_sets``: one mean set, the five estimators of RDM-DC
Table 2, five means, and each estimator's single set, timed in turn round by round) for the default and the
compiled path, without that benchmark's half hour of DM, DC, GUARD and limit cases, at 28x28x1, width 128,
10 classes x 256 real images, ipc 10.

Each mode's K sets run first in a fresh process of their own (``dm_five_sets_per_real_pass``, with the process's
minor page faults), then again in this process after the compiled components
(``dm_five_sets_per_real_pass_after_components``): there the ratio measured higher, with millions of minor page
faults, so the record keeps both.

The ratio is a property of the machine as much as of the code. Five sets add, to one set's iteration, four
synthetic passes (forward and input backward of 100 images each) and four estimators; the real forward of
2,560 images is shared. So ``components`` times those parts alone, in turn round by round like the rest: the
compiled real forward (no autograd, in ``dm``'s default pieces), one compiled synthetic pass, and each
estimator on features (10, 256, 2048). ``five_over_one_from_parts`` = 1 + (4 synthetic passes + the four
estimators) / (one compiled set) is what the end-to-end ratio would be with nothing else in the way; a CPU
whose big real forward runs fast relative to the small synthetic passes gets a higher ratio. The fp32 GEMM
(2048^3, before and after; the faster counts) is recorded beside it to tell the machines apart.

``instance_norm``: the ConvNet's norm on one piece (16 images, 128 channels) at each of its map sizes, forward and
forward plus backward, for PyTorch's ``group_norm`` in channels-first and channels-last memory and for
``condense._norm.instance_norm`` in channels-last memory, in turn round by round; and ``norm_before_after``: one
set and five sets in ``dm``'s default path with PyTorch's channels-last ``group_norm`` (the code before
``condense._norm``) and as it is (``instance_norm``), in turn within each round, with the same-round ratios.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import resource
import statistics

import torch

from bench_condense import CLASSES, FIVE_ESTIMATORS, MODES, REAL_PER_CLASS, WIDTH, _k_sets, _real
from poisonbook import condense, models
from poisonbook.condense import _core, _dm
from poisonbook.condense._core import _chunk, _compiled, _embed, _embed_pieces, _layout
from poisonbook.condense._norm import instance_norm
from timing import gemm_gflops, interleaved_seconds, ratio_spread

IPC = 10


def _k_sets_child(device: str, repeats: int, mode: str) -> dict:
    """``_k_sets`` of one mode, in the process that calls it (a fresh one, see :func:`_k_sets_fresh`), with the
    process's minor page faults over it."""
    device = torch.device(device)
    x, y = _real(1, 28, device)
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    out = _k_sets(x, y, (torch.zeros(1), torch.ones(1)), device, repeats, warmup=1, modes=(mode,))[mode]
    return {**out, "minor_page_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start}


def _k_sets_fresh(device: torch.device, repeats: int, modes=("default_chunked", "compiled")) -> dict:
    """``_k_sets`` with each mode in its own fresh process (spawned; nothing else has run there), as a chapter's
    run of ``dm_multi`` starts."""
    out = {"estimators": list(FIVE_ESTIMATORS)}
    ctx = multiprocessing.get_context("spawn")
    for mode in modes:
        with ctx.Pool(1) as pool:
            out[mode] = pool.apply(_k_sets_child, (str(device), repeats, mode))
    return out


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
    parts.update({f"estimator_{n}": (lambda e=e: e(feats, g)) for n, e in FIVE_ESTIMATORS.items() if n != "mean"})
    for fn in parts.values():  # compiles, then one untimed call each
        fn()
    t = interleaved_seconds(parts, device, repeats)
    return {name: {"best_ms": round(1e3 * min(v), 1), "median_ms": round(1e3 * statistics.median(v), 1)}
            for name, v in t.items()}


def _instance_norm(device: torch.device, repeats: int) -> dict:
    """Milliseconds of the ConvNet's norm on one piece at each map size: forward (no autograd) and forward plus
    backward, PyTorch's ``group_norm`` per layout against ``instance_norm`` in channels-last memory."""
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(WIDTH, generator=g).to(device), torch.randn(WIDTH, generator=g).to(device)
    fns = {}
    for side in (32, 16, 8):
        x = torch.randn(_core.CPU_CHUNK, WIDTH, side, side, generator=g).to(device)
        for name, layout, norm in (("group_norm_channels_first", torch.contiguous_format, None),
                                   ("group_norm_channels_last", torch.channels_last, None),
                                   ("instance_norm_channels_last", torch.channels_last, instance_norm)):
            xi = x.contiguous(memory_format=layout).requires_grad_(True)
            dy = torch.randn_like(xi)
            f = norm or (lambda a, w_, b_: torch.nn.functional.group_norm(a, WIDTH, w_, b_))

            def forward(f=f, xi=xi):
                with torch.inference_mode():
                    f(xi, w, b)

            fns[f"{side}x{side}/{name}/forward"] = forward
            fns[f"{side}x{side}/{name}/forward_backward"] = lambda f=f, xi=xi, dy=dy: torch.autograd.grad(
                f(xi, w, b), xi, dy)
    for fn in fns.values():
        fn()
    t = interleaved_seconds(fns, device, repeats)
    out: dict = {}
    for key, v in t.items():
        size, name, what = key.split("/")
        out.setdefault(size, {}).setdefault(name, {})[what + "_ms"] = round(1e3 * min(v), 3)
    return out


@contextlib.contextmanager
def _pytorch_norms():
    """``dm`` as before ``condense._norm``: its channels-last networks keep PyTorch's ``GroupNorm``."""
    layout = _dm._net_layout  # the name dm's loop calls
    _dm._net_layout = lambda network, channels_last: (network.to(memory_format=torch.channels_last)
                                                      if channels_last else network)
    try:
        yield
    finally:
        _dm._net_layout = layout


def _before_after(x, y, stats, device, repeats) -> dict:
    """One and five sets (the K-sets estimators) in ``dm``'s default path, PyTorch's norm against ``instance_norm``,
    all four in turn within each round."""
    ests = list(FIVE_ESTIMATORS.values())
    kw = dict(iterations=1, batch_real=REAL_PER_CLASS, width=WIDTH, stats=stats, **MODES["default_chunked"])

    def one():
        condense.dm(x, y, 10, **kw)

    def five():
        condense.dm_multi(x, y, 10, [dict(estimator=e) for e in ests], **kw)

    def before(fn):
        def run():
            with _pytorch_norms():
                fn()
        return run

    runs = {"one_group_norm": before(one), "five_group_norm": before(five), "one": one, "five": five}
    for fn in runs.values():
        fn()
    t = interleaved_seconds(runs, device, repeats)
    best = {k: round(min(v), 3) for k, v in t.items()}
    return {"seconds": best,
            "speedup_one_set": round(best["one_group_norm"] / best["one"], 2),
            "speedup_one_set_per_round": ratio_spread(t["one_group_norm"], t["one"]),
            "speedup_five_sets": round(best["five_group_norm"] / best["five"], 2),
            "speedup_five_sets_per_round": ratio_spread(t["five_group_norm"], t["five"]),
            "five_over_one_group_norm_per_round": ratio_spread(t["five_group_norm"], t["one_group_norm"]),
            "five_over_one_per_round": ratio_spread(t["five"], t["one"])}


def run(device: torch.device, repeats: int = 5) -> dict:
    x, y = _real(1, 28, device)
    stats = (torch.zeros(1), torch.ones(1))
    before = gemm_gflops(device, repeats)
    faults = {}

    def counted(name, fn, *args, **kwargs):  # minor page faults of each section (fresh feature maps on a CPU)
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        out = fn(*args, **kwargs)
        faults[name] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
        return out

    # The five-set ratio depends on the process's history: each mode in a fresh process first (how a chapter's run
    # starts), then both again in this process after the compiled components, where earlier records measured it
    # at 1.63-1.80 with millions of minor page faults against 1.30-1.45 in fresh processes
    fresh = _k_sets_fresh(device, repeats)
    parts = counted("components", _components, device, repeats)
    sets = counted("k_sets", _k_sets, x, y, stats, device, repeats, warmup=1, modes=("default_chunked", "compiled"))
    norms = counted("instance_norm", _instance_norm, device, repeats)
    before_after = counted("norm_before_after", _before_after, x, y, stats, device, repeats)
    extra = 4 * parts["synthetic_pass"]["best_ms"] + sum(v["best_ms"] for k, v in parts.items()
                                                         if k.startswith("estimator_"))
    one = 1e3 * sets["compiled"]["one_set_s"]
    return {"width": WIDTH, "shape": "28x28x1", "ipc": IPC,
            "gemm_fp32_gflops": round(max(before, gemm_gflops(device, repeats)), 1), "components": parts,
            "five_over_one_from_parts": round(1 + extra / one, 2), "dm_five_sets_per_real_pass": fresh,
            "dm_five_sets_per_real_pass_after_components": sets,
            "instance_norm": norms, "norm_before_after": before_after, "minor_page_faults": faults}
