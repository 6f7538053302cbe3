"""DM (Zhao & Bilen 2021b) and several DM runs against one real pass (:func:`dm_multi`)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .. import augment as aug
from .. import checks
from ..cache import Checkpoint
from ._core import (Condensed, Estimator, _chunk, _compiled, _default_factory, _embed, _embed_pieces, _finish,
                    _finite, _fingerprint, _fresh_net, _init_images, _layout, _make_checkpoint, _match, _net_layout,
                    _per_sample, _progress, _seed_from, _setup, callable_key, estimate_real, feature_mean)

def dm(x: torch.Tensor, y: torch.Tensor, ipc: int, *, iterations: int = 20_000, lr: float = 1.0,
       momentum: float = 0.5, batch_real: int = 256, init: str = "real",
       strategy: str | None = aug.STRATEGY, estimator: Estimator = feature_mean,
       net: Callable[[], nn.Module] | None = None, width: int = 128, depth: int = 3,
       num_classes: int | None = None, stats: tuple | None = None, seed: int = 0,
       checkpoint: Checkpoint | str | os.PathLike | None = None, checkpoint_every: int = 100,
       callback: Callable[[int, torch.Tensor, float], None] | None = None,
       on_estimate: Callable | None = None, progress: bool = False, channels_last: bool = True,
       compile: bool = False, chunk: int | str | None = "auto", estimator_seed: int | None = None,
       init_seed: int | None = None) -> Condensed:
    """Distribution matching (Zhao & Bilen 2021b, "Dataset Condensation with Distribution Matching").

    Each iteration samples a fresh, frozen network ``Phi_theta`` (``theta ~ P_theta``: the
    default PyTorch initialisation of ``net()``), draws ``batch_real`` real images of every class
    and one DSA transform ``A_{w_c}`` per class (``augment.draw(..., per_group_op=True)``: each
    class its own op and parameters, as the reference's class loop), applies ``A_{w_c}`` to the
    real and the synthetic images of class c, and takes one SGD step on the synthetic images
    along the gradient of

        ``sum_c || estimator(Phi(A_{w_c}(real_c))) - mean_j Phi(A_{w_c}(s_j^c)) ||^2``

    (RDM-DC eq. (2) per class; RDM-DC Algorithm 3 with ``Calibrate = estimator``; see
    :func:`dm_loss`). Because the network is frozen and its instance norm is per sample, all
    classes' real images go through one forward pass (no gradient) and all synthetic images
    through another; the per-class means are taken after reshaping to (C, n, d).

    Defaults (paper / reference): ``iterations`` 20,000; SGD on the images with ``lr`` 1.0 and
    ``momentum`` 0.5; ``batch_real`` 256 per class (capped at the smallest class size);
    ``init`` "real" (reference; RDM-DC uses "noise", Gaussian N(0, I) in standardised
    coordinates); ``strategy`` the full DSA strategy (pass ``augment.strategy_for(name)``,
    or None for no augmentation); ConvNet ``width`` 128, depth 3 (``net`` overrides: a
    zero-argument factory of a module with ``embed()``).

    ``estimator``: real-mean estimator, a function ``(C, n, d) -> (C, d)`` applied to the
    detached real features of all classes at once (see :func:`dm_loss`, :func:`per_class`);
    default the plain mean. ``checkpoint``: a path or :class:`~poisonbook.cache.Checkpoint`;
    images, optimiser state, iteration, loss history and generator state are saved every
    ``checkpoint_every`` iterations and a later call resumes from there (bit-identical to an
    uninterrupted run on the same device). ``callback(iteration, images, loss)`` after each
    iteration (images in standardised coordinates; raise to stop).
    ``on_estimate(iteration, idx, features, estimate, dropped)`` each iteration before the step:
    ``idx`` (C, n) the indices into ``x`` of the real batch, ``features`` (C, n, d) their detached
    embeddings, ``estimate`` (C, d), ``dropped`` (C, k) positions into the n axis (or None); with
    the caller's poison flags ``is_poison[idx]`` it gives the poisoned deviation of every
    iteration (:func:`poisonbook.estimators.deviation_parts`). The estimator's name and every
    parameter enter the checkpoint key (:func:`callable_key`); a randomised estimator
    (``estimators.calibrated_mean``) draws from the run's generator, so resume is bit-identical.
    RDM-DC (Algorithm 3) is ``dm(..., estimator=estimators.calibrated_mean(eps), init="noise")``.
    ``stats``: the per-channel (mean, std) that standardise the images (default: those of ``x``; see
    the module docstring).

    Speed (results equal to the plain eager path up to float rounding; ``tests/test_condense_fast.py``):
    the real batch is embedded under ``torch.inference_mode`` (no autograd), and with ``channels_last``
    (default) the network and images are in channels-last memory. ``compile=True`` compiles the
    embedding with ``torch.compile``, for the real pass (no autograd) and the synthetic pass (with it) (a
    one-off cost: ``Condensed.compile_seconds`` is the first iteration's time, both compiles included, and
    part of ``seconds``; it pays only in long runs where the compiled kernels are faster, see
    ``benchmarks/bench_condense.py``). ``chunk``: the real and the synthetic batch go through the network in
    pieces of this many images (``"auto"``: ``condense.CPU_CHUNK`` = 16 on a CPU, whole batches on a GPU;
    None: whole batches), so that each piece's feature maps are reused from the heap, not mapped afresh with a
    page fault per page (:data:`CPU_CHUNK`), and stay in the CPU's cache; the features are the
    same (the network is per sample; with batch norm the batches stay whole). ``estimator_seed``: None
    (default) lets a randomised estimator draw from the run's generator; an int gives it its own generator seeded with it, so the run's
    network, batch and augmentation draws do not depend on the estimator. ``init_seed``: None (default)
    draws the initial images from the run's generator; an int draws them from their own generator
    seeded with it (the run's own initial draw is still made and discarded, so every later draw is
    that of ``seed``). Runs that differ only in ``estimator``, ``init_seed`` or the pixels of some
    classes then share all their random draws: :func:`dm_multi` does them together.
    """
    cb = None if callback is None else (lambda it, images, losses: callback(it, images[0], losses[0]))
    oe = None if on_estimate is None else (lambda k, it, *rest: on_estimate(it, *rest))
    (out,) = _run(x, y, ipc, [DMVariant(estimator, None, init_seed)], "condense.dm", "dm", dict(
        iterations=iterations, lr=lr, momentum=momentum, batch_real=batch_real, init=init, strategy=strategy,
        net=net, width=width, depth=depth, num_classes=num_classes, stats=stats, seed=seed,
        checkpoint=checkpoint, checkpoint_every=checkpoint_every, callback=cb, on_estimate=oe,
        progress=progress, channels_last=channels_last, compile=compile, chunk=chunk,
        estimator_seed=estimator_seed))
    return out


@dataclass(frozen=True)
class DMVariant:
    """One synthetic set of :func:`dm_multi`: what differs from the others.

    ``estimator``: the real-mean estimator (None: the call's ``estimator``); ``x``: this set's training
    images, the call's ``x`` with some classes changed (e.g. poisoned), same shape and labels (None:
    the call's ``x``); ``init_seed``: the seed of its initial images (None: the run's draw, as
    :func:`dm`).
    """

    estimator: Estimator | None = None
    x: torch.Tensor | None = None
    init_seed: int | None = None


def dm_multi(x: torch.Tensor, y: torch.Tensor, ipc: int, variants: Sequence[DMVariant | dict], *,
             estimator: Estimator = feature_mean, estimator_seed: int | None = None,
             callback: Callable | None = None, on_estimate: Callable | None = None,
             **kwargs) -> list[Condensed]:
    """K DM runs (:func:`dm`) that share one real pass per iteration: one result per ``variants`` entry.

    The variants differ only in their real-mean estimator, in the pixels of some classes of the
    training set (:class:`DMVariant` ``x``: e.g. several poisoned versions of one class, with the clean
    classes shared), or in the seed of their initial images; everything else is :func:`dm`'s
    (``kwargs``: the same arguments and defaults). Each iteration draws **one** network, one real batch
    (the same indices for every variant) and one DSA transform per class, embeds the real images once
    (the rows of the classes a variant changed are embedded once more, in the same forward pass), and
    updates every synthetic set against its own estimate.

    Common random numbers: all variants share these random draws. Result k equals
    ``dm(x_k, y, ipc, estimator=e_k, init_seed=s_k, estimator_seed=es, stats=...)`` run alone, up to
    float rounding (``tests/test_condense_fast.py``), where ``es`` is ``estimator_seed`` (default
    ``seed``: every randomised estimator draws from its own generator, so the shared draws do not
    depend on the estimators) and ``stats`` are the run's (those of the call's ``x`` unless given).
    Sharing the draws is also a variance reduction: the difference between two variants is measured
    under the same networks, batches and augmentations, so the noise those draws put into each
    variant's result is largely common to both and cancels in their difference
    (``Var(A - B) = Var A + Var B - 2 Cov(A, B)`` with a positive covariance), which independent runs
    would not give. The cost is one forward pass over the real batch (plus the changed classes of each
    variant) and one over all K synthetic sets per iteration, instead of K of each.

    Exact for per-sample networks (the ConvNet's instance norm: features of a sample do not depend on
    the others in the batch); a variant with its own ``x`` needs one (no batch norm). One checkpoint holds
    all variants; its key holds every variant's estimator key, data fingerprint and init seed.
    ``callback(iteration, images_list, losses_list)``; ``on_estimate(variant, iteration, idx, features,
    estimate, dropped)`` as in :func:`dm` with the variant's index first (variants that changed no class get
    the same ``features`` tensor: read it, do not write to it).
    """
    where = "condense.dm_multi"
    if isinstance(variants, (DMVariant, dict)) or not len(variants):
        raise checks.BadInput(f"{where}: variants must be a non-empty list of DMVariant (or dicts of its fields)")
    out = []
    for i, v in enumerate(variants):
        if isinstance(v, dict):
            unknown = set(v) - {"estimator", "x", "init_seed"}
            if unknown:
                raise checks.BadInput(f"{where}: variant {i} has unknown fields {sorted(unknown)} "
                                      f"(known: estimator, x, init_seed)")
            v = DMVariant(**v)
        if not isinstance(v, DMVariant):
            raise checks.BadInput(f"{where}: variant {i} must be a DMVariant or a dict, got {type(v).__name__}")
        out.append(DMVariant(v.estimator if v.estimator is not None else estimator, v.x, v.init_seed))
    unknown = set(kwargs) - set(_RUN_DEFAULTS)
    if unknown:
        raise TypeError(f"{where}: unexpected arguments {sorted(unknown)}")
    opts = {**_RUN_DEFAULTS, **kwargs, "callback": callback, "on_estimate": on_estimate}
    opts["estimator_seed"] = opts["seed"] if estimator_seed is None else estimator_seed
    return _run(x, y, ipc, out, where, "dm_multi", opts)


_RUN_DEFAULTS = dict(iterations=20_000, lr=1.0, momentum=0.5, batch_real=256, init="real", strategy=aug.STRATEGY,
                     net=None, width=128, depth=3, num_classes=None, stats=None, seed=0, checkpoint=None,
                     checkpoint_every=100, progress=False, channels_last=True, compile=False, chunk="auto")


def _run(x, y, ipc, variants: list[DMVariant], where: str, method: str, o: dict) -> list[Condensed]:
    """The DM loop for one or several synthetic sets sharing every random draw (see :func:`dm_multi`)."""
    x = checks.images(x, "x", domain=None, where=where)  # float64 -> float32, the networks' dtype
    classes, sampler, mean, std, batch_real, ipc = _setup(x, y, ipc, o["init"], o["num_classes"],
                                                          o["batch_real"], o["stats"], where)
    iterations = checks.integer(o["iterations"], "iterations", where=where)
    lr = checks.number(o["lr"], "lr", low=0.0, low_open=True, where=where)
    momentum = checks.fraction(o["momentum"], "momentum", where=where)
    strategy, init, seed, cl = o["strategy"], o["init"], o["seed"], bool(o["channels_last"])
    aug.parse_strategy(strategy or "none")
    device = x.device
    chunk = _chunk(o["chunk"], device, where)
    factory = o["net"] or _default_factory(tuple(x.shape[1:]), classes, o["width"], o["depth"])
    xs_all, own = _variant_sets(x, sampler, variants, where)  # own: per variant, the classes it changed
    for v in variants:
        if callable(getattr(v.estimator, "check_n", None)):
            v.estimator.check_n(batch_real)  # e.g. floor(3 eps n) >= n: fail before the loop, not inside it
    est_seed = o["estimator_seed"]
    if est_seed is not None:
        est_seed = checks.integer(est_seed, "estimator_seed", low=None, where=where)
    config = dict(method="dm", ipc=ipc, iterations=iterations, lr=lr, momentum=momentum,
                  batch_real=batch_real, init=init, strategy=strategy or "none",
                  width=o["width"] if o["net"] is None else "custom",
                  depth=o["depth"] if o["net"] is None else "custom",
                  classes=classes, seed=seed, data=_fingerprint(x, y))
    keys = [dict(estimator=callable_key(v.estimator), init_seed=v.init_seed,
                 data=None if v.x is None else _fingerprint(xv, y)) for v, xv in zip(variants, xs_all)]
    if method == "dm":
        config["estimator"] = keys[0]["estimator"]
        config.update({k: val for k, val in (("init_seed", variants[0].init_seed), ("estimator_seed", est_seed))
                       if val is not None})
    else:
        config.update(method=method, variants=keys, estimator_seed=est_seed)
    ckpt = _make_checkpoint(o["checkpoint"], config, o["checkpoint_every"])

    gen = torch.Generator().manual_seed(seed)
    syns = _init_sets(x, xs_all, mean, std, sampler, ipc, classes, init, gen, variants, cl)
    if est_seed is not None:
        est_gens = [torch.Generator().manual_seed(est_seed) for _ in variants]
    else:
        est_gens = [gen for _ in variants]  # dm's default: the estimator draws from the run's generator
    opts = [torch.optim.SGD([s], lr=lr, momentum=momentum) for s in syns]
    histories, seconds, start = [[] for _ in variants], 0.0, 0
    if ckpt is not None and (state := ckpt.load()) is not None:
        with torch.no_grad():
            for s, saved in zip(syns, state["images"]):
                s.copy_(saved.to(device))
        for opt, saved in zip(opts, state["optimizer"]):
            opt.load_state_dict(saved)
        gen.set_state(state["generator"])
        for g, saved in zip(est_gens, state["estimator_generators"]):
            if g is not gen:
                g.set_state(saved)
        histories, seconds, start = state["loss"], state["seconds"], state["iteration"]

    y_real = torch.arange(classes, device=device).repeat_interleave(batch_real)
    y_syn = torch.arange(classes, device=device).repeat_interleave(ipc)
    embed, compile_seconds, checked = _compiled(_embed, bool(o["compile"])), 0.0, False
    for it in _progress(range(start, iterations), o["progress"], iterations, "DM"):
        t0 = time.perf_counter()
        network = _fresh_net(factory, _seed_from(gen), device)
        if not checked:
            if not hasattr(network, "embed"):
                raise ValueError("DM needs a network with an embed() method (features to match)")
            if any(own) and not _per_sample(network):
                raise ValueError(f"{where}: variants with their own x share the clean classes' real pass, "
                                 f"which is exact only for a per-sample network (no batch norm)")
            chunk = chunk if _per_sample(network) else None  # batch norm: a piece's statistics would differ
            checked = True
        network = _net_layout(network.train().requires_grad_(False), cl)
        idx = sampler.indices(batch_real, gen)
        d = aug.draw(strategy, classes, generator=gen, device=device, per_group_op=True) if strategy else None
        fr = _real_features(embed, network, xs_all, own, idx, classes, batch_real, y_real, mean, std, d, cl, chunk)
        xs = torch.cat(syns)
        if d is not None:
            xs = aug.apply(xs, d, y_syn.repeat(len(syns)))
        fs = _embed_pieces(embed, network, _layout(xs, cl), chunk).view(len(syns), classes, ipc, -1)
        losses = []
        for k, v in enumerate(variants):
            target, dropped = estimate_real(v.estimator, fr[k], est_gens[k])
            if o["on_estimate"] is not None:
                o["on_estimate"](k, it, idx.view(classes, batch_real), fr[k], target, dropped)
            losses.append(_match(target, fs[k]))
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        torch.stack(losses).sum().backward()  # set k's gradient is that of its own loss: the sets do not mix
        for opt in opts:
            opt.step()
        for h, loss in zip(histories, losses):
            h.append(_finite(loss, it, "DM"))
        if it == start and o["compile"]:
            compile_seconds = time.perf_counter() - t0  # both graphs compile in the first iteration
        seconds += time.perf_counter() - t0
        if ckpt is not None and ckpt.due(it, iterations - 1):
            ckpt.save({"images": [s.detach().cpu() for s in syns], "optimizer": [p.state_dict() for p in opts],
                       "generator": gen.get_state(), "estimator_generators": [g.get_state() for g in est_gens],
                       "loss": histories, "seconds": seconds, "iteration": it + 1})
        if o["callback"] is not None:
            o["callback"](it, [s.detach() for s in syns], [h[-1] for h in histories])
    return [_finish(s, y_syn, "dm", ipc, h, seconds, mean, std, {**config, "variant": k}
                    if method != "dm" else config, compile_seconds)
            for k, (s, h) in enumerate(zip(syns, histories))]


def _variant_sets(x, sampler, variants, where) -> tuple[list[torch.Tensor], list[list[int]]]:
    """Each variant's training images (checked once) and the classes whose images differ from ``x``."""
    sets, out = [], []
    for i, v in enumerate(variants):
        if v.x is None:
            sets.append(x)
            out.append([])
            continue
        xv = checks.images(v.x, f"variant {i} x", domain=None, where=where)
        if xv.shape != x.shape:
            raise ValueError(f"{where}: variant {i}'s x has shape {tuple(xv.shape)}, the call's x "
                             f"{tuple(x.shape)}; a variant changes pixels, not the set (same labels)")
        xv = xv.to(x.device)
        sets.append(xv)
        out.append([c for c, rows in enumerate(sampler.by_class)
                    if not torch.equal(xv[rows.to(x.device)], x[rows.to(x.device)])])
    return sets, out


def _init_sets(x, xs_all, mean, std, sampler, ipc, classes, init, gen, variants, cl):
    """Each variant's initial synthetic images (standardised, requiring grad), as :func:`dm` draws them: from
    ``gen`` (the same draw for every variant without ``init_seed``), or from a generator of its
    ``init_seed`` after the run's own draw (made and discarded, so the later draws do not depend on it)."""
    device, shape = x.device, tuple(x.shape[1:])

    def real_std(data):
        return lambda idx: (data[idx.to(device)] - mean) / std

    before = gen.get_state()
    base = _init_images(real_std(x), sampler, ipc, classes, init, gen, shape, device)  # the run's draw
    syns = []
    for v, xv in zip(variants, xs_all):
        if v.init_seed is None and v.x is None:
            s = base
        else:  # the run's draw on the variant's images, or a draw from the variant's own seed
            g = torch.Generator()
            g.set_state(before) if v.init_seed is None else g.manual_seed(v.init_seed)
            s = _init_images(real_std(xv), sampler, ipc, classes, init, g,
                             shape, device)
        syns.append(_layout(s.detach().clone(), cl).requires_grad_(True))
    return syns


def _real_features(embed, network, xs_all, own, idx, classes, n, y_real, mean, std, d, cl,
                   chunk) -> list[torch.Tensor]:
    """Each variant's real features (C, n, d), detached. One forward pass without autograd over the real
    batch and, per variant, the rows of the classes it changed (the same indices, its own pixels)."""
    x, device = xs_all[0], xs_all[0].device
    idx = idx.to(device)
    by_class = idx.view(classes, n)
    images, labels = [x[idx]], [y_real]
    for xv, cs in zip(xs_all, own):
        for c in cs:
            images.append(xv[by_class[c]])
            labels.append(y_real[c * n:(c + 1) * n])
    xr = (torch.cat(images) - mean) / std
    with torch.inference_mode():
        if d is not None:
            xr = aug.apply(xr, d, torch.cat(labels))
        f = _embed_pieces(embed, network, _layout(xr, cl), chunk).flatten(1)
    f = f.clone()  # a normal tensor (not an inference tensor) for the estimators and callbacks
    base = f[:classes * n].view(classes, n, -1)
    out, row = [], classes * n
    for cs in own:
        fk = base.clone() if cs else base  # variants that changed no class share the clean features (read only)
        for c in cs:
            fk[c] = f[row:row + n]
            row += n
        out.append(fk)
    return out
