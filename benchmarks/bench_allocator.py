"""How much of the condensation speed-ups is the memory allocator: DM and DC under glibc's default ``malloc`` and
with its mmap threshold raised.

glibc serves an allocation above its mmap threshold (adjusted at run time, at most 32 MiB on 64-bit Linux) with a
fresh ``mmap``, and gives it back to the kernel when freed; every page of such a tensor then costs a minor page
fault, in which the kernel zeroes the page, at each allocation. The plain eager channels-first path allocates
feature maps of 134 MB (a DC class batch: 256 x 128 x 32 x 32 floats) and 1.3 GB (DM's 2,560 real images at
once), so it faults on every pass; in ``condense.CPU_CHUNK`` pieces of 16 images the maps are 8 MB and come back
from the heap. Part of what the pieces gain is therefore the allocator, not the cache.

This benchmark separates the two. Each setting runs in a fresh spawned process (glibc reads its ``MALLOC_*``
variables when the process starts):

* ``glibc_default``: the environment as it is (how a reader's run goes);
* ``no_mmap``: ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` at 2**34 (16 GiB), so freed blocks stay in
  the heap and are reused (a tuning a reader can set before starting Python).

In each process the modes of ``bench_condense`` (eager channels-first, the default, compiled) are timed in turn,
round by round (``repeats`` rounds, after one untimed call each, which compiles): a DM iteration (ipc 10, 28x28x1,
width 128, ``dm``'s default DSA strategy, 10 classes x 256 real images), DC's match step (one image update of all
classes) and network epoch, and DC's outer iteration extrapolated from them at loops (10, 50) as in
``bench_condense``. Each mode's
minor page faults are counted over one further call. Ratios are to the eager path in the same process and round;
the two processes run minutes apart, so a ratio across them (``eager_no_mmap_speedup``) mixes two loads.
"""

from __future__ import annotations

import multiprocessing
import os
import resource

import torch

from bench_condense import DC_MODES, MODES, REAL_PER_CLASS, WIDTH, _net_epoch, _real
from poisonbook import condense
from timing import interleaved_seconds, ratio_spread

SETTINGS = {"glibc_default": {}, "no_mmap": {"MALLOC_MMAP_THRESHOLD_": str(2**34),
                                             "MALLOC_TRIM_THRESHOLD_": str(2**34)}}
NAMES = ("eager_channels_first", "default_chunked", "compiled")
IPC = 10


def _faults(fn) -> int:
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start


def _child(device: str, repeats: int) -> dict:
    """The cases of one setting, in the (fresh) process that runs it."""
    device = torch.device(device)
    x, y = _real(1, 28, device)
    stats = (torch.zeros(1), torch.ones(1))
    outer, inner = condense.DC_LOOPS[IPC]
    fns = {}
    for name in NAMES:
        dm_kw, dc_kw = MODES[name], DC_MODES[name]
        fns[f"dm/{name}"] = lambda kw=dm_kw: condense.dm(x, y, IPC, iterations=1, batch_real=REAL_PER_CLASS,
                                                         width=WIDTH, stats=stats, **kw)
        fns[f"dc_match/{name}"] = lambda kw=dc_kw: condense.dc(x, y, IPC, iterations=1, loops=(1, 0),
                                                               batch_real=REAL_PER_CLASS, width=WIDTH, stats=stats,
                                                               **kw)
        fns[f"dc_epoch/{name}"] = _net_epoch(1, 28, IPC, device, dc_kw["channels_last"], dc_kw["chunk"],
                                             dc_kw.get("compile", False))
    for fn in fns.values():  # compiles and first-touch costs, untimed
        fn()
    t = interleaved_seconds(fns, device, repeats)
    t.update({f"dc_iteration/{name}": [outer * m + (outer - 1) * inner * e for m, e in
                                       zip(t[f"dc_match/{name}"], t[f"dc_epoch/{name}"])] for name in NAMES})
    faults = {key: _faults(fn) for key, fn in fns.items()}
    out: dict = {"env": {k: os.environ.get(k) for k in SETTINGS["no_mmap"]}}
    for key, seconds in t.items():
        case, name = key.split("/")
        base = t[f"{case}/eager_channels_first"]
        row = {"seconds": round(min(seconds), 3), "ratio_to_eager": round(min(base) / min(seconds), 2),
               "ratio_to_eager_per_round": ratio_spread(base, seconds)}
        if key in faults:
            row["minor_page_faults_per_call"] = faults[key]
        out.setdefault(case, {})[name] = row
    return out


def run(device: torch.device, repeats: int = 5) -> dict:
    out: dict = {"settings": SETTINGS, "ipc": IPC, "dc_loops": list(condense.DC_LOOPS[IPC])}
    ctx = multiprocessing.get_context("spawn")
    saved = {k: os.environ.pop(k, None) for k in SETTINGS["no_mmap"]}  # glibc_default: neither variable set
    try:
        for setting, env in SETTINGS.items():
            os.environ.update(env)
            with ctx.Pool(1) as pool:  # the child inherits this environment at its start
                out[setting] = pool.apply(_child, (str(device), repeats))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    for case in ("dm", "dc_iteration"):
        out.setdefault("eager_no_mmap_speedup", {})[case] = round(
            out["glibc_default"][case]["eager_channels_first"]["seconds"]
            / out["no_mmap"][case]["eager_channels_first"]["seconds"], 2)
    return out
