"""Dataset condensation at the papers' sizes: DM iterations, K sets per real pass, DC, and the CPU's limit.

ConvNet width 128, depth 3, 10 classes, 256 real images per class, random tensors (the cost does not
depend on the pixel values). Every case is timed for the plain eager channels-first path
(``channels_last=False, chunk=None``: the code before issue 11 up to the inference-mode real pass),
channels-last with whole batches (``chunk=None``), the default (channels-last, batches in cache-sized
pieces of ``condense.CPU_CHUNK`` images on a CPU) and, for DM, ``torch.compile``-d on top of the default
(``compile=True``; its one-off compile seconds separately). The modes are timed **in turn, round by round**
(``repeats`` rounds, ``timing.interleaved_seconds``): this machine is shared, and its load moves the whole-batch
eager paths (memory-bound) by up to 1.6x within minutes, so a ratio of two best-of-k times taken minutes apart
mixes two loads. Each case reports the best seconds, ``ratio_to_eager`` (the ratio of the best times) and
``ratio_to_eager_per_round`` (median, smallest and largest of the ratios within one round, same load). Absolute
seconds drift; same-run ratios are what counts.

* DM: ``condense.dm(..., iterations=1)`` with DSA at ipc 10 and 50, 28x28x1 and 32x32x3.
* K sets: ``condense.dm_multi`` with K = 5 estimators (mean, median, trimmed, truncated, calibrated)
  against one real pass, over one ``dm`` in the same mode (channels-last, default, compiled); and five
  means (the estimators' share), and each estimator's own single-set run (the average single set).
* DC and GUARD: one outer iteration at ipc 10, loops (10, 50), **extrapolated** from its parts on a CPU
  (``outer * t_match + (outer - 1) * inner * t_epoch``; ``t_match`` one image update of all classes,
  ``condense.dc`` / ``condense.guard`` with ``loops=(1, 0)``; ``t_epoch`` one network epoch on the
  synthetic set, DC's own inner loop), at 28x28x1. DC's default is channels-first in pieces (every pass
  needs gradients, see ``condense.dc``), so its modes add channels-last in pieces, and a compiled mode
  (``dc(..., compile=True)``: the real gradients and the training batches through ``torch.compile``, the
  synthetic gradient eager; the compile seconds separately). Each round times a mode's match step once and
  its epoch as the best of 3 calls. GUARD's match step is timed in one round.
  ``POISONBOOK_BENCH_FULL=1`` adds 32x32x3 and DC's ``batch_classes``.
* The limit: GFLOPS of the real forward pass (2,560 images, the convolutions' multiply-adds x 2) for
  each layout, whole and in pieces, eager and compiled, against a 2048^3 fp32 GEMM and a bf16 GEMM measured in
  the same run, and the bf16 real forward (autocast: channels-last, channels-first, compiled channels-last in
  pieces) with its relative error on the features; the bf16 cases only where a 512^3 bf16 GEMM outruns the fp32 one
  (both recorded), since a CPU without bf16 units runs them 15-20x slower than fp32 (hours).
* The group-norm kernel: forward and input backward of the ConvNet's instance norm (PyTorch's ``GroupNorm``) on a
  piece of 16 images (128 x 32 x 32) in each memory layout (why DC defaults to channels-first), and its forward on
  a bf16 input under autocast. ``condense._norm`` has a channels-last instance norm that is faster there and
  exact to float rounding; ``bench_dm_multi.py`` times both per map size, and DM with and without it. In a
  profile of the eager bf16 channels-last forward (256 images), ``native_group_norm``
  took 75% of the time (176 of 233 ms; channels-first 24 of 170 ms), but in isolation this kernel is no slower
  in channels-last, so the cause is in how the convolutions' bf16 outputs reach it, not isolated here.
  Compiled, the norm is inductor's own kernel and the bf16 pass runs at several times the fp32 one.
* Per-call setup: ``condense.dm(..., iterations=0)`` (input checks, fingerprint, sampler, stats).
"""

from __future__ import annotations

import copy
import os
import time

import torch

from poisonbook import condense, estimators, models
from poisonbook.condense._core import _chunk, _compiled, _forward
from poisonbook.condense._dc import _train_network
from timing import best_seconds, gemm_gflops, interleaved_seconds, ratio_spread, sync

CLASSES, REAL_PER_CLASS, WIDTH = 10, 256, 128
MODES = {"eager_channels_first": dict(channels_last=False, chunk=None),
         "channels_last": dict(channels_last=True, chunk=None),
         "default_chunked": dict(channels_last=True, chunk="auto"),
         "compiled": dict(channels_last=True, chunk="auto", compile=True)}
# DC's default is channels-first (every pass needs gradients; see condense.dc): its own default and compiled modes
DC_MODES = {"eager_channels_first": dict(channels_last=False, chunk=None),
            "channels_last": dict(channels_last=True, chunk=None),
            "chunked_channels_last": dict(channels_last=True, chunk="auto"),
            "default_chunked": dict(channels_last=False, chunk="auto"),
            "compiled": dict(channels_last=False, chunk="auto", compile=True)}


def _real(c: int, s: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    n = REAL_PER_CLASS + 16
    x = torch.rand(CLASSES * n, c, s, s, generator=g).to(device)
    y = torch.arange(CLASSES).repeat_interleave(n).to(device)
    return x, y


def _forward_flops(c: int, s: int, n: int) -> float:
    """Multiply-adds x 2 of the ConvNet's three 3x3 convolutions on n images (28x28 is padded to 32x32)."""
    size, total, cin = 32 if s == 28 else s, 0.0, c
    for _ in range(3):
        total += 2 * n * size * size * WIDTH * cin * 9
        cin, size = WIDTH, size // 2
    return total


def _timed_first(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _limit(c, s, device, repeats) -> dict:
    """GFLOPS of the real forward (each layout) against a GEMM and a bf16 GEMM measured now."""

    # A CPU without bf16 units (no AVX512-BF16 or AMX; a 2-core AMD EPYC with AVX2 ran a bf16 GEMM at 0.3-1.2
    # GFLOPS, its bf16 forward 17x slower than fp32) would spend hours on the bf16 cases: a small probe decides.
    probe = {dtype: round(gemm_gflops(device, repeats, dtype, n=512), 1) for dtype in (torch.float32, torch.bfloat16)}
    with_bf16 = probe[torch.bfloat16] > probe[torch.float32]

    def gemms() -> tuple[float, float | None]:
        return gemm_gflops(device, repeats), gemm_gflops(device, repeats, torch.bfloat16) if with_bf16 else None

    before = gemms()  # measured again after the forwards; the faster of the two counts (a shared machine)
    torch.manual_seed(0)
    net = models.ConvNet(c, CLASSES, s, width=WIDTH).to(device).train().requires_grad_(False)
    x = torch.randn(CLASSES * REAL_PER_CLASS, c, s, s, device=device)
    flops = _forward_flops(c, s, len(x))
    out = {"real_forward_gflop": round(flops / 1e9, 1)}
    with torch.inference_mode():
        ref = net.embed(x)
        t = best_seconds(lambda: net.embed(x), device, repeats)
        out["forward_eager_channels_first"] = {"seconds": round(t, 3), "gflops": round(flops / t / 1e9, 1)}
        netc = copy.deepcopy(net).to(memory_format=torch.channels_last)  # .to() is in place: keep net as it is
        xc = x.contiguous(memory_format=torch.channels_last)
        t = best_seconds(lambda: netc.embed(xc), device, repeats)
        out["forward_channels_last"] = {"seconds": round(t, 3), "gflops": round(flops / t / 1e9, 1)}
        k = condense.CPU_CHUNK
        t = best_seconds(lambda: torch.cat([netc.embed(xc[i:i + k]) for i in range(0, len(xc), k)]), device,
                         repeats)
        out[f"forward_channels_last_pieces_of_{k}"] = {"seconds": round(t, 3), "gflops": round(flops / t / 1e9, 1)}
        compiled = torch.compile(lambda a: netc.embed(a), dynamic=False)  # its own: autocast recompiles it
        t = best_seconds(lambda: torch.cat([compiled(xc[i:i + k]) for i in range(0, len(xc), k)]), device, repeats)
        out[f"forward_compiled_channels_last_pieces_of_{k}"] = {"seconds": round(t, 3),
                                                               "gflops": round(flops / t / 1e9, 1)}
        bf16 = {"channels_last": lambda: netc.embed(xc), "channels_first": lambda: net.embed(x),
                f"compiled_channels_last_pieces_of_{k}":
                    lambda: torch.cat([compiled(xc[i:i + k]) for i in range(0, len(xc), k)])}
        for name, fn in bf16.items() if with_bf16 else ():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                err = float((fn().float() - ref).abs().max() / ref.abs().max())
                t = best_seconds(fn, device, repeats)
            out[f"forward_bf16_autocast_{name}"] = {"seconds": round(t, 3), "gflops": round(flops / t / 1e9, 1),
                                                    "max_rel_error": round(err, 5)}
    after = gemms()
    gemm = max(before[0], after[0])
    out.update(gemm_fp32_gflops=round(gemm, 1),
               gemm_bf16_gflops=round(max(before[1], after[1]), 1) if with_bf16 else None,
               gemm_512_gflops={"fp32": probe[torch.float32], "bf16": probe[torch.bfloat16]})
    if not with_bf16:
        out["bf16_skipped"] = "the 512^3 bf16 GEMM ran slower than fp32 here (a CPU without bf16 units)"
    out["forward_fraction_of_gemm"] = round(out["forward_channels_last"]["gflops"] / gemm, 3)
    out["forward_pieces_fraction_of_gemm"] = round(out[f"forward_channels_last_pieces_of_{k}"]["gflops"] / gemm, 3)
    out["mkldnn"] = {"available": torch.backends.mkldnn.is_available(), "enabled": torch.backends.mkldnn.enabled,
                     "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    out["group_norm_fwd_bwd_ms"] = _group_norm(device, repeats)
    out["group_norm_bf16_autocast_forward_ms"] = _group_norm(device, repeats, bf16=True)
    return out


def _group_norm(device, repeats, bf16=False) -> dict:
    """The ConvNet's instance norm (GroupNorm(128, 128)) forward and input backward on one piece of 16 images at
    32x32, per memory layout: the kernel behind DC's channels-first default (``condense.dc``). ``bf16``: the forward
    alone on a bf16 input under autocast, as in the eager bf16 real pass."""
    g = torch.Generator().manual_seed(0)
    norm = torch.nn.GroupNorm(WIDTH, WIDTH).to(device).requires_grad_(False)
    out = {}
    for layout in ("channels_first", "channels_last"):
        x = torch.randn(condense.CPU_CHUNK, WIDTH, 32, 32, generator=g).to(device)
        x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
        if bf16:
            xb = x.bfloat16()
            with torch.autocast(device.type, dtype=torch.bfloat16), torch.inference_mode():
                t = best_seconds(lambda: norm(xb), device, repeats)  # noqa: B023
        else:
            x.requires_grad_(True)
            dy = torch.randn_like(x)
            t = best_seconds(lambda: torch.autograd.grad(norm(x), x, dy), device, repeats)  # noqa: B023
        out[layout] = round(t * 1e3, 3)
    return out


def _dm_cases(x, y, stats, ipcs, device, repeats, warmup) -> dict:
    for kw in MODES.values():  # a small call of each path first, so no mode pays one-off set-up costs
        condense.dm(x, y, 10, iterations=1, batch_real=8, width=WIDTH, stats=stats, **kw)
    out = {}
    for ipc in ipcs:
        runs = {mode: lambda kw=kw: condense.dm(x, y, ipc, iterations=1, batch_real=REAL_PER_CLASS,  # noqa: B023
                                                width=WIDTH, stats=stats, **kw) for mode, kw in MODES.items()}
        first = {mode: _timed_first(run) if mode == "compiled" else None for mode, run in runs.items()}
        for _ in range(warmup):
            for run in runs.values():
                run()
        times = interleaved_seconds(runs, device, repeats)
        out[f"ipc{ipc}"] = _ratios({m: {"seconds_per_iteration": t} for m, t in times.items()}, first)
    return out


def _ratios(entry: dict, first: dict | None = None, key: str = "seconds_per_iteration") -> dict:
    """Each mode's best seconds, its ratio to the eager channels-first best (``ratio_to_eager``) and the spread of
    the same ratio round by round (``ratio_to_eager_per_round``: each round times every mode under the same load);
    ``first``: a mode's first call (its compile seconds are that call's excess over the mode's best)."""
    base = entry["eager_channels_first"][key]
    out = {}
    for mode, e in entry.items():
        best = min(e[key])
        row = {k: (round(min(v), 4) if isinstance(v, list) else v) for k, v in e.items()}
        row[key] = round(best, 3)
        if first and first.get(mode) is not None:
            row["compile_seconds"] = round(max(first[mode] - best, 0.0), 1)
        row["ratio_to_eager"] = round(min(base) / best, 2)
        if len(e[key]) > 1:
            row["ratio_to_eager_per_round"] = ratio_spread(base, e[key])
        out[mode] = row
    return out


#: The five estimators of RDM-DC Table 2 that the K-sets cases condense against one real pass.
FIVE_ESTIMATORS = {"mean": condense.feature_mean, "median": estimators.Median(),
                   "trimmed": estimators.trimmed_mean(eps=0.1), "truncated": estimators.truncated_mean(eps=0.1),
                   "calibrated": estimators.calibrated_mean(0.1)}


def _k_sets(x, y, stats, device, repeats, warmup,
            modes=("channels_last", "default_chunked", "compiled")) -> dict:
    """K = 5 estimators against one real pass over one set, in each mode; the five means alone split the cost
    between the shared passes and the estimators. One, five and the five means are timed in turn within each
    round (``cost_ratio`` of the best times; ``cost_ratio_per_round`` the spread of the same-round ratios).

    "One set" is a mean set. A single set with another estimator pays that estimator too, so the five are also
    compared with the average of the five single-set runs, one per estimator, timed in the same rounds
    (``cost_ratio_to_average_one_set``; five separate runs, as Part II's Table 2 would take them, cost five of these)."""
    names, ests = list(FIVE_ESTIMATORS), list(FIVE_ESTIMATORS.values())
    out = {"estimators": names}
    for mode in modes:
        kw = dict(iterations=1, batch_real=REAL_PER_CLASS, width=WIDTH, stats=stats, **MODES[mode])
        runs = {"one": lambda kw=kw: condense.dm(x, y, 10, **kw),
                "five": lambda kw=kw: condense.dm_multi(x, y, 10, [dict(estimator=e) for e in ests], **kw),
                "means": lambda kw=kw: condense.dm_multi(x, y, 10, [dict(estimator=condense.feature_mean)] * 5,
                                                         **kw)}
        runs.update({f"one_{n}": lambda kw=kw, e=e: condense.dm(x, y, 10, estimator=e, **kw)
                     for n, e in zip(names[1:], ests[1:])})
        for _ in range(max(warmup, 1) if mode == "compiled" else warmup):  # compiled: its compiles first
            for run in runs.values():
                run()
        t = interleaved_seconds(runs, device, repeats)
        one, five, means = min(t["one"]), min(t["five"]), min(t["means"])
        out[mode] = {"one_set_s": round(one, 3), "five_sets_s": round(five, 3), "cost_ratio": round(five / one, 2),
                     "cost_ratio_per_round": ratio_spread(t["five"], t["one"]),
                     "five_means_s": round(means, 3), "five_means_ratio": round(means / one, 2),
                     "five_means_ratio_per_round": ratio_spread(t["means"], t["one"])}
        singles = [t["one"]] + [t[f"one_{n}"] for n in names[1:]]
        average = [sum(r) / len(r) for r in zip(*singles)]  # per round: the mean of the five single-set runs
        out[mode].update(one_set_each_s={n: round(min(v), 3) for n, v in zip(names, singles)},
                         cost_ratio_to_average_one_set=round(five / min(average), 2),
                         cost_ratio_to_average_one_set_per_round=ratio_spread(t["five"], average))
    return out


def _net_epoch(c, s, ipc, device, channels_last, chunk, compile=False):
    """One epoch of DC's inner loop (``condense._dc._train_network``) on a synthetic set of ``ipc`` per class,
    eager or through the compiled forward that ``dc(..., compile=True)`` uses."""
    net = models.ConvNet(in_channels=c, num_classes=CLASSES, im_size=s, width=WIDTH).to(device)
    xs = torch.randn(CLASSES * ipc, c, s, s, device=device)
    net = net.to(memory_format=torch.channels_last) if channels_last else net
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    ys = torch.arange(CLASSES, device=device).repeat_interleave(ipc)
    rows, gen = _chunk(chunk, device, "bench"), torch.Generator().manual_seed(0)
    forward = _compiled(_forward, compile)
    return lambda: _train_network(net, opt, xs, ys, 1, 256, None, gen, channels_last, rows, forward)


def _dc(x, y, stats, c, s, device, repeats, warmup, full, method="dc") -> dict:
    """DC's (or GUARD's, ``method="guard"``, one round) outer iteration at ipc 10, extrapolated from its parts.

    Every round times each mode's match step and then its network epoch (the best of 3 calls: an epoch is short),
    all modes in turn; a round's extrapolated outer iteration combines that round's two times."""
    ipc, run = 10, getattr(condense, method)
    outer, inner = condense.DC_LOOPS[ipc]
    modes = dict(DC_MODES)
    if full and method == "dc":
        modes["channels_last_batch_classes"] = dict(channels_last=True, chunk=None, batch_classes=True)
    rounds = repeats if method == "dc" else 1
    entry = {"loops": [outer, inner], "extrapolated": True,
             "formula": "outer*match_step + (outer-1)*inner*net_epoch"}
    for kw in modes.values():  # a small call of each path first, so no mode pays one-off set-up costs
        run(x, y, ipc, iterations=1, loops=(1, 0), batch_real=8, width=WIDTH, stats=stats, **kw)
    matches, epochs, first = {}, {}, {}
    for mode, kw in modes.items():
        matches[mode] = lambda kw=kw: run(x, y, ipc, iterations=1, loops=(1, 0), batch_real=REAL_PER_CLASS,
                                          width=WIDTH, stats=stats, **kw)
        epochs[mode] = _net_epoch(c, s, ipc, device, kw["channels_last"], kw["chunk"], kw.get("compile", False))
        if kw.get("compile"):  # the compiles: the first calls' excess over the best times (below)
            first[mode] = (_timed_first(matches[mode]), _timed_first(epochs[mode]))
        elif warmup:
            matches[mode]()
            epochs[mode]()
    times = {mode: {"match_step_s": [], "net_epoch_s": [], "seconds_per_iteration": []} for mode in modes}
    for _ in range(rounds):
        for mode in modes:
            t_match = best_seconds(matches[mode], device, 1, 0)
            t_epoch = best_seconds(epochs[mode], device, 3, 0)
            e = times[mode]
            e["match_step_s"].append(t_match)
            e["net_epoch_s"].append(t_epoch)
            e["seconds_per_iteration"].append(outer * t_match + (outer - 1) * inner * t_epoch)
    rows = _ratios(times)
    for mode, (f_match, f_epoch) in first.items():
        rows[mode]["compile_seconds"] = round(max(f_match - min(times[mode]["match_step_s"]), 0.0)
                                              + max(f_epoch - min(times[mode]["net_epoch_s"]), 0.0), 1)
    for mode, row in rows.items():  # the best extrapolation from the best parts, as before the rounds
        row["seconds_per_iteration"] = round(outer * row["match_step_s"] + (outer - 1) * inner * row["net_epoch_s"], 1)
    base = rows["eager_channels_first"]["seconds_per_iteration"]
    for row in rows.values():
        row["ratio_to_eager"] = round(base / row["seconds_per_iteration"], 2)
    entry.update(rows)
    return entry


def run(device: torch.device, repeats: int = 5) -> dict:
    import torch._inductor.config as inductor

    inductor.force_disable_caches = True  # compile seconds are the one-off cost of a fresh machine, not a cache hit
    full = device.type != "cpu" or os.environ.get("POISONBOOK_BENCH_FULL", "0") == "1"
    warmup = 1 if full else 0  # quick CPU runs: DM warms up through the small cases before it (see _dc too)
    out: dict = {"full": full, "width": WIDTH, "classes": CLASSES, "real_per_class": REAL_PER_CLASS}
    for c, s in ((1, 28), (3, 32)):
        x, y = _real(c, s, device)
        stats = (torch.zeros(c), torch.ones(c))
        entry: dict = {"limit": _limit(c, s, device, repeats)}
        entry["dm"] = _dm_cases(x, y, stats, (10, 50), device, repeats, warmup)
        if s == 28 or full:
            entry["dm_five_sets_per_real_pass"] = _k_sets(x, y, stats, device, repeats, warmup)
            entry["dc_ipc10"] = _dc(x, y, stats, c, s, device, repeats, warmup, full)
            entry["guard_ipc10"] = _dc(x, y, stats, c, s, device, repeats, warmup, full, method="guard")
        if s == 28:
            sync(device)
            entry["dm_setup_per_call_s"] = round(best_seconds(
                lambda: condense.dm(x, y, 10, iterations=0, width=WIDTH, stats=stats), device, repeats, 0), 4)
        out[f"{s}x{s}x{c}"] = entry
    return out
